"""Self-supervised objectives: BEST-RQ (random-projection quantizer) and HuBERT-style k-means targets.

Both predict, with cross-entropy, the discrete target of every masked frame. The quantizer's tensors are
buffers: frozen (never in the optimizer), saved in and restored from the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from labelbudget.batching import WaveDataset
from labelbudget.encoder import SUBSAMPLING, Encoder, EncoderConfig, subsampled_lengths
from labelbudget.errors import LabelbudgetError
from labelbudget.logmel import LogMel, length_mask, normalize
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
            assign = torch.cdist(frames, centroids).argmin(1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, frames)
            counts = torch.bincount(assign, minlength=k).clamp(min=1).unsqueeze(1)
            centroids = torch.where(counts > 0, sums / counts, centroids)
        return centroids


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

def bestrq_targets(rows: list[dict], corpus: Corpus, p: dict, n_mels: int, seed: int) -> RandomProjectionQuantizer:
    """BEST-RQ: a frozen random-projection quantizer of stacked log-mel frames (needs no data)."""
    return RandomProjectionQuantizer(STACK * n_mels, p["codebook_size"], p["codebook_dim"], seed)


def kmeans_targets(rows: list[dict], corpus: Corpus, p: dict, n_mels: int, seed: int) -> KMeansQuantizer:
    """HuBERT: k-means targets on stacked, normalised log-mel frames of a seeded sample of the unlabeled pool."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[: p["kmeans_utterances"]].tolist()
    data = WaveDataset([str(corpus.audio_path(rows[i])) for i in pick], [rows[i]["duration"] for i in pick])
    logmel, frames = LogMel(n_mels), []
    for k in range(len(data)):
        wav = data[k][None]
        feats, flens = logmel(wav, torch.tensor([wav.shape[1]]))
        feats = normalize(feats, flens)
        frames.append(stack_frames(feats, int(subsampled_lengths(flens)[0]))[0])
    allf = torch.cat(frames)
    bad = int((~torch.isfinite(allf).all(1)).sum())
    if bad:
        raise NonFiniteLossError(f"k-means targets: {bad} of {len(allf)} non-finite log-mel frames in the "
                                 f"unlabeled sample ({len(pick)} utterances): corrupt audio; the validate stage "
                                 "names files that do not decode")
    if len(allf) > 50_000:  # plenty for k <= 1024; keeps the fit to seconds
        allf = allf[torch.randperm(len(allf), generator=g)[:50_000]]
    return KMeansQuantizer(KMeansQuantizer.fit(allf, p["kmeans_clusters"], seed=seed))


# params pretrain.objective -> the target maker: (unlabeled rows, corpus, params `pretrain`, n_mels, seed) ->
# a module mapping stacked log-mel frames (B, T, STACK*n_mels) to target ids. A new objective is one entry here.
OBJECTIVES: dict[str, Callable[..., nn.Module]] = {"bestrq": bestrq_targets, "hubert": kmeans_targets}


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
            self.quantizer = quantizer or bestrq_targets([], None, p, cfg.n_mels, seed)
            self.head = nn.Linear(cfg.dim, self.quantizer.num_targets)
            # TERA-style dense term: every masked frame also predicts its own (normalised) log-mel frames, a
            # low-variance target beside the discrete one. Off (no parameters) at weight 0.
            self.recon_weight = float(p.get("reconstruction_weight", 0.0))
            self.recon = nn.Linear(cfg.dim, STACK * cfg.n_mels) if self.recon_weight > 0 else None
            self._t0 = time.time()

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=p["lr"], weight_decay=p["weight_decay"],
                                    betas=(0.9, 0.98), fused=fused)
            warm, total = max(1, p["warmup_steps"]), max(p["max_steps"], p["warmup_steps"] + 1)

            def lr_at(step: int) -> float:  # linear warmup, cosine decay to 5%
                if step < warm:
                    return (step + 1) / warm
                frac = (step - warm) / max(1, total - warm)
                return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item())

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def ssl_loss(self, wav: torch.Tensor, lengths: torch.Tensor, step: int, rank: int = 0):
            """Masked-prediction loss of one batch and its diagnostics."""
            # Masks and dropout depend only on (seed, step, rank): a resumed run repeats them exactly.
            torch.manual_seed(self.seed * 1_000_003 + step * 101 + rank)
            gen = torch.Generator().manual_seed(self.seed + 7919 * step + rank)
            feats, flens = self.logmel(wav, lengths)
            feats = normalize(feats, flens)
            out_len = subsampled_lengths(flens)
            t_out = int(out_len.max())
            with torch.autocast(feats.device.type, enabled=False):  # targets never depend on the precision
                targets = self.quantizer(stack_frames(feats, t_out))
            mask = span_mask(out_len, p["mask_prob"], p["mask_span"], gen).to(feats.device)
            # Mask the input frames under each masked encoder frame, filled with small noise (BEST-RQ):
            # masking after the front end would leak the frame into its neighbours' convolutions.
            in_mask = mask.repeat_interleave(STACK, dim=1)[:, : feats.shape[1], None]
            masked = torch.where(in_mask, 0.1 * torch.randn_like(feats), feats)
            hidden, _ = self.encoder(masked, flens)
            top = self.encoder.final_norm(hidden[-1])
            logits = self.head(top)
            m = mask[:, : logits.shape[1]]
            loss = F.cross_entropy(logits[m].float(), targets[m])
            recon = None
            if self.recon is not None:
                stacked = stack_frames(feats, t_out)[:, : logits.shape[1]]
                recon = F.l1_loss(self.recon(top)[m].float(), stacked[m].float())
                loss = loss + self.recon_weight * recon
            with torch.no_grad():
                acc = (logits[m].argmax(-1) == targets[m]).float().mean()
                valid_mask = length_mask(out_len, t_out)
                counts = torch.bincount(targets[valid_mask], minlength=self.quantizer.num_targets).float()
                probs = counts / counts.sum()
                ppl = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
                stats = {"train/masked_acc": acc, "train/target_usage": (counts > 0).float().mean(),
                         "train/target_ppl": ppl, "train/mask_share": m.float().sum() / valid_mask.sum(),
                         "train/padding_share": 1 - lengths.sum() / (lengths.max() * len(lengths)),
                         "train/audio_seconds": lengths.sum() / 16000.0}
                if recon is not None:
                    stats["train/reconstruction_l1"] = recon.detach()
            return loss, stats

        def training_step(self, batch, _idx):
            wav, lengths = batch
            loss, stats = self.ssl_loss(wav, lengths, self.global_step, self.global_rank)
            check_finite_loss(loss, self.global_step)  # before backward: NaN never reaches the weights
            acc = stats["train/masked_acc"]
            self.log_dict({"train/loss": loss, **stats, "train/lr": self.optimizers().param_groups[0]["lr"]},
                          prog_bar=False, on_step=True, batch_size=len(lengths))
            self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(lengths))
            self.log("acc", acc, prog_bar=True, logger=False, batch_size=len(lengths))
            return loss

    return SSLModule()
