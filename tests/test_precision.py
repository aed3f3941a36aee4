"""bf16 where the hardware runs it natively, fp32 elsewhere; bf16 features agree with fp32 ones and say how
they were computed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from labelbudget import precision
from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.extraction import autocast, featurize, resolve_layers, weights_dtype
from labelbudget.upstreams.ssl import EncoderUpstream

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "setting", "expected"), [(True, "auto", True), (False, "auto", False),
                                                              (False, "bf16", True), (True, "fp32", False)])
def test_auto_means_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, native, setting, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.use_bf16(setting, CPU) is expected


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        precision.use_bf16("fp16", CPU)


def test_bf16_features_agree_with_fp32_ones_within_the_stated_tolerance():
    torch.manual_seed(0)
    up = EncoderUpstream("e", Encoder(EncoderConfig(layers=2, dim=64, heads=2, ff_mult=4, conv_channels=32, n_mels=40,
                                                  dropout=0.1, pos_kernel=15)), "x")
    up_bf16 = copy.deepcopy(up).to(CPU, weights_dtype(CPU, True))
    assert up_bf16.encoder.pos_conv.weight.dtype == torch.bfloat16 and up_bf16.logmel.fbank.dtype == torch.float32
    wav = 0.1 * torch.randn(2, 24000)
    lengths = torch.tensor([24000, 17000])
    layers = resolve_layers("all", up)
    fp32 = featurize(up, wav, lengths, layers, CPU, bf16=False)
    with autocast(CPU, True):
        bf16 = featurize(up_bf16, wav, lengths, layers, CPU, bf16=True)
    for a, b in zip(fp32, bf16, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float16
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        assert np.sqrt(((a64 - b64) ** 2).sum() / (a64**2).sum()) < 0.03  # benchmarks/extraction_throughput.py
