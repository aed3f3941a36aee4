"""Upstreams: every feature source behind one interface, waveforms in, a list of hidden states out (as in
s3prl). Each kind is one module of this package with a `build(name, spec, params)` function; params name each
upstream with its kind and options:

    upstreams:
      small:  {kind: ssl, source: models/pretrain/small/model.pt}
      fbank:  {kind: fbank, source: labelbudget/logmel.py}

Adding a kind = one module here + one params entry; `load` finds the module by the kind's name.
"""

from labelbudget.upstreams.base import Upstream, UpstreamError, available_kinds, load

__all__ = ["Upstream", "UpstreamError", "available_kinds", "load"]
