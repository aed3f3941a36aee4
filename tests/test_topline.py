"""The calibration topline (`phones` objective) and the recipe options beside the SSL objectives: targets that
line up with the alignments, a one-line refusal without alignments, each option doing what it says and nothing
at its off value, and a resume fingerprint that covers every key but the named safe ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from defaults import plain_pretrain, section

from labelbudget import phones
from labelbudget.encoder import EncoderConfig
from labelbudget.errors import ParamsError
from labelbudget.logmel import LogMel
from labelbudget.objectives.phones import MissingAlignmentsError, PhoneTargets
from labelbudget.objectives.phones import targets as phone_targets
from labelbudget.pretraining import RESUME_SAFE, fingerprint, pretrain, run_spec
from labelbudget.profiles import compose_plain
from labelbudget.schema import Pretrain, parse_params
from labelbudget.ssl import make_ssl_module, pad_labels

REPO = Path(__file__).resolve().parent.parent
P = plain_pretrain(lr=1e-3, weight_decay=0.01, warmup_steps=1, max_steps=10, mask_prob=0.15, mask_span=4,
                   codebook_size=32, codebook_dim=8)
CFG = EncoderConfig(layers=2, dim=32, heads=2, ff_mult=2, conv_channels=32, n_mels=40, dropout=0.1,
                    pos_kernel=15)


def calibration_params() -> dict:
    p = compose_plain(REPO, "calibration")
    p["wandb"]["mode"] = "disabled"
    return p


def test_phone_targets_line_up_with_the_alignments(synth_corpus):
    rows = synth_corpus.read(synth_corpus.unlabeled)
    targets = phone_targets(rows, synth_corpus, P, None, 0)
    aligned = phones.read_part(synth_corpus.dir, synth_corpus.unlabeled)
    checked = 0
    for r in rows[:5]:
        samples = round(r["duration"] * 16000)
        y = targets.labels(r["id"], samples)
        assert len(y) == (LogMel.frames(samples) - 1) // 4 + 1  # one per encoder frame (25 Hz)
        for i in range(0, len(y), 7):  # frame i is centred on sample 640 i
            at = i * 640
            covering = [s for s in aligned[r["id"]] if s[1] <= at < s[2]]
            expected = phones.phone_class(covering[0][0]) if covering else phones.SIL
            assert targets.classes[int(y[i])] == expected
            checked += 1
    assert checked > 20 and phones.SIL in targets.classes and targets.num_targets > 20


def test_a_corpus_without_alignments_refuses_the_topline_in_one_line(speech_corpus):
    with pytest.raises(MissingAlignmentsError) as e:
        phone_targets(speech_corpus.read(speech_corpus.unlabeled), speech_corpus, P, None, 0)
    assert "\n" not in str(e.value) and "toplines" in str(e.value)
    p = calibration_params()
    p["corpus"].update({"source": "librispeech", "ingest": {**p["corpus"]["ingest"], "path": "/data/ls",
                                                             "tests": {"clean": "test-clean"}}})
    with pytest.raises(ParamsError, match=r"toplines\.topline .*needs phone alignments") as e:
        parse_params(p)
    assert "\n" not in str(e.value)


def test_the_topline_is_its_size_trained_with_the_default_recipe_on_phones():
    p = parse_params(calibration_params())
    size, recipe = run_spec("topline", p)
    assert size == "large" and recipe == p.pretrain.model_copy(update={"objective": "phones", "unmasked_weight": 1.0})
    assert run_spec("small", p) == ("small", p.pretrain)


def test_masked_phone_prediction_learns_and_ignores_frames_without_a_target():
    torch.manual_seed(0)
    q = PhoneTargets(["a", "b", "sil"], {"u": [["a", 0, 8000], ["'b", 8000, 16000]]})
    module = make_ssl_module(CFG, P, seed=0, quantizer=q)
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    labels = pad_labels([q.labels("u", 16000), q.labels("u", 12000)])
    loss, stats = module.ssl_loss(wav, lengths, 0, 0, labels)
    unknown = labels.clone()
    unknown[1] = -1  # the second utterance has no target: only the first one's masked frames count
    loss_one, _ = module.ssl_loss(wav, lengths, 0, 0, unknown)
    assert torch.isfinite(loss) and not torch.isclose(loss, loss_one)
    opt = torch.optim.Adam(module.parameters(), 3e-3)
    for _ in range(30):
        opt.zero_grad()
        module.ssl_loss(wav, lengths, 0, 0, labels)[0].backward()
        opt.step()
    assert module.ssl_loss(wav, lengths, 0, 0, labels)[0] < loss


def test_input_corruption_degrades_the_input_only_and_changes_nothing_at_zero():
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    plain = make_ssl_module(CFG, P, seed=0)
    off = make_ssl_module(CFG, P.model_copy(update={"input_corruption": 0.0}), seed=0)
    on = make_ssl_module(CFG, P.model_copy(update={"input_corruption": 1.0}), seed=0)
    off.load_state_dict(plain.state_dict())
    on.load_state_dict(plain.state_dict())
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, args, _out) -> None:  # a hook that returned a value would replace the output
            seen.setdefault(name, args[0])
        return hook

    for name, m in (("plain", plain), ("off", off), ("on", on)):
        m.quantizer.register_forward_hook(keep(name))
        m.encoder.subsample.register_forward_hook(keep(f"{name}-in"))
    base, _ = plain.ssl_loss(wav, lengths, step=0)
    assert torch.equal(off.ssl_loss(wav, lengths, step=0)[0], base)
    corrupted, _ = on.ssl_loss(wav, lengths, step=0)
    assert torch.equal(seen["on"], seen["plain"])  # targets from the audio as stored
    assert not torch.allclose(seen["on-in"], seen["plain-in"])  # the encoder saw degraded audio
    assert not torch.isclose(corrupted, base)
    again = make_ssl_module(CFG, P.model_copy(update={"input_corruption": 1.0}), seed=0)
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again.ssl_loss(wav, lengths, step=0)[0], corrupted)  # the same (seed, step): the same


def test_the_unmasked_weight_adds_the_visible_frames_loss_and_nothing_at_zero():
    torch.manual_seed(0)
    q = PhoneTargets(["a", "b", "sil"], {"u": [["a", 0, 8000], ["'b", 8000, 16000]]})
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    labels = pad_labels([q.labels("u", 16000), q.labels("u", 12000)])
    plain = make_ssl_module(CFG, P, seed=0, quantizer=q)
    zero = make_ssl_module(CFG, P.model_copy(update={"unmasked_weight": 0.0}), seed=0, quantizer=q)
    one = make_ssl_module(CFG, P.model_copy(update={"unmasked_weight": 1.0}), seed=0, quantizer=q)
    two = make_ssl_module(CFG, P.model_copy(update={"unmasked_weight": 2.0}), seed=0, quantizer=q)
    for m in (zero, one, two):
        m.load_state_dict(plain.state_dict())
    base = plain.ssl_loss(wav, lengths, 0, 0, labels)[0]
    assert torch.equal(zero.ssl_loss(wav, lengths, 0, 0, labels)[0], base)
    visible = one.ssl_loss(wav, lengths, 0, 0, labels)[0] - base  # the visible frames' cross-entropy
    assert visible > 0
    assert torch.allclose(two.ssl_loss(wav, lengths, 0, 0, labels)[0], base + 2 * visible, atol=1e-5)


def test_every_channel_of_the_corruption_keeps_each_utterance_s_length_and_padding():
    from labelbudget.ssl import corrupt

    wav = torch.zeros(3, 50564)
    wav[:, :50563] = torch.randn(3, 50563) * 0.1
    lengths = torch.tensor([50563, 30001, 12345])
    wav[1, 30001:] = 0
    wav[2, 12345:] = 0
    for seed in range(6):  # every channel is drawn at least once over these seeds
        out = corrupt(wav, lengths, 1.0, np.random.default_rng(seed))
        assert out.shape == wav.shape and not torch.equal(out, wav)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(out[b, n:] == 0)


def test_the_contrastive_term_adds_its_weighted_infonce_and_nothing_at_zero():
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    plain = make_ssl_module(CFG, P, seed=0)
    off = make_ssl_module(CFG, P.model_copy(update={"infonce_weight": 0.0}), seed=0)
    assert off.contrast is None and sum(p.numel() for p in off.parameters()) == sum(
        p.numel() for p in plain.parameters())
    on = make_ssl_module(CFG, P.model_copy(update={"infonce_weight": 0.5}), seed=0)
    on.load_state_dict(plain.state_dict(), strict=False)  # the same encoder and head, a contrastive map besides
    base, _ = plain.ssl_loss(wav, lengths, step=0)
    total, stats = on.ssl_loss(wav, lengths, step=0)
    assert stats["train/infonce"] > 0
    assert torch.allclose(total, base + 0.5 * stats["train/infonce"], atol=1e-5)
    total.backward()  # the front end learns from it too (its embedding of the clean input is the target)
    assert on.encoder.subsample.conv[0].weight.grad.abs().sum() > 0


def test_a_prediction_head_apart_from_the_encoder_adds_layers_only_when_asked():
    linear = make_ssl_module(CFG, P, seed=0)
    assert len(linear.head.layers) == 0 and isinstance(linear.head.out, torch.nn.Linear)
    deep = make_ssl_module(CFG, P.model_copy(update={"head_layers": 2}), seed=0)
    assert len(deep.head.layers) == 2
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in linear.parameters())
    assert extra == sum(p.numel() for p in deep.head.layers.parameters()) > 0
    deep.load_state_dict(linear.state_dict(), strict=False)  # the same encoder and output map
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    assert not torch.isclose(deep.ssl_loss(wav, lengths, step=0)[0], linear.ssl_loss(wav, lengths, step=0)[0])
    deep.ssl_loss(wav, lengths, step=0)[0].backward()
    assert deep.head.layers[0].linear1.weight.grad.abs().sum() > 0


def test_the_resume_fingerprint_covers_every_key_except_the_named_safe_ones(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{}\n")

    class WithANewKey(Pretrain):  # a key added to the schema later, which nobody lists anywhere
        a_key_nobody_listed: int = 0

    p = WithANewKey(**section("pretrain", "default").model_dump())
    base = fingerprint(CFG, p, 0, manifest)
    safe = {"max_minutes": 99, "checkpoint_every": 7, "devices": 2, "num_nodes": 2, "strategy": "ddp",
            "precision": "bf16-mixed", "num_threads": 3}
    assert set(safe) == set(RESUME_SAFE)
    for key, value in safe.items():
        assert fingerprint(CFG, p.model_copy(update={key: value}), 0, manifest) == base, key
    changed = {"lr": 0.1, "input_corruption": 0.5, "head_layers": 3, "objective": "bestrq", "a_key_nobody_listed": 1}
    for key, value in changed.items():
        assert fingerprint(CFG, p.model_copy(update={key: value}), 0, manifest) != base, key


def test_the_topline_pretrains_and_exports_like_an_ssl_size(synth_corpus, tmp_path):
    p = compose_plain(REPO, "smoke")
    p["wandb"]["mode"] = "disabled"
    p["toplines"] = {"topline": {"size": "small", "objective": "phones"}}
    p["pretrain"].update({"max_steps": 4, "checkpoint_every": 2, "warmup_steps": 1, "batch_seconds": 6})
    summary = pretrain("topline", parse_params(p), tmp_path / "topline", synth_corpus.dir)
    assert summary["upstream"] == "topline" and summary["objective"] == "phones" and summary["steps"] == 4
    blob = torch.load(tmp_path / "topline" / "model.pt", weights_only=True)
    assert blob["objective"] == "phones" and blob["size"] == "topline"
    assert np.isfinite(summary["train/loss"]) and 0 <= summary["train/masked_acc"] <= 1


def test_the_synthesized_corpus_keeps_a_clean_rendering_of_each_degraded_unlabeled_utterance(synth_corpus):
    from labelbudget import audio

    rows = synth_corpus.read(synth_corpus.unlabeled)
    degraded = [r for r in rows if r["domain"] != "unlabeled-clean"]
    assert degraded and len(degraded) < len(rows)
    for r in rows:
        assert (synth_corpus.clean_path(r) is None) == (r["domain"] == "unlabeled-clean")
    for r in degraded[:4]:
        clean, _ = audio.load(str(synth_corpus.clean_path(r)), mono=True)
        heard, _ = audio.load(str(synth_corpus.audio_path(r)), mono=True)
        assert abs(len(clean) - len(heard)) <= 1 and not np.allclose(clean[: len(heard)], heard[: len(clean)])
    for part in (synth_corpus.labeled, *map(synth_corpus.test_part, synth_corpus.tests)):
        assert all(synth_corpus.clean_path(r) is None for r in synth_corpus.read(part))


def test_clean_targets_come_from_the_clean_audio_while_the_encoder_hears_the_degraded_one():
    torch.manual_seed(0)
    clean, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    clean[1, 12000:] = 0
    heard = clean + 0.05 * torch.randn_like(clean)
    heard[1, 12000:] = 0
    module = make_ssl_module(CFG, P.model_copy(update={"clean_targets": True}), seed=0)
    seen: dict[str, list[torch.Tensor]] = {"targets": [], "input": []}
    module.quantizer.register_forward_hook(lambda _m, args, _o: seen["targets"].append(args[0]))
    module.encoder.subsample.register_forward_hook(lambda _m, args, _o: seen["input"].append(args[0]))
    same = module.ssl_loss(clean, lengths, step=0)[0]
    assert torch.equal(module.ssl_loss(clean, lengths, step=0, clean=clean)[0], same)  # a clean utterance: itself
    denoise = module.ssl_loss(heard, lengths, step=0, clean=clean)[0]
    noisy = module.ssl_loss(heard, lengths, step=0)[0]
    # targets of the clean audio, input of the degraded one
    assert torch.equal(seen["targets"][2], seen["targets"][0]) and torch.equal(seen["input"][2], seen["input"][3])
    assert not torch.equal(seen["targets"][2], seen["targets"][3]) and not torch.isclose(denoise, noisy)


def test_pretraining_batches_carry_clean_renderings_where_the_corpus_has_them(synth_corpus, speech_corpus):
    from labelbudget.pretraining import PretrainWaves, collate_pretrain

    rows = synth_corpus.read(synth_corpus.unlabeled)[:6]
    ds = PretrainWaves(rows, synth_corpus, torch.nn.Identity(), clean=True)
    wav, lengths, extra = collate_pretrain([ds[i] for i in range(len(rows))])
    assert set(extra) == {"clean"} and extra["clean"].shape == wav.shape
    for i, r in enumerate(rows):
        same = torch.equal(extra["clean"][i], wav[i])
        assert same == (synth_corpus.clean_path(r) is None)
    assert collate_pretrain([PretrainWaves(rows, synth_corpus, torch.nn.Identity())[0]])[2] == {}
    # an ingested corpus has none: every utterance is its own target, as with clean_targets off
    other = speech_corpus.read(speech_corpus.unlabeled)[:3]
    ds = PretrainWaves(other, speech_corpus, torch.nn.Identity(), clean=True)
    wav, _, extra = collate_pretrain([ds[i] for i in range(len(other))])
    assert torch.equal(extra["clean"], wav)
