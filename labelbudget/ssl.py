"""Masked prediction on top of the encoder, whatever the targets: the objectives (labelbudget/objectives: BEST-RQ,
HuBERT-style k-means, the `phones` topline) make the targets, this module trains the encoder to predict them.

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
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelbudget import audio
from labelbudget.encoder import SUBSAMPLING, Encoder, EncoderConfig, subsampled_lengths
from labelbudget.errors import LabelbudgetError
from labelbudget.logmel import LogMel, length_mask, normalize
from labelbudget.manifest import Corpus

if TYPE_CHECKING:
    from labelbudget.schema import Pretrain

STACK = SUBSAMPLING  # log-mel frames under each encoder frame: the prediction targets' input


def stack_frames(feats: torch.Tensor, out_frames: int) -> torch.Tensor:
    """(B, T, F) -> (B, out_frames, STACK*F): the input frames under each encoder frame."""
    b, t, f = feats.shape
    need = out_frames * STACK
    if t < need:
        feats = F.pad(feats, (0, 0, 0, need - t))
    return feats[:, :need].reshape(b, out_frames, STACK * f)


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

def make_targets(objective: str, rows: list[dict], corpus: Corpus, p: Pretrain, cfg: EncoderConfig,
                 seed: int) -> nn.Module:
    """The targets of params `pretrain.objective`: module labelbudget.objectives.<objective>."""
    import importlib

    return importlib.import_module(f"labelbudget.objectives.{objective}").targets(rows, corpus, p, cfg, seed)


def make_ssl_module(cfg: EncoderConfig, p: Pretrain, seed: int, quantizer: nn.Module | None = None,
                    fused: bool = False) -> SSLModule:
    """`fused` AdamW is one kernel instead of ~10 per tensor, but Lightning refuses gradient clipping with it
    under mixed precision (it unscales gradients itself): only pass True for full-precision training."""
    return SSLModule(cfg, p, seed, quantizer or make_targets("bestrq", [], None, p, cfg, seed), fused)


def lr_at(step: int, warm: int, total: int) -> float:
    """The learning-rate factor: linear warm-up, then cosine decay to 5%."""
    if step < warm:
        return (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item())


def target_stats(targets: torch.Tensor, valid: torch.Tensor, num_targets: int) -> dict[str, torch.Tensor]:
    """Share of the target ids used in a batch and their perplexity (a collapsed quantizer shows here)."""
    counts = torch.bincount(targets[valid], minlength=num_targets).float()
    probs = counts / counts.sum()
    ppl = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    return {"train/target_usage": (counts > 0).float().mean(), "train/target_ppl": ppl}


class SSLModule(L.LightningModule):
    """Masked prediction of discrete targets on top of the encoder; logs loss, masked accuracy, target usage
    (share of targets used and perplexity), learning rate and throughput."""

    def __init__(self, cfg: EncoderConfig, p: Pretrain, seed: int, quantizer: nn.Module, fused: bool = False):
        super().__init__()
        self.cfg, self.p, self.seed, self.fused = cfg, p, seed, fused
        self.logmel = LogMel(cfg.n_mels)
        self.encoder = Encoder(cfg)
        self.quantizer = quantizer
        self.head = PredictionHead(cfg.dim, cfg.heads, self.quantizer.num_targets, p.head_layers)
        self.corruption = p.input_corruption
        self.unmasked_weight = p.unmasked_weight
        # TERA-style dense term: every masked frame also predicts its own (normalised) log-mel frames, a
        # low-variance target beside the discrete one. Off (no parameters) at weight 0.
        self.recon_weight = p.reconstruction_weight
        self.recon = nn.Linear(cfg.dim, STACK * cfg.n_mels) if self.recon_weight > 0 else None
        # wav2vec 2.0 / CPC-style contrastive term: each masked frame's output picks its own front-end
        # embedding of the clean input among other frames of the same utterance. Off (no parameters) at 0.
        self.infonce_weight = p.infonce_weight
        self.contrast = nn.Linear(cfg.dim, cfg.dim) if self.infonce_weight > 0 else None
        self._t0 = time.time()

    def param_groups(self) -> list[dict]:
        """Trained weights (not a frozen teacher's) in three groups: the rest (heads) at `lr`, the front end at
        `frontend_lr_scale` x lr, the Transformer layers and final norm at `transformer_lr_scale` x lr. At CPU
        scale the front end's output probes best and gains from a higher rate, while the Transformer layers
        lose probe accuracy at one (benchmarks/results/recipe_search.md)."""
        p, enc = self.p, self.encoder
        front = {id(w) for m in (enc.subsample, enc.pos_conv) for w in m.parameters()}
        body = {id(w) for m in (enc.layers, enc.final_norm) for w in m.parameters()}
        groups = [{"params": [], "lr": p.lr}, {"params": [], "lr": p.lr * p.frontend_lr_scale},
                  {"params": [], "lr": p.lr * p.transformer_lr_scale}]
        for w in self.parameters():
            if w.requires_grad:
                groups[1 if id(w) in front else 2 if id(w) in body else 0]["params"].append(w)
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        p = self.p
        opt = torch.optim.AdamW(self.param_groups(), lr=p.lr, weight_decay=p.weight_decay, betas=(0.9, 0.98),
                                fused=self.fused)
        warm, total = max(1, p.warmup_steps), max(p.max_steps, p.warmup_steps + 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def views(self, wav: torch.Tensor, lengths: torch.Tensor, step: int, rank: int, clean: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-mel the targets come from, log-mel the encoder hears, frames): the clean rendering or the
        stored audio for the targets; the input degraded on the fly with `input_corruption`."""
        feats, flens = self.logmel(wav if clean is None else clean, lengths)
        feats = normalize(feats, flens)
        if self.corruption > 0:  # targets (and the L1 term) from the clean or stored audio, the input degraded
            noisy = corrupt(wav, lengths, self.corruption, np.random.default_rng([self.seed, step, rank]))
            return feats, normalize(self.logmel(noisy, lengths)[0], flens), flens
        if clean is not None:
            return feats, normalize(self.logmel(wav, lengths)[0], flens), flens
        return feats, feats, flens

    def targets(self, feats: torch.Tensor, flens: torch.Tensor, t_out: int, labels: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(target id per encoder frame, -1 where none; the stacked log-mel frames under each)."""
        with torch.autocast(feats.device.type, enabled=False):  # targets never depend on the precision
            stacked = stack_frames(feats, t_out)
            if labels is not None:
                return self.quantizer(stacked, labels), stacked
            if getattr(self.quantizer, "reads_features", False):
                return self.quantizer.from_features(feats.float(), flens)[:, :t_out], stacked
            return self.quantizer(stacked), stacked

    def ssl_loss(self, wav: torch.Tensor, lengths: torch.Tensor, step: int, rank: int = 0,
                 labels: torch.Tensor | None = None, clean: torch.Tensor | None = None):
        """Masked-prediction loss of one batch and its diagnostics; `labels`: per-utterance targets (B, frames)
        of an objective that has them (`phones`), -1 where there is none; `clean`: each utterance's clean
        rendering (B, samples), the source of the targets while the encoder hears `wav`."""
        # Masks, dropout and corruption depend only on (seed, step, rank): a resumed run repeats them.
        torch.manual_seed(self.seed * 1_000_003 + step * 101 + rank)
        gen = torch.Generator().manual_seed(self.seed + 7919 * step + rank)
        feats, inputs, flens = self.views(wav, lengths, step, rank, clean)
        out_len = subsampled_lengths(flens)
        t_out = int(out_len.max())
        targets, stacked = self.targets(feats, flens, t_out, labels)
        mask = span_mask(out_len, self.p.mask_prob, self.p.mask_span, gen).to(feats.device)
        # Mask the input frames under each masked encoder frame, filled with small noise (BEST-RQ): masking
        # after the front end would leak the frame into its neighbours' convolutions.
        in_mask = mask.repeat_interleave(STACK, dim=1)[:, : feats.shape[1], None]
        hidden, _ = self.encoder(torch.where(in_mask, 0.1 * torch.randn_like(inputs), inputs), flens)
        top = self.encoder.final_norm(hidden[-1])
        logits = self.head(top, ~length_mask(out_len, top.shape[1]))
        has_target = (targets[:, : logits.shape[1]] >= 0) & length_mask(out_len, logits.shape[1])
        m = mask[:, : logits.shape[1]] & has_target
        loss = F.cross_entropy(logits[m].float(), targets[m])
        if self.unmasked_weight > 0:  # HuBERT's loss on the visible frames (0: masked frames only)
            u = ~mask[:, : logits.shape[1]] & has_target
            if u.any():
                loss = loss + self.unmasked_weight * F.cross_entropy(logits[u].float(), targets[u])
        stats: dict[str, torch.Tensor] = {}
        if self.contrast is not None:
            infonce = contrastive_loss(self.contrast(top), self.encoder.embed(feats), m, out_len, gen)
            loss, stats["train/infonce"] = loss + self.infonce_weight * infonce, infonce.detach()
        if self.recon is not None:
            recon = F.l1_loss(self.recon(top)[m].float(), stacked[:, : logits.shape[1]][m].float())
            loss, stats["train/reconstruction_l1"] = loss + self.recon_weight * recon, recon.detach()
        with torch.no_grad():
            valid = length_mask(out_len, t_out) & (targets >= 0)
            stats = {"train/masked_acc": (logits[m].argmax(-1) == targets[m]).float().mean(),
                     **target_stats(targets, valid, self.quantizer.num_targets),
                     "train/mask_share": m.float().sum() / valid.sum(),
                     "train/padding_share": 1 - lengths.sum() / (lengths.max() * len(lengths)),
                     "train/audio_seconds": lengths.sum() / 16000.0, **stats}
        return loss, stats

    def training_step(self, batch, _idx):
        wav, lengths, *extra = batch  # extra: {labels, clean} when the recipe has them (collate_pretrain)
        loss, stats = self.ssl_loss(wav, lengths, self.global_step, self.global_rank, **(extra[0] if extra else {}))
        check_finite_loss(loss, self.global_step)  # before backward: NaN never reaches the weights
        self.log_dict({"train/loss": loss, **stats, "train/lr": self.optimizers().param_groups[0]["lr"]},
                      prog_bar=False, on_step=True, batch_size=len(lengths))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(lengths))
        self.log("acc", stats["train/masked_acc"], prog_bar=True, logger=False, batch_size=len(lengths))
        return loss
