"""Kind `ssl`: an encoder pre-trained by this project's `pretrain` (or `topline`) stage, loaded from its export.

    small: {kind: ssl, source: models/pretrain/small/model.pt}   # size: small (default: the upstream's name,
    topline: {kind: ssl, source: models/pretrain/topline/model.pt}  # or the size of params `toplines.<name>`)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labelbudget.encoder import FORMAT, Encoder, EncoderConfig
from labelbudget.featstore import sha256_file
from labelbudget.logmel import HOP, SAMPLE_RATE, LogMel, normalize
from labelbudget.upstreams.base import Upstream, UpstreamError

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


class CheckpointError(UpstreamError):
    pass


class EncoderUpstream(Upstream):
    """Log-mel -> our Transformer encoder; hidden state 0 is the subsampled front end's output."""

    def __init__(self, name: str, encoder: Encoder, fingerprint: str):
        self.name, self.encoder, self.fingerprint = name, encoder.eval(), fingerprint
        self.logmel = LogMel(encoder.cfg.n_mels)
        self.dim, self.num_layers = encoder.cfg.dim, encoder.cfg.layers
        self.frame_rate = SAMPLE_RATE / HOP / encoder.subsampling

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> EncoderUpstream:
        """The log-mel front end stays fp32 (STFT, log); `dtype` casts the encoder: on a CPU bf16 weights are
        ~1.2x faster than autocast, which re-casts weights and activations at every layer, for the same error."""
        self.logmel.to(device)
        self.encoder.to(device=device, dtype=dtype)
        return self

    def hidden_states(self, wavs: torch.Tensor, lengths: torch.Tensor, max_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, flens = self.logmel(wavs, lengths)
        dtype = self.encoder.pos_conv.weight.dtype
        return self.encoder(normalize(feats, flens).to(dtype), flens, max_layer=max_layer)


def load_checkpoint(path: Path) -> Encoder:
    """Load an exported encoder safely (`weights_only`), with errors that name the file and the mismatch."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint missing; run `dvc repro pretrain@<size>` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail in several ways
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a torch file): {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a labelbudget SSL export (format {FORMAT!r} expected)")
    encoder = Encoder(EncoderConfig(**blob["encoder_config"]))
    try:
        encoder.load_state_dict(blob["encoder"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the encoder: {e}") from None
    return encoder.eval()


def build(name: str, spec: UpstreamSpec, params: Params) -> EncoderUpstream:
    # The checkpoint holds its own shape: params `models` is not read here, so a change of one size re-extracts
    # only what that size's pretraining (a dependency DVC tracks) changed.
    path = Path(spec.source)
    return EncoderUpstream(name, load_checkpoint(path), sha256_file(path))
