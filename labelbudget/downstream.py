"""The downstream CTC model trained on cached upstream features, the same recipe for every upstream.

features (frames, layers, dim) --CMVN per layer--> learned softmax-weighted layer sum (SUPERB) or one layer
  --> stack frames down to `frame_rate` (fbank 100 Hz -> 25 Hz, like the SSL encoders' 4x subsampling)
  --> SpecAugment (training only) --> Conv1d(k=3) projection [--> conv blocks] --> BiLSTM --> Linear
  --> character CTC at `upsample` x `frame_rate` (25 Hz alone is too coarse for fast speech's characters).

Training: AdamW with warm-up then a constant rate, multiplied by `lr_decay` at every dev evaluation without
improvement (newbob: the noise of a high rate would otherwise end runs on a false plateau). Dev CER every
`eval_every` steps; early stopping that starts counting only once the model has left the all-blank phase (CTC
models emit only blanks for their first steps, while dev CER is flat at 1.0); the best dev-CER weights are
kept. One rule for every upstream and budget: stop after `patience` evaluations without an improvement of at
least `min_delta`, or at the generous `max_steps`. A run stopped by patience has converged; one stopped by
`max_steps` has not (the report counts them), and one that never left the all-blank phase is degenerate.

Lightning is imported only inside the training function: evaluation needs nothing but torch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelbudget.decoding import Decoder, GreedyDecoder
from labelbudget.featstore import FeatureStore, FeatureStoreError
from labelbudget.io import atomic_path
from labelbudget.text import VOCAB, encode

LABELED_PART = "labeled"


class DownstreamInputError(ValueError):
    """Bad input found before any training starts (missing features, unknown layer, empty budget...)."""


# --- configuration ------------------------------------------

@dataclass
class DownstreamConfig:
    layer: str | int = "weighted"  # "weighted": softmax-weighted sum of all kept layers; int: that layer only
    dim: int = 256  # width of the input projection and the conv blocks
    conv_blocks: int = 0  # depthwise-separable residual conv blocks after the projection (cheap on CPU)
    conv_kernel: int = 5
    hidden: int = 256  # BiLSTM units per direction
    lstm_layers: int = 1
    dropout: float = 0.2
    frame_rate: float = 25.0  # input frames are stacked down to about this rate
    upsample: int = 2  # CTC outputs per (stacked) frame
    time_masks: int = 2  # SpecAugment on features, at the stacked frame rate
    time_mask_frames: int = 6
    feature_masks: int = 2
    feature_mask_fraction: float = 0.1  # of the stacked feature width
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 5.0
    max_steps: int = 3000  # a generous maximum: runs are meant to stop by patience
    eval_every: int = 25  # steps between dev evaluations
    patience: int = 4  # dev evaluations without improvement, counted after the all-blank phase
    min_delta: float = 0.002  # dev CER must drop by at least this much to count as an improvement
    lr_decay: float = 0.5  # newbob: the rate is multiplied by this at every evaluation without improvement
    blank_exit: float = 0.3  # left the all-blank phase once dev output has this share of the reference chars
    cmvn_utterances: int = 400  # utterances of the budget used for the normalisation statistics
    num_threads: int = 0  # torch threads; 0: torch default
    accelerator: str = "auto"

    @classmethod
    def from_params(cls, p: dict) -> DownstreamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(p) - known)
        if unknown:
            raise DownstreamInputError(f"params finetune: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**p)
        if not (cfg.layer == "weighted" or isinstance(cfg.layer, int)):
            raise DownstreamInputError(f"params finetune.layer: {cfg.layer!r}; use 'weighted' or a layer")
        return cfg


# --- data ------------------------------------------

def layer_index(store: FeatureStore, layer: str | int) -> int | None:
    """Position of the chosen layer in the features (None: weighted sum over all of them)."""
    if layer == "weighted":
        return None
    kept = list(store.meta["layers"])
    if layer not in kept:
        raise DownstreamInputError(f"finetune.layer {layer} is not in the features at {store.dir} "
                                   f"(kept: {kept})")
    return kept.index(layer)


class FeatureDataset(torch.utils.data.Dataset):
    """(features, target) pairs of a list of utterances; features float32 (frames, layers, dim).

    `in_memory`: read every utterance once into one float16 block (a training run visits each utterance
    hundreds of times; memmap reads, page faults and per-item copies then cost more than the model)."""

    def __init__(self, store: FeatureStore, ids: Sequence[str], texts: dict[str, str] | None = None,
                 layer: int | None = None, in_memory: bool = False):
        self.store, self.ids, self.texts, self.layer = store, list(ids), texts, layer
        self.lengths = [int(store[i].shape[0]) for i in self.ids]  # memmap slices: no data read
        self._block: np.ndarray | None = None
        if in_memory and self.ids:
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
            self._block = np.concatenate([self._read(uid) for uid in self.ids])

    def _read(self, uid: str) -> np.ndarray:
        x = self.store[uid]
        return x if self.layer is None else x[:, self.layer : self.layer + 1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> dict:
        uid = self.ids[k]
        if self._block is not None:
            x = self._block[self.offsets[k] : self.offsets[k] + self.lengths[k]]
        else:
            x = self._read(uid)
        item = {"id": uid, "feats": torch.from_numpy(np.asarray(x, dtype=np.float32))}
        if self.texts is not None:
            item["target"] = torch.tensor(encode(self.texts[uid]), dtype=torch.long)
        return item


def collate(items: list[dict]) -> dict:
    lengths = torch.tensor([it["feats"].shape[0] for it in items])
    feats = torch.nn.utils.rnn.pad_sequence([it["feats"] for it in items], batch_first=True)
    batch = {"ids": [it["id"] for it in items], "feats": feats, "lengths": lengths}
    if "target" in items[0]:
        batch["targets"] = torch.cat([it["target"] for it in items])
        batch["target_lengths"] = torch.tensor([len(it["target"]) for it in items])
    return batch


class BucketBatchSampler(torch.utils.data.Sampler):
    """Random batches of similar length (less padding): shuffle, sort within pools of `pool` batches, shuffle
    the batches. A fresh order every epoch from one seeded generator."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool: int = 8):
        self.lengths, self.batch_size, self.pool = list(lengths), batch_size, pool
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.lengths))
        batches = []
        span = self.batch_size * self.pool
        for s in range(0, len(order), span):
            chunk = sorted(order[s : s + span].tolist(), key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]

    def __len__(self) -> int:
        span = self.batch_size * self.pool
        full, rest = divmod(len(self.lengths), span)
        return full * self.pool + math.ceil(rest / self.batch_size)


class BlockBatches:
    """Training batches cut by index from an in-memory feature block (`FeatureDataset(in_memory=True)`):
    the same batches as `DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)`, without per-item
    copies. On a GPU the block is moved there once when it fits, so no batch crosses the bus."""

    def __init__(self, dataset: FeatureDataset, sampler: BucketBatchSampler, device: torch.device):
        if dataset._block is None or dataset.texts is None:
            raise ValueError("BlockBatches needs a labeled FeatureDataset built with in_memory=True")
        block = torch.from_numpy(dataset._block)
        if device.type == "cuda" and block.nbytes > 0.5 * torch.cuda.mem_get_info(device)[0]:
            device = torch.device("cpu")  # does not fit: batches are cut on the host, moved by Lightning
        self.block, self.device, self.sampler = block.to(device), device, sampler
        self.offsets, self.lengths, self.ids = dataset.offsets, dataset.lengths, dataset.ids
        self.targets = [torch.tensor(encode(dataset.texts[i]), dtype=torch.long) for i in dataset.ids]

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        # A DataLoader draws one number from torch's global generator per epoch (its workers' base seed):
        # drawing it here too keeps dropout and SpecAugment, so the trained model, identical on both paths.
        torch.empty((), dtype=torch.int64).random_()
        for idx in self.sampler:
            lens = torch.tensor([self.lengths[i] for i in idx])
            t = torch.arange(int(lens.max()))
            valid = t[None, :] < lens[:, None]
            rows = torch.where(valid, torch.as_tensor(self.offsets[idx])[:, None] + t[None, :], 0)
            valid, rows = valid.to(self.device), rows.to(self.device)
            feats = self.block[rows].float() * valid[..., None, None]
            targets = [self.targets[i] for i in idx]
            yield {"ids": [self.ids[i] for i in idx], "feats": feats, "lengths": lens.to(self.device),
                   "targets": torch.cat(targets).to(self.device),
                   "target_lengths": torch.tensor([len(x) for x in targets], device=self.device)}


def training_device(accelerator: str) -> torch.device:
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic length-sorted batches for evaluation."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def feature_stats(dataset: FeatureDataset, max_utterances: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per (layer, dim) over the frames of the first utterances of the training set: every
    upstream (log-mel, SSL layers of any scale) enters the downstream at unit scale."""
    s = s2 = None
    n = 0
    for k in range(min(len(dataset), max_utterances)):
        x = dataset[k]["feats"].double().numpy()
        s = x.sum(0) if s is None else s + x.sum(0)
        s2 = (x**2).sum(0) if s2 is None else s2 + (x**2).sum(0)
        n += x.shape[0]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-10))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


# --- model ------------------------------------------

def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    lens = lengths.to(x.device)[:, None]
    idx = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(1, idx[..., None].expand_as(x))


class ConvBlock(nn.Module):
    """Residual depthwise-separable 1-D convolution: local context at a fraction of an LSTM's cost."""

    def __init__(self, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)  # per frame: padding never leaks into the statistics
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(self.pointwise(F.gelu(self.depthwise(y))))


class BiLSTM(nn.Module):
    """Bidirectional LSTM on padded batches. Packed sequences are exact but ~3x slower on CPU; a plain
    bidirectional LSTM would start its backward pass in the padding. Reversing each sequence within its length
    keeps the padding at the end for both directions: exact, at the speed of the unpacked kernel."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.fwd = nn.LSTM(inputs, hidden, batch_first=True)
        self.bwd = nn.LSTM(inputs, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        f, _ = self.fwd(x)
        b, _ = self.bwd(reverse_padded(x, lengths))
        return torch.cat([f, reverse_padded(b, lengths)], dim=-1)


class DownstreamModel(nn.Module):
    def __init__(self, cfg: DownstreamConfig, num_layers: int, dim: int, input_rate: float,
                 vocab_size: int = len(VOCAB)):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.dim, self.input_rate = num_layers, dim, input_rate
        self.stack = max(1, round(input_rate / cfg.frame_rate))
        self.vocab_size = vocab_size
        # Zero logits: every layer starts with the same weight.
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("mean", torch.zeros(num_layers, dim))
        self.register_buffer("std", torch.ones(num_layers, dim))
        width = dim * self.stack
        self.proj = nn.Conv1d(width, cfg.dim, kernel_size=3, padding=1)
        self.convs = nn.ModuleList(ConvBlock(cfg.dim, cfg.conv_kernel, cfg.dropout)
                                   for _ in range(cfg.conv_blocks))
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.ModuleList(BiLSTM(cfg.dim if k == 0 else 2 * cfg.hidden, cfg.hidden)
                                  for k in range(cfg.lstm_layers))
        out_dim = 2 * cfg.hidden if cfg.lstm_layers else cfg.dim
        self.head = nn.Linear(out_dim, vocab_size * cfg.upsample)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))

    def spec_augment(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero (= the mean, after CMVN) random time spans and feature bands of each utterance."""
        c = self.cfg
        bsz, t, width = x.shape
        keep = torch.ones(bsz, t, width, dtype=torch.bool, device=x.device)
        frames = torch.arange(t, device=x.device)[None, :]
        for _ in range(c.time_masks):
            w = torch.randint(0, c.time_mask_frames + 1, (bsz, 1), device=x.device)
            start = (torch.rand(bsz, 1, device=x.device) * (lengths[:, None] - w).clamp(min=1)).long()
            keep &= ~((frames >= start) & (frames < start + w))[..., None]
        bins = torch.arange(width, device=x.device)[None, :]
        fw = max(1, int(c.feature_mask_fraction * width))
        for _ in range(c.feature_masks):
            w = torch.randint(0, fw + 1, (bsz, 1), device=x.device)
            start = (torch.rand(bsz, 1, device=x.device) * (width - w + 1)).long()
            keep &= ~((bins >= start) & (bins < start + w))[:, None, :]
        return x * keep

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (batch, frames, layers, dim) -> CTC log-probs (batch, out_frames, vocab), their lengths."""
        bsz, t = feats.shape[:2]
        x = (feats - self.mean) / self.std
        x = (x * self.layer_weights()[:, None]).sum(dim=2)  # (B, T, D)
        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
        x = x * valid[..., None]  # padding back to zero after the normalisation
        if self.stack > 1:
            pad = (-t) % self.stack
            x = F.pad(x, (0, 0, 0, pad)).reshape(bsz, (t + pad) // self.stack, self.dim * self.stack)
        lens = torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")
        if self.training:
            x = self.spec_augment(x, lens)
        x = self.dropout(F.gelu(self.proj(x.transpose(1, 2))))  # (B, C, T')
        # Zero the padding before every convolution: an utterance decodes the same alone or in any batch.
        mask = (torch.arange(x.shape[-1], device=x.device)[None, :] < lens[:, None])[:, None, :]
        for conv in self.convs:
            x = conv(x * mask)
        x = x.transpose(1, 2)
        for lstm in self.lstm:
            x = self.dropout(lstm(x, lens))
        logits = self.head(x)  # (B, T', up * V)
        logits = logits.reshape(bsz, -1, self.vocab_size)
        return logits.log_softmax(dim=-1), lens * self.cfg.upsample


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    # zero_infinity: an utterance too fast for its frames gives no gradient instead of an inf loss
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0,
                      reduction="mean", zero_infinity=True)


# --- inference ------------------------------------------

@torch.inference_mode()
def transcribe(model: DownstreamModel, dataset: FeatureDataset, decoder: Decoder | None = None,
               batch_size: int = 32) -> dict[str, str]:
    """Hypothesis per utterance id, decoded in length-sorted batches."""
    decoder = decoder or GreedyDecoder()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, str] = {}
    for idx in sorted_batches(dataset.lengths, batch_size):
        batch = collate([dataset[k] for k in idx])
        log_probs, lens = model(batch["feats"].to(device), batch["lengths"].to(device))
        out.update(zip(batch["ids"], decoder.decode(log_probs, lens), strict=True))
    model.train(was_training)
    return out


def save_checkpoint(path: str | Path, model: DownstreamModel, meta: dict) -> None:
    payload = {"config": asdict(model.cfg), "num_layers": model.num_layers, "dim": model.dim,
               "input_rate": model.input_rate, "state_dict": model.state_dict(), "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[DownstreamModel, dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no downstream checkpoint; run the `finetune` stage")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    cfg = DownstreamConfig.from_params(payload["config"])
    model = DownstreamModel(cfg, payload["num_layers"], payload["dim"], payload["input_rate"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload["meta"]


# --- training ------------------------------------------

class BlankAwareStopping:
    """Early stopping on dev CER whose patience counts only once the model has left the all-blank phase (its
    dev output reaches `blank_exit` of the reference characters); before that dev CER sits at 1.0 while the
    model is still learning, and a plain patience would stop it there."""

    def __init__(self, patience: int, blank_exit: float, min_delta: float = 0.0):
        self.patience, self.blank_exit, self.min_delta = patience, blank_exit, min_delta
        self.best = math.inf
        self.best_step = 0
        self.left_blank_step: int | None = None
        self.bad = 0

    def update(self, step: int, cer: float, output_share: float) -> tuple[bool, bool]:
        """Record one dev evaluation; returns (improved, stop)."""
        # Output alone is not enough: an untrained model emits random characters before it learns blanks.
        if self.left_blank_step is None and output_share >= self.blank_exit and cer < 1.0:
            self.left_blank_step = step
        improved = cer < self.best - self.min_delta
        if improved:
            self.best, self.best_step, self.bad = cer, step, 0
        elif self.left_blank_step is not None:
            self.bad += 1
        return improved, self.bad >= self.patience


@dataclass
class TrainResult:
    model: DownstreamModel
    steps: int
    max_steps: int
    best_step: int
    best_dev_cer: float
    left_blank_step: int | None
    stopped_early: bool  # by patience: converged
    seconds: float
    seconds_per_step: float
    history: list[dict]
    layer_weights: list[float]
    non_finite_loss: bool = False

    @property
    def degenerate(self) -> bool:
        """Never left the all-blank phase, or the loss went NaN: its scores say nothing about its upstream."""
        return self.left_blank_step is None or self.non_finite_loss

    @property
    def stop_reason(self) -> str:
        return "patience" if self.stopped_early else "max_steps"


def train(cfg: DownstreamConfig, train_set: FeatureDataset, dev_set: FeatureDataset,
          dev_texts: dict[str, str], seed: int, logger=None,
          verbose: bool = True) -> TrainResult:
    """Train one downstream model; returns it with its best dev-CER weights loaded."""
    import logging
    import warnings

    import lightning.pytorch as pl

    from labelbudget.metrics import total, utterance_counts

    # Lightning's banner lines (GPU/TPU available, tips) would be repeated in every one of dozens of runs.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*training_step. returned .None.*")  # our non-finite guard

    if len(train_set) == 0:
        raise DownstreamInputError("empty training set")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    store = train_set.store
    model = DownstreamModel(cfg, num_layers=train_set[0]["feats"].shape[1], dim=store.dim,
                            input_rate=float(store.meta["frame_rate"]))
    model.set_stats(*feature_stats(train_set, cfg.cmvn_utterances))
    cap = cfg.max_steps
    dev_ids = dev_set.ids
    dev_refs = [dev_texts[i] for i in dev_ids]
    dev_ref_chars = sum(len(r) for r in dev_refs)

    class LitDownstream(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch: dict, _: int) -> torch.Tensor | None:
            log_probs, lens = self.model(batch["feats"], batch["lengths"])
            loss = ctc_loss(log_probs, lens, batch["targets"], batch["target_lengths"])
            if not torch.isfinite(loss):  # stop: a NaN step would destroy the weights
                dev_cb.non_finite = True
                self.trainer.should_stop = True
                return None
            self.log("train/loss", loss, batch_size=len(batch["ids"]))
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

            def schedule(step: int) -> float:  # warm-up, then constant until dev CER stalls (see DevCER)
                return min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * dev_cb.lr_scale

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class DevCER(pl.Callback):
        """Dev CER every `eval_every` steps, best weights, early stopping after the all-blank phase."""

        def __init__(self):
            self.stopper = BlankAwareStopping(cfg.patience, cfg.blank_exit, cfg.min_delta)
            self.best_state: dict | None = None
            self.stopped_early = False
            self.non_finite = False
            self.lr_scale = 1.0
            self.history: list[dict] = []

        def evaluate(self, trainer, lit) -> None:
            step = trainer.global_step
            hyps = transcribe(lit.model, dev_set)
            hyp_list = [hyps[i] for i in dev_ids]
            c = total(utterance_counts(dev_refs, hyp_list))
            cer = c.char_errors / max(1, c.chars)
            wer = c.word_errors / max(1, c.words)
            out_share = sum(len(h) for h in hyp_list) / max(1, dev_ref_chars)
            improved, stop = self.stopper.update(step, cer, out_share)
            if not improved and self.stopper.left_blank_step is not None:
                self.lr_scale *= cfg.lr_decay
            if improved:
                self.best_state = copy.deepcopy(lit.model.state_dict())
            weights = lit.model.layer_weights().detach().tolist()
            loss = trainer.callback_metrics.get("train/loss")
            row = {"step": step, "dev_cer": cer, "dev_wer": wer, "dev_output_share": out_share,
                   "lr_scale": self.lr_scale,
                   "train_loss": float(loss) if loss is not None else None}
            self.history.append(row)
            if trainer.logger is not None:
                logged = {"dev/cer": cer, "dev/wer": wer, "dev/output_share": out_share,
                          **{f"layer_weight/{k}": w for k, w in enumerate(weights)}}
                trainer.logger.log_metrics(logged, step=step)
            if verbose:
                print(f"step {step:5d}  loss {row['train_loss'] or float('nan'):7.3f}  dev CER {cer:.3f}  "
                      f"WER {wer:.3f}  output {out_share:.2f}" + ("  *" if improved else ""), flush=True)
            if stop:
                self.stopped_early = True
                trainer.should_stop = True

        def on_train_batch_end(self, trainer, lit, *_) -> None:
            step = trainer.global_step
            if step % cfg.eval_every == 0 or step >= cap:
                self.evaluate(trainer, lit)

    dev_cb = DevCER()
    sampler = BucketBatchSampler(train_set.lengths, cfg.batch_size, seed)
    if train_set._block is not None:
        loader = BlockBatches(train_set, sampler, training_device(cfg.accelerator))
    else:
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=1, max_steps=cap, max_epochs=-1, logger=logger or False,
        callbacks=[dev_cb], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=cfg.grad_clip,
        log_every_n_steps=max(1, min(10, len(sampler))))
    lit = LitDownstream()
    start = time.time()
    trainer.fit(lit, loader)
    seconds = time.time() - start
    model = lit.model.cpu()
    if dev_cb.best_state is not None:
        model.load_state_dict(dev_cb.best_state)
    model.eval()
    steps = trainer.global_step
    stopper = dev_cb.stopper
    return TrainResult(model=model, steps=steps, max_steps=cap, best_step=stopper.best_step,
                       best_dev_cer=stopper.best, left_blank_step=stopper.left_blank_step,
                       stopped_early=dev_cb.stopped_early, seconds=seconds,
                       seconds_per_step=seconds / max(1, steps), history=dev_cb.history,
                       layer_weights=model.layer_weights().detach().tolist(), non_finite_loss=dev_cb.non_finite)


# --- inputs ------------------------------------------

def open_part(features_root: str | Path, part: str) -> FeatureStore:
    try:
        return FeatureStore(Path(features_root) / part)
    except FeatureStoreError as e:
        raise DownstreamInputError(str(e)) from None


def check_ids(store: FeatureStore, ids: Sequence[str], what: str) -> None:
    """Every utterance of `what` must have features; names the first few that do not."""
    if not ids:
        raise DownstreamInputError(f"{what}: no utterances")
    missing = [i for i in ids if i not in store]
    if missing:
        raise DownstreamInputError(
            f"{what}: {len(missing)} of {len(ids)} utterances have no features in {store.dir} "
            f"(e.g. {missing[:3]}); re-run the `extract` stage for this upstream")


def check_compatible(ref: FeatureStore, other: FeatureStore) -> None:
    for key in ("layers", "dim", "frame_rate"):
        if ref.meta.get(key) != other.meta.get(key):
            raise DownstreamInputError(f"features disagree on {key!r}: {ref.dir} has {ref.meta.get(key)!r}, "
                                       f"{other.dir} has {other.meta.get(key)!r}; re-run the `extract` stage")
