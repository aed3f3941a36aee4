"""Every upstream kind behind one interface: waveforms in, hidden states out, loaded from a params entry."""

from __future__ import annotations

import pytest
import torch
from defaults import raw

from labelbudget import upstreams
from labelbudget.errors import ParamsError
from labelbudget.extraction import featurize, resolve_layers
from labelbudget.schema import Params, parse_params

N_MELS = 40
SHAPE = "models/shape/{}.json"


@pytest.fixture(autouse=True)
def shapes(tmp_path, monkeypatch):
    """The shape files of the `tiny` size, where the shape stage writes them (relative to the project)."""
    from labelbudget.encoder import write_shape

    monkeypatch.chdir(tmp_path)
    write_shape(params(f={"kind": "fbank"}), "tiny", tmp_path / SHAPE.format("tiny"))


def params(**entries) -> Params:
    """The smoke params with only these upstreams (a `source` added where an entry has none: a `random` one's
    is the shape file of its size, written here as the shape stage would)."""
    entries = {n: {"source": SHAPE.format(e.get("size")) if e.get("kind") == "random" else "-", **e}
               if isinstance(e, dict) else e for n, e in entries.items()}
    tiny = {"layers": 2, "dim": 32, "heads": 2, "ff_mult": 2, "conv_channels": 32, "dropout": 0.1, "pos_kernel": 15}
    return parse_params(raw(replace={"upstreams": entries, "ssl_sizes": []}, seed=0, features={"n_mels": N_MELS},
                            models={"tiny": tiny}, report=dict.fromkeys(("smaller", "larger", "baseline", "control"))))


def waves() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([16000, 9000])
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    wav[1, 9000:] = 0
    return wav, lengths


def test_every_kind_of_this_package_is_listed():
    assert {"fbank", "random", "ssl", "hf"} <= set(upstreams.available_kinds())


def test_unknown_kind_and_unknown_name_are_named_with_what_exists():
    with pytest.raises(ParamsError, match=r"upstreams.x: kind 'wav2vec9' is not a module .*\(fbank, hf, random"):
        params(x={"kind": "wav2vec9"})
    with pytest.raises(upstreams.UpstreamError, match=r"unknown upstream 'nope'.*has x"):
        upstreams.load("nope", params(x={"kind": "fbank"}))
    with pytest.raises(ParamsError, match=r"upstreams.x = 'fbank': input should be a valid dictionary"):
        params(x="fbank")


@pytest.mark.parametrize("kind,layers,rate", [("fbank", 0, 100.0), ("random", 2, 25.0)])
def test_hidden_states_have_the_declared_count_width_and_frame_rate(kind, layers, rate):
    up = upstreams.load("u", params(u={"kind": kind, **({"size": "tiny"} if kind == "random" else {})}))
    assert (up.num_layers, up.frame_rate) == (layers, rate)
    wav, lengths = waves()
    hidden, frames = up.hidden_states(wav, lengths)
    assert len(hidden) == layers + 1
    assert all(h.shape == (2, int(frames[0]), up.dim) for h in hidden)
    assert abs(int(frames[0]) - rate) <= 1  # one second of audio


def test_random_upstream_is_reproducible_from_the_seed():
    a = upstreams.load("u", params(u={"kind": "random", "size": "tiny"}))
    b = upstreams.load("u", params(u={"kind": "random", "size": "tiny"}))
    wav, lengths = waves()
    assert torch.equal(a.hidden_states(wav, lengths)[0][-1], b.hidden_states(wav, lengths)[0][-1])


def test_random_upstream_names_a_missing_or_foreign_shape_file(tmp_path):
    from labelbudget.io import write_json

    with pytest.raises(upstreams.UpstreamError, match=r"no shape file; the stage shape@tiny writes"):
        upstreams.load("u", params(u={"kind": "random", "size": "tiny", "source": "nowhere.json"}))
    write_json(tmp_path / "other.json", {"size": "small", "layers": 1})
    with pytest.raises(upstreams.UpstreamError, match=r"is the shape of size 'small', not of its size 'tiny'"):
        upstreams.load("u", params(u={"kind": "random", "size": "tiny", "source": "other.json"}))


def test_random_upstream_needs_a_known_size():
    with pytest.raises(ParamsError, match=r"upstreams.u.size 'huge' is not a key of `models`"):
        params(u={"kind": "random", "size": "huge"})


def test_hf_kind_loads_a_local_wav2vec2_folder_and_its_layers_are_extracted(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                      conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                      num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")  # tiny, random: nothing downloaded
    up = upstreams.load("w2v", params(w2v={"kind": "hf", "source": str(tmp_path / "w2v")}))
    assert (up.num_layers, up.dim, up.frame_rate) == (2, 32, 800.0)
    assert len(up.fingerprint) == 64  # sha256 of the folder's files
    wav, lengths = waves()
    layers = resolve_layers("all", up)
    feats = featurize(up, wav, lengths, layers, torch.device("cpu"))
    assert [f.shape for f in feats] == [(798, 3, 32), (448, 3, 32)]


def test_hf_kind_names_a_folder_it_cannot_load(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(upstreams.UpstreamError, match=r"upstreams.w2v: cannot load"):
        upstreams.load("w2v", params(w2v={"kind": "hf", "model": str(tmp_path / "missing")}))


def test_sources_a_stage_writes_are_not_missing_and_others_are(tmp_path):
    from labelbudget.upstreams.base import missing_sources

    (tmp_path / "ckpt").mkdir()
    ups = {"small": {"kind": "ssl", "source": "models/pretrain/small/model.pt"},
           "topline": {"kind": "ssl", "source": "models/pretrain/topline/model.pt"},
           "other": {"kind": "ssl", "size": "small", "source": "models/elsewhere/model.pt"},
           "mine": {"kind": "hf", "source": "ckpt"}, "gone": {"kind": "hf", "source": "nope"}}
    p = parse_params(raw(replace={"upstreams": ups, "ssl_sizes": ["small"],
                                  "toplines": {"topline": {"size": "small", "objective": "phones"}}},
                         report={"larger": None, "baseline": None, "control": None}))
    assert missing_sources(tmp_path, p) == ["upstreams.other.source 'models/elsewhere/model.pt'",
                                            "upstreams.gone.source 'nope'"]
