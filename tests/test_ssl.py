"""BEST-RQ pitfalls seen in public reimplementations, and the HuBERT-style k-means targets."""

from __future__ import annotations

import torch
from defaults import plain_pretrain

from labelbudget.encoder import Encoder, EncoderConfig, inference_layer
from labelbudget.logmel import LogMel, normalize
from labelbudget.objectives.bestrq import RandomProjectionQuantizer
from labelbudget.objectives.hubert import KMeansQuantizer, TeacherKMeans
from labelbudget.ssl import make_ssl_module, span_mask

P = plain_pretrain(lr=1e-3, weight_decay=0.01, warmup_steps=1, max_steps=10, mask_prob=0.15, mask_span=4,
                   codebook_size=32, codebook_dim=8)
CFG = EncoderConfig(layers=2, dim=32, heads=2, ff_mult=2, conv_channels=32, n_mels=40, dropout=0.1,
                    pos_kernel=15)


def test_normalize_uses_time_axis_and_excludes_padding():
    torch.manual_seed(0)
    short = torch.randn(1, 30, 40) * 3 + 5
    padded = torch.cat([short, torch.full((1, 20, 40), 100.0)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 50, 40)])
    out = normalize(batch, torch.tensor([30, 50]))
    alone = normalize(short, torch.tensor([30]))
    assert torch.allclose(out[0, :30], alone[0], atol=1e-5)  # padding did not leak into the statistics
    assert torch.all(out[0, 30:] == 0)
    assert torch.allclose(out[0, :30].mean(0), torch.zeros(40), atol=1e-4)  # per channel, over time
    assert torch.allclose(out[0, :30].std(0, unbiased=False), torch.ones(40), atol=1e-3)


def test_projection_and_codebook_unchanged_by_an_optimizer_step():
    import lightning as L

    module = make_ssl_module(CFG, P, seed=0)
    before = {k: v.clone() for k, v in module.quantizer.state_dict().items()}
    assert not any(p is module.quantizer.projection for p in module.parameters())
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    wav = torch.randn(4, 16000)
    data = torch.utils.data.DataLoader([(wav[i], torch.tensor(16000)) for i in range(4)], batch_size=2)
    encoder_before = module.encoder.layers[0].linear1.weight.clone()
    trainer.fit(module, data)
    assert not torch.equal(encoder_before, module.encoder.layers[0].linear1.weight)  # training happened
    for k, v in module.quantizer.state_dict().items():
        assert torch.equal(v, before[k]), k


def _adamw_steps(module, groups, steps: int = 3) -> dict[str, torch.Tensor]:
    """The module's weights after `steps` AdamW updates on the SSL loss, the optimizer built on `groups`."""
    torch.manual_seed(0)
    wav, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    opt = torch.optim.AdamW(groups, lr=P.lr, weight_decay=P.weight_decay, betas=(0.9, 0.98))
    for step in range(steps):
        opt.zero_grad()
        module.ssl_loss(wav, lengths, step=step)[0].backward()
        opt.step()
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_the_front_end_and_the_transformer_layers_learn_at_their_scaled_rates_and_nothing_changes_at_1():
    scaled = make_ssl_module(CFG, P.model_copy(update={"frontend_lr_scale": 2.0, "transformer_lr_scale": 0.5}),
                             seed=0)
    rate = {id(w): g["lr"] for g in scaled.param_groups() for w in g["params"]}
    names = dict(scaled.named_parameters())
    assert {rate[id(w)] for k, w in names.items() if k.startswith(("encoder.subsample", "encoder.pos_conv"))} == {
        2e-3}
    assert {rate[id(w)] for k, w in names.items() if k.startswith(("encoder.layers", "encoder.final_norm"))} == {
        5e-4}
    assert {rate[id(w)] for k, w in names.items() if not k.startswith("encoder.")} == {1e-3}  # heads
    assert len(rate) == len(names)  # every trained weight in exactly one group
    torch.manual_seed(0)
    one = make_ssl_module(CFG, P, seed=0)
    start = one.encoder.subsample.conv[0].weight.detach().clone()
    grouped = _adamw_steps(one, one.param_groups())
    torch.manual_seed(0)
    plain = make_ssl_module(CFG, P, seed=0)
    single = _adamw_steps(plain, [w for w in plain.parameters() if w.requires_grad])
    for k, w in single.items():  # at scale 1 the groups train exactly as one optimizer over every weight
        assert torch.equal(w, grouped[k]), k
    assert not torch.equal(single["encoder.subsample.conv.0.weight"], start)  # training happened


def test_a_never_trained_teacher_gives_its_layers_kmeans_ids_and_stays_frozen_through_training():
    import lightning as L

    torch.manual_seed(0)
    teacher = Encoder(CFG)
    wav = torch.randn(4, 16000)
    feats, flens = LogMel(CFG.n_mels)(wav, torch.full((4,), 16000))
    feats = normalize(feats, flens)
    frames = teacher.eval().final_norm(teacher(feats, flens, max_layer=1)[0][1]).detach()
    q = TeacherKMeans(teacher, 1, KMeansQuantizer.fit(frames.reshape(-1, CFG.dim), 8))
    expected = torch.cdist(frames, q.centroids[None].expand(4, -1, -1)).argmin(-1)
    assert torch.equal(q.from_features(feats, flens), expected)
    assert 1 < expected.unique().numel()

    module = make_ssl_module(CFG, P.model_copy(update={"objective": "hubert"}), seed=0, quantizer=q)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    loss, stats = module.ssl_loss(wav, torch.full((4,), 16000), step=0)
    assert torch.isfinite(loss) and float(stats["train/target_usage"]) > 0
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    data = torch.utils.data.DataLoader([(wav[i], torch.tensor(16000)) for i in range(4)], batch_size=2)
    trainer.fit(module, data)
    assert module.training and not q.teacher.training  # no dropout in the targets
    assert all(torch.equal(v, before[k]) for k, v in q.state_dict().items())
    assert torch.equal(q.from_features(feats, flens), expected)


def test_quantizer_identical_after_checkpoint_round_trip(tmp_path):
    module = make_ssl_module(CFG, P, seed=3)
    torch.save(module.state_dict(), tmp_path / "m.ckpt")
    other = make_ssl_module(CFG, P, seed=4)  # a different seed draws a different codebook...
    assert not torch.equal(other.quantizer.codebook, module.quantizer.codebook)
    other.load_state_dict(torch.load(tmp_path / "m.ckpt", weights_only=True))  # ...until restored
    assert torch.equal(other.quantizer.codebook, module.quantizer.codebook)
    assert torch.equal(other.quantizer.projection, module.quantizer.projection)


def test_codebook_is_unit_norm_and_targets_cover_many_codes():
    q = RandomProjectionQuantizer(160, 64, 16, seed=0)
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(64), atol=1e-5)
    targets = q(torch.randn(1, 2000, 160))
    assert targets.unique().numel() > 32


def test_mask_rate_matches_prob_and_span_and_spares_padding():
    lengths = torch.tensor([4000, 2000])
    mask = span_mask(lengths, prob=0.15, span=4, generator=torch.Generator().manual_seed(0))
    share = mask[0].float().mean().item()
    expected = 1 - (1 - 0.15) ** 4  # a frame is masked if any of the 4 starts covering it fired
    assert abs(share - expected) < 0.03
    assert not mask[1, 2000:].any()


def test_kmeans_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    frames = torch.cat([c + 0.3 * torch.randn(200, 2, generator=g) for c in centers])
    q = KMeansQuantizer(KMeansQuantizer.fit(frames, 3, seed=0))
    labels = q(frames[None])[0]
    for k in range(3):
        assert labels[k * 200 : (k + 1) * 200].unique().numel() == 1
    assert labels.unique().numel() == 3


def test_a_kmeans_cluster_that_loses_all_its_frames_keeps_its_centroid():
    frames = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
    centroids = torch.tensor([[0.0, 0.0], [50.0, 50.0]])
    moved = KMeansQuantizer.update(frames, torch.tensor([0, 0]), centroids)
    assert moved.tolist() == [[2.0, 1.0], [50.0, 50.0]]  # not collapsed toward the origin


def test_encoder_stops_at_the_highest_requested_layer():
    enc = Encoder(CFG).eval()
    calls = []
    for layer in enc.layers:
        layer.linear1.register_forward_hook(lambda *_: calls.append(1))  # eval runs the layer's parts itself
    feats, lens = LogMel(40)(torch.randn(1, 16000), torch.tensor([16000]))
    hidden, _ = enc(normalize(feats, lens), lens, max_layer=1)
    assert len(hidden) == 2 and len(calls) == 1


def test_the_inference_layer_computes_what_the_transformer_layer_does_in_eval():
    torch.manual_seed(0)
    layer = Encoder(CFG).layers[0].eval()
    x = torch.randn(3, 20, CFG.dim)
    lengths = torch.tensor([20, 13, 5])
    keep = torch.arange(20)[None] < lengths[:, None]
    with torch.inference_mode():
        ours = inference_layer(layer, x, keep)
        theirs = layer(x, src_key_padding_mask=~keep)
    for b, n in enumerate(lengths):  # valid frames; padded ones are never read
        assert torch.allclose(ours[b, :n], theirs[b, :n], atol=1e-5)


def test_the_reconstruction_term_adds_the_masked_frames_l1_to_the_loss_and_nothing_at_weight_0():
    wav, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    plain = make_ssl_module(CFG, P, seed=0)
    assert plain.recon is None and not any("recon" in n for n, _ in plain.named_parameters())
    with_recon = make_ssl_module(CFG, P.model_copy(update={"reconstruction_weight": 2.0}), seed=0)
    with_recon.load_state_dict(plain.state_dict(), strict=False)  # same encoder, same discrete head
    base, _ = plain.ssl_loss(wav, lengths, step=0)
    total, stats = with_recon.ssl_loss(wav, lengths, step=0)
    assert stats["train/reconstruction_l1"] > 0
    assert torch.allclose(total, base + 2.0 * stats["train/reconstruction_l1"], atol=1e-5)
