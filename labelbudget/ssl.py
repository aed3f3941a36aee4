"""Masked-prediction objectives: BEST-RQ (random-projection quantizer), HuBERT-style k-means targets, and
`phones`, the calibration topline (each frame's true phone: supervised, not SSL).

All predict, with cross-entropy, the discrete target of every masked frame. The quantizer's tensors are
buffers: frozen (never in the optimizer), saved in and restored from the checkpoint. Recipe options beside the
objective: `clean_targets` computes the targets from each degraded utterance's clean rendering while the encoder
hears the degraded audio (WavLM), `input_corruption` degrades the input on the fly while targets come from the
audio as stored or its clean rendering (WavAugment), `head_layers` puts Transformer layers between the encoder
and the target classifier (data2vec 2.0, MAE: the encoder's top layers are not pulled toward the targets),
`reconstruction_weight` adds an L1 term,
`unmasked_weight` a cross-entropy term on the visible frames (HuBERT's 1 - alpha; the topline uses it),
`infonce_weight` a contrastive term (wav2vec 2.0, CPC) with distractors from the same utterance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelbudget import audio, phones
from labelbudget.batching import WaveDataset
from labelbudget.encoder import SUBSAMPLING, Encoder, EncoderConfig, subsampled_lengths
from labelbudget.errors import LabelbudgetError
from labelbudget.logmel import HOP, SAMPLE_RATE, LogMel, length_mask, normalize
from labelbudget.manifest import Corpus

STACK = SUBSAMPLING  # log-mel frames under each encoder frame: the prediction targets' input


def stack_frames(feats: torch.Tensor, out_frames: int) -> torch.Tensor:
    """(B, T, F) -> (B, out_frames, STACK*F): the input frames under each encoder frame."""
    b, t, f = feats.shape
    need = out_frames * STACK
    if t < need:
        feats = F.pad(feats, (0, 0, 0, need - t))
    return feats[:, :need].reshape(b, out_frames, STACK * f)


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ: frozen random projection onto a frozen L2-normalised random codebook; nearest code = target."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        proj = torch.empty(input_dim, codebook_dim)
        nn.init.xavier_uniform_(proj, generator=g)
        self.register_buffer("projection", proj)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, codebook_dim, generator=g), dim=-1))

    @property
    def num_targets(self) -> int:
        return self.codebook.shape[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x.float() @ self.projection, dim=-1)
        return (z @ self.codebook.T).argmax(-1)  # max cosine = min L2 distance between unit vectors


class KMeansQuantizer(nn.Module):
    """HuBERT-style targets: the nearest of k-means centroids fitted on stacked log-mel frames."""

    def __init__(self, centroids: torch.Tensor):
        super().__init__()
        self.register_buffer("centroids", centroids.float())

    @property
    def num_targets(self) -> int:
        return self.centroids.shape[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.float(), self.centroids[None].expand(x.shape[0], -1, -1)).argmin(-1)

    @staticmethod
    def fit(frames: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
        """Plain k-means (k-means++ seeding) on (N, D) frames; returns (k, D) centroids."""
        g = torch.Generator().manual_seed(seed)
        n = frames.shape[0]
        if n < k:
            raise ValueError(f"k-means needs at least {k} frames, got {n}: add unlabeled audio or lower "
                             "kmeans_clusters")
        centroids = frames[torch.randint(n, (1,), generator=g)]
        for _ in range(1, k):
            d = torch.cdist(frames, centroids).min(1).values.square()
            centroids = torch.cat([centroids, frames[torch.multinomial(d + 1e-12, 1, generator=g)]])
        for _ in range(iters):
            centroids = KMeansQuantizer.update(frames, torch.cdist(frames, centroids).argmin(1), centroids)
        return centroids

    @staticmethod
    def update(frames: torch.Tensor, assign: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """One Lloyd step: each centroid moves to the mean of its frames; one that lost all keeps its place."""
        sums = torch.zeros_like(centroids).index_add_(0, assign, frames)
        counts = torch.bincount(assign, minlength=centroids.shape[0]).unsqueeze(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


class TeacherKMeans(KMeansQuantizer):
    """HuBERT's later iterations with a never-trained teacher: k-means ids of one layer of a frozen encoder of the
    same shape, seeded as the `random` upstream. That encoder already probes far above log-mel (its frames see
    hundreds of ms), so its clusters are more phonetic first targets than log-mel k-means."""

    reads_features = True

    def __init__(self, teacher: Encoder, layer: int, centroids: torch.Tensor):
        super().__init__(centroids)
        self.teacher, self.layer = teacher.requires_grad_(False).eval(), layer

    def train(self, mode: bool = True) -> TeacherKMeans:
        super().train(mode)
        self.teacher.eval()  # never dropout: the targets of a frame do not change from one update to the next
        return self

    @torch.no_grad()
    def features(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.teacher(feats, lengths, max_layer=self.layer)
        return self.teacher.final_norm(hidden[self.layer]).float()

    @torch.no_grad()
    def from_features(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(feats, lengths))


class PhoneTargets(nn.Module):
    """The topline's targets: each encoder frame's phone class from the corpus' alignments (labelbudget.phones),
    -1 where an utterance has none. Supervised: a calibration of the measurement, never an SSL result."""

    per_utterance = True  # targets come with each utterance (the batches carry them), not from its log-mel

    def __init__(self, classes: list[str], segments: dict[str, phones.Segments] | None = None):
        super().__init__()
        self.classes, self.segments = list(classes), segments or {}
        self.index = {c: k for k, c in enumerate(self.classes)}

    @property
    def num_targets(self) -> int:
        return len(self.classes)

    def labels(self, uid: str, num_samples: int) -> torch.Tensor:
        """(encoder frames,) class ids of one utterance of `num_samples` 16 kHz samples."""
        n = int(subsampled_lengths(LogMel.frames(num_samples)))
        names = phones.frame_labels(self.segments.get(uid, []), n, SAMPLE_RATE / HOP / SUBSAMPLING)
        return torch.tensor([self.index.get(c, -1) for c in names], dtype=torch.long)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        return F.pad(labels, (0, max(0, t - labels.shape[1])), value=-1)[:, :t]


def pad_labels(items: list[torch.Tensor]) -> torch.Tensor:
    out = torch.full((len(items), max(len(x) for x in items)), -1, dtype=torch.long)
    for i, x in enumerate(items):
        out[i, : len(x)] = x
    return out


def corrupt(wav: torch.Tensor, lengths: torch.Tensor, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """Each utterance, with probability `prob`, through one of the unlabeled pool's channels (noise at 0-20 dB
    SNR, reverberation, telephone band), drawn from `rng`; padding stays zero."""
    out = wav.clone()
    for b, n in enumerate(lengths.tolist()):
        if rng.random() >= prob:
            continue
        x = wav[b, :n].detach().cpu().numpy()
        kind = rng.integers(3)
        if kind == 0:
            x = audio.add_noise(x, float(rng.uniform(0, 20)), rng, str(rng.choice(["white", "pink", "hum"])))
        elif kind == 1:
            x = audio.reverberate(x, float(rng.uniform(0.2, 0.9)), rng)
        else:
            x = audio.telephone(x)
        x = np.pad(x, (0, max(0, n - len(x))))[:n]  # the 8 kHz round trip may move the length by a sample
        out[b, :n] = torch.from_numpy(np.clip(x, -0.99, 0.99)).to(out)
    return out


class PredictionHead(nn.Module):
    """Encoder output -> target logits, through `layers` Transformer layers of its own (0: one linear map)."""

    def __init__(self, dim: int, heads: int, num_targets: int, layers: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim * 2, 0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.out = nn.Linear(dim, num_targets)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return self.out(x)


NEGATIVES, TEMPERATURE = 50, 0.1  # wav2vec 2.0's distractors per masked frame and cosine temperature


def contrastive_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """InfoNCE: at every masked frame, `pred` (B, T, D) must pick `target` of the same frame among NEGATIVES
    frames drawn from the same utterance (with replacement; padding never drawn)."""
    b, t = mask.nonzero(as_tuple=True)
    n = lengths.to(mask.device)[b].float()
    neg = (torch.rand(len(b), NEGATIVES, generator=generator).to(mask.device) * n[:, None]).long()
    candidates = torch.cat([t[:, None], neg], dim=1)  # (N, 1 + NEGATIVES): the true frame first
    keys = target[b[:, None], candidates]
    sims = F.cosine_similarity(pred[b, t][:, None].float(), keys.float(), dim=-1) / TEMPERATURE
    same = candidates[:, 1:] == t[:, None]  # a distractor that is the frame itself is no distractor
    sims[:, 1:] = sims[:, 1:].masked_fill(same, float("-inf"))
    return F.cross_entropy(sims, torch.zeros(len(b), dtype=torch.long, device=sims.device))


def span_mask(lengths: torch.Tensor, prob: float, span: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool: spans of `span` frames starting at a `prob` share of valid frames (overlaps allowed), so
    about `prob * span` of frames before overlap; never on padding."""
    b, t = len(lengths), int(lengths.max())
    starts = (torch.rand(b, t, generator=generator) < prob) & length_mask(lengths.cpu(), t)
    mask = torch.zeros(b, t + span, dtype=torch.bool)
    for s in range(span):
        mask[:, s : s + t] |= starts
    mask = mask[:, :t] & length_mask(lengths.cpu(), t)
    # Every utterance contributes at least one masked frame.
    empty = ~mask.any(1)
    mask[empty, 0] = True
    return mask


class NonFiniteLossError(LabelbudgetError, FloatingPointError):
    """Pretraining diverged: the loss is NaN or infinite. Nothing is exported from such a run."""


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteLossError(
            f"pretraining loss is {float(loss.detach()):.4g} at update {step}: the run diverged (or a batch is "
            "corrupt); no weights exported. Lower params pretrain.lr, raise pretrain.warmup_steps, or check the audio")

def bestrq_targets(rows: list[dict], corpus: Corpus, p: dict, cfg: EncoderConfig,
                   seed: int) -> RandomProjectionQuantizer:
    """BEST-RQ: a frozen random-projection quantizer of stacked log-mel frames (needs no data)."""
    return RandomProjectionQuantizer(STACK * cfg.n_mels, p["codebook_size"], p["codebook_dim"], seed)


def kmeans_targets(rows: list[dict], corpus: Corpus, p: dict, cfg: EncoderConfig, seed: int) -> KMeansQuantizer:
    """HuBERT: k-means targets on a seeded sample of the unlabeled pool: stacked, normalised log-mel frames, or
    with `kmeans_layer` set, that layer of a never-trained encoder of the size being trained (TeacherKMeans)."""
    layer = p.get("kmeans_layer")
    teacher = None
    if layer is not None:
        with torch.random.fork_rng():  # seeded as the `random` upstream, without moving the training's RNG
            torch.manual_seed(seed)
            teacher = Encoder(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[: p["kmeans_utterances"]].tolist()
    # The clusters of the audio the targets are computed from: clean renderings with `clean_targets`.
    clean = [corpus.clean_path(rows[i]) if p.get("clean_targets") else None for i in pick]
    data = WaveDataset([str(c or corpus.audio_path(rows[i])) for c, i in zip(clean, pick, strict=True)],
                       [rows[i]["duration"] for i in pick])
    logmel, frames = LogMel(cfg.n_mels), []
    for k in range(len(data)):
        wav = data[k][None]
        feats, flens = logmel(wav, torch.tensor([wav.shape[1]]))
        feats = normalize(feats, flens)
        if teacher is not None:
            with torch.no_grad():
                hidden, _ = teacher(feats, flens, max_layer=layer)
                frames.append(teacher.final_norm(hidden[layer])[0])
        else:
            frames.append(stack_frames(feats, int(subsampled_lengths(flens)[0]))[0])
    allf = torch.cat(frames)
    bad = int((~torch.isfinite(allf).all(1)).sum())
    if bad:
        raise NonFiniteLossError(f"k-means targets: {bad} of {len(allf)} non-finite log-mel frames in the "
                                 f"unlabeled sample ({len(pick)} utterances): corrupt audio; the validate stage "
                                 "names files that do not decode")
    if len(allf) > 50_000:  # plenty for k <= 1024; keeps the fit to seconds
        allf = allf[torch.randperm(len(allf), generator=g)[:50_000]]
    centroids = KMeansQuantizer.fit(allf, p["kmeans_clusters"], seed=seed)
    return KMeansQuantizer(centroids) if teacher is None else TeacherKMeans(teacher, layer, centroids)


class MissingAlignmentsError(LabelbudgetError, ValueError):
    """The `phones` objective on a corpus without phone alignments of its unlabeled pool."""


def phone_targets(rows: list[dict], corpus: Corpus, p: dict, cfg: EncoderConfig, seed: int) -> PhoneTargets:
    """The topline: the unlabeled pool's espeak alignments; classes as the probe names them (stress dropped)."""
    segments = phones.read_part(corpus.dir, corpus.unlabeled)
    if segments is None:
        raise MissingAlignmentsError(
            f"objective phones (the topline) needs phone alignments of the unlabeled pool; corpus {corpus.dir} "
            f"(source {corpus.source!r}) has none: drop it, --set 'toplines={{}}' '~upstreams.topline'")
    classes = sorted({phones.phone_class(seg[0]) for r in rows for seg in segments.get(r["id"], [])}
                     | {phones.SIL})
    return PhoneTargets(classes, {r["id"]: segments.get(r["id"], []) for r in rows})


# params pretrain.objective -> the target maker: (unlabeled rows, corpus, params `pretrain`, encoder shape, seed) ->
# a module mapping stacked log-mel frames (B, T, STACK*n_mels) to target ids, or one with `per_utterance` whose
# `labels(id, samples)` the batches carry. A new objective is one entry here.
OBJECTIVES: dict[str, Callable[..., nn.Module]] = {"bestrq": bestrq_targets, "hubert": kmeans_targets,
                                                   "phones": phone_targets}


def make_ssl_module(cfg: EncoderConfig, p: dict, seed: int, quantizer: nn.Module | None = None,
                    fused: bool = False):
    """`fused` AdamW is one kernel instead of ~10 per tensor, but Lightning refuses gradient clipping with it
    under mixed precision (it unscales gradients itself): only pass True for full-precision training."""
    import lightning as L

    class SSLModule(L.LightningModule):
        """Masked prediction of discrete targets on top of the encoder; logs loss, masked accuracy, target
        usage (share of targets used and perplexity), learning rate and throughput."""

        def __init__(self) -> None:
            super().__init__()
            self.cfg, self.p, self.seed = cfg, p, seed
            self.logmel = LogMel(cfg.n_mels)
            self.encoder = Encoder(cfg)
            self.quantizer = quantizer or bestrq_targets([], None, p, cfg, seed)
            self.head = PredictionHead(cfg.dim, cfg.heads, self.quantizer.num_targets, int(p.get("head_layers", 0)))
            self.corruption = float(p.get("input_corruption", 0.0))
            self.unmasked_weight = float(p.get("unmasked_weight", 0.0))
            # TERA-style dense term: every masked frame also predicts its own (normalised) log-mel frames, a
            # low-variance target beside the discrete one. Off (no parameters) at weight 0.
            self.recon_weight = float(p.get("reconstruction_weight", 0.0))
            self.recon = nn.Linear(cfg.dim, STACK * cfg.n_mels) if self.recon_weight > 0 else None
            # wav2vec 2.0 / CPC-style contrastive term: each masked frame's output picks its own front-end
            # embedding of the clean input among other frames of the same utterance. Off (no parameters) at 0.
            self.infonce_weight = float(p.get("infonce_weight", 0.0))
            self.contrast = nn.Linear(cfg.dim, cfg.dim) if self.infonce_weight > 0 else None
            self._t0 = time.time()

        def configure_optimizers(self):
            trained = [w for w in self.parameters() if w.requires_grad]  # not a frozen teacher's
            opt = torch.optim.AdamW(trained, lr=p["lr"], weight_decay=p["weight_decay"],
                                    betas=(0.9, 0.98), fused=fused)
            warm, total = max(1, p["warmup_steps"]), max(p["max_steps"], p["warmup_steps"] + 1)

            def lr_at(step: int) -> float:  # linear warmup, cosine decay to 5%
                if step < warm:
                    return (step + 1) / warm
                frac = (step - warm) / max(1, total - warm)
                return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item())

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def ssl_loss(self, wav: torch.Tensor, lengths: torch.Tensor, step: int, rank: int = 0,
                     labels: torch.Tensor | None = None, clean: torch.Tensor | None = None):
            """Masked-prediction loss of one batch and its diagnostics; `labels`: per-utterance targets
            (B, frames) of an objective that has them (`phones`), -1 where there is none; `clean`: each
            utterance's clean rendering (B, samples), the source of the targets while the encoder hears `wav`."""
            # Masks, dropout and corruption depend only on (seed, step, rank): a resumed run repeats them.
            torch.manual_seed(self.seed * 1_000_003 + step * 101 + rank)
            gen = torch.Generator().manual_seed(self.seed + 7919 * step + rank)
            feats, flens = self.logmel(wav if clean is None else clean, lengths)
            feats = normalize(feats, flens)
            if self.corruption > 0:  # targets (and the L1 term) from the clean or stored audio, the input degraded
                noisy = corrupt(wav, lengths, self.corruption, np.random.default_rng([self.seed, step, rank]))
                inputs = normalize(self.logmel(noisy, lengths)[0], flens)
            elif clean is not None:
                inputs = normalize(self.logmel(wav, lengths)[0], flens)
            else:
                inputs = feats
            out_len = subsampled_lengths(flens)
            t_out = int(out_len.max())
            with torch.autocast(feats.device.type, enabled=False):  # targets never depend on the precision
                stacked = stack_frames(feats, t_out)
                if labels is not None:
                    targets = self.quantizer(stacked, labels)
                elif getattr(self.quantizer, "reads_features", False):
                    targets = self.quantizer.from_features(feats.float(), flens)[:, :t_out]
                else:
                    targets = self.quantizer(stacked)
            mask = span_mask(out_len, p["mask_prob"], p["mask_span"], gen).to(feats.device)
            # Mask the input frames under each masked encoder frame, filled with small noise (BEST-RQ):
            # masking after the front end would leak the frame into its neighbours' convolutions.
            in_mask = mask.repeat_interleave(STACK, dim=1)[:, : feats.shape[1], None]
            masked = torch.where(in_mask, 0.1 * torch.randn_like(inputs), inputs)
            hidden, _ = self.encoder(masked, flens)
            top = self.encoder.final_norm(hidden[-1])
            logits = self.head(top, ~length_mask(out_len, top.shape[1]))
            has_target = (targets[:, : logits.shape[1]] >= 0) & length_mask(out_len, logits.shape[1])
            m = mask[:, : logits.shape[1]] & has_target
            loss = F.cross_entropy(logits[m].float(), targets[m])
            if self.unmasked_weight > 0:  # HuBERT's loss on the visible frames (0: masked frames only)
                u = ~mask[:, : logits.shape[1]] & has_target
                if u.any():
                    loss = loss + self.unmasked_weight * F.cross_entropy(logits[u].float(), targets[u])
            recon = None
            infonce = None
            if self.contrast is not None:
                infonce = contrastive_loss(self.contrast(top), self.encoder.embed(feats), m, out_len, gen)
                loss = loss + self.infonce_weight * infonce
            if self.recon is not None:
                recon = F.l1_loss(self.recon(top)[m].float(), stacked[:, : logits.shape[1]][m].float())
                loss = loss + self.recon_weight * recon
            with torch.no_grad():
                acc = (logits[m].argmax(-1) == targets[m]).float().mean()
                valid_mask = length_mask(out_len, t_out)
                valid_mask &= targets >= 0
                counts = torch.bincount(targets[valid_mask], minlength=self.quantizer.num_targets).float()
                probs = counts / counts.sum()
                ppl = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
                stats = {"train/masked_acc": acc, "train/target_usage": (counts > 0).float().mean(),
                         "train/target_ppl": ppl, "train/mask_share": m.float().sum() / valid_mask.sum(),
                         "train/padding_share": 1 - lengths.sum() / (lengths.max() * len(lengths)),
                         "train/audio_seconds": lengths.sum() / 16000.0}
                if recon is not None:
                    stats["train/reconstruction_l1"] = recon.detach()
                if infonce is not None:
                    stats["train/infonce"] = infonce.detach()
            return loss, stats

        def training_step(self, batch, _idx):
            wav, lengths, *extra = batch  # extra: {labels, clean} when the recipe has them (collate_pretrain)
            loss, stats = self.ssl_loss(wav, lengths, self.global_step, self.global_rank, **(extra[0] if extra else {}))
            check_finite_loss(loss, self.global_step)  # before backward: NaN never reaches the weights
            acc = stats["train/masked_acc"]
            self.log_dict({"train/loss": loss, **stats, "train/lr": self.optimizers().param_groups[0]["lr"]},
                          prog_bar=False, on_step=True, batch_size=len(lengths))
            self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(lengths))
            self.log("acc", acc, prog_bar=True, logger=False, batch_size=len(lengths))
            return loss

    return SSLModule()
