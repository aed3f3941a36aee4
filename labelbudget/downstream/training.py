"""Training the downstream model: warm-up then a constant rate with newbob decay, dev-CER early stopping that
counts only after the all-blank phase, the best dev-CER weights kept; what a run did (TrainResult)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from labelbudget.downstream.config import DownstreamInputError
from labelbudget.downstream.data import BlockBatches, BucketBatchSampler, FeatureDataset, collate, feature_stats
from labelbudget.downstream.model import DownstreamModel
from labelbudget.precision import use_bf16

if TYPE_CHECKING:
    from labelbudget.schema import Finetune


def training_device(accelerator: str) -> torch.device:
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


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


def train(cfg: Finetune, train_set: FeatureDataset, dev_set: FeatureDataset,
          dev_texts: dict[str, str], seed: int, logger=None,
          verbose: bool = True) -> TrainResult:
    """Train one downstream model; returns it with its best dev-CER weights loaded."""
    import logging
    import warnings

    import lightning.pytorch as pl

    from labelbudget.downstream.lit import DevCER, LitDownstream

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
    dev = DevCER(cfg, BlankAwareStopping(cfg.patience, cfg.blank_exit, cfg.min_delta), dev_set, dev_texts, verbose)
    sampler = BucketBatchSampler(train_set.lengths, cfg.batch_size, seed)
    if train_set._block is not None:
        loader = BlockBatches(train_set, sampler, training_device(cfg.accelerator))
    else:
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
    # bf16 autocast on the forward pass (LSTM, convolutions, projections); weights, optimizer and CTC stay fp32,
    # and dev evaluation runs in fp32 outside the autocast region.
    bf16 = use_bf16(cfg.precision, training_device(cfg.accelerator))
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=1, precision="bf16-mixed" if bf16 else "32-true",
        max_steps=cfg.max_steps, max_epochs=-1, logger=logger or False,
        callbacks=[dev], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=cfg.grad_clip,
        log_every_n_steps=max(1, min(10, len(sampler))))
    lit = LitDownstream(model, cfg, dev)
    start = time.time()
    trainer.fit(lit, loader)
    seconds = time.time() - start
    model = lit.model.cpu()
    if dev.best_state is not None:
        model.load_state_dict(dev.best_state)
    model.eval()
    steps, stopper = trainer.global_step, dev.stopper
    return TrainResult(model=model, steps=steps, max_steps=cfg.max_steps, best_step=stopper.best_step,
                       best_dev_cer=stopper.best, left_blank_step=stopper.left_blank_step,
                       stopped_early=dev.stopped_early, seconds=seconds,
                       seconds_per_step=seconds / max(1, steps), history=dev.history,
                       layer_weights=model.layer_weights().detach().tolist(), non_finite_loss=dev.non_finite)
