"""Extension points as the README states them: an objective and a decoder are one module each plus conf. A test
writes each as its one file into the package, names it in params, and runs it through the pipeline's code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from defaults import plain_pretrain, section

from labelbudget.decoding import make_decoder
from labelbudget.encoder import EncoderConfig
from labelbudget.ssl import make_ssl_module, make_targets

PACKAGE = Path(__file__).resolve().parent.parent / "labelbudget"

OBJECTIVE = '''
import torch
from torch import nn


class Loudness(nn.Module):
    """Two classes: is the stacked log-mel frame above its mean."""

    num_targets = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(-1) > 0).long()


def targets(rows, corpus, p, cfg, seed):
    return Loudness()
'''

DECODER = '''
class Constant:
    def __init__(self, text: str):
        self.text = text

    def decode(self, log_probs, lengths):
        return [self.text] * len(lengths)


def build(text: str = "") -> Constant:
    return Constant(text)
'''


@pytest.fixture
def plugged() -> Iterator[None]:
    files = {PACKAGE / "objectives" / "zz_loudness.py": OBJECTIVE, PACKAGE / "decoders" / "zz_constant.py": DECODER}
    for path, text in files.items():
        path.write_text(text)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for path in files:
            path.unlink()
        for name in ("labelbudget.objectives.zz_loudness", "labelbudget.decoders.zz_constant"):
            sys.modules.pop(name, None)


def test_an_objective_is_one_module_named_in_params_and_trains(plugged):
    p = plain_pretrain(objective="zz_loudness", lr=1e-3, warmup_steps=1, max_steps=10)
    cfg = EncoderConfig(layers=2, dim=32, heads=2, ff_mult=2, conv_channels=32, n_mels=40, dropout=0.0,
                        pos_kernel=15)
    module = make_ssl_module(cfg, p, seed=0, quantizer=make_targets(p.objective, [], None, p, cfg, 0))
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    loss, stats = module.ssl_loss(wav, torch.tensor([16000, 12000]), step=0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert module.head.out.out_features == 2  # the classifier is sized by the objective's targets


def test_a_decoder_is_one_module_named_in_params_with_its_options(plugged):
    spec = section("evaluate", decoder={"name": "zz_constant", "text": "hello"}).decoder
    decoder = make_decoder(spec)
    assert decoder.decode(torch.zeros(3, 5, 29), torch.tensor([5, 4, 3])) == ["hello"] * 3


def test_a_name_without_a_module_is_refused_before_anything_runs():
    from labelbudget.errors import ParamsError

    with pytest.raises(ParamsError, match=r"pretrain.objective = 'zz_loudness': not a module of labelbudget/"):
        plain_pretrain(objective="zz_loudness")
    with pytest.raises(ParamsError, match=r"evaluate.decoder: name 'zz_constant' is not a module"):
        section("evaluate", decoder={"name": "zz_constant"})
