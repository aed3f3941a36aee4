"""Pretraining one SSL encoder with Lightning: data, quantizer set-up, exact resume, export for extraction."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from labelbudget import tracking
from labelbudget.batching import StepBatchSampler, WaveDataset, collate_waves, load_wave
from labelbudget.encoder import FORMAT, EncoderConfig, count_parameters
from labelbudget.io import atomic_path, write_json
from labelbudget.manifest import CLEAN_DIR, Corpus
from labelbudget.ssl import STACK, NonFiniteLossError, make_ssl_module, make_targets

if TYPE_CHECKING:
    from labelbudget.schema import Params, Pretrain

# Keys of params `pretrain` that may change on resume; every other key (a new one included) changes the
# trained weights, so checkpoints of another value are discarded.
RESUME_SAFE = ("max_minutes", "checkpoint_every", "devices", "num_nodes", "strategy", "precision", "num_threads")
# The code a checkpoint's state dict is laid out by.
_CODE = [*(Path(__file__).with_name(n) for n in ("ssl.py", "encoder.py", "pretraining.py")),
         *sorted((Path(__file__).parent / "objectives").glob("*.py"))]


class Monitor(Protocol):
    """A periodic measurement of the encoder being trained (e.g. labelbudget.probe.PretrainingProbe): called on
    rank 0 every `every` updates and once at the end; its values go to every logger (history.csv, W&B)."""

    every: int

    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]: ...


def resolve_precision(setting: str) -> str:
    """Lightning precision for params `pretrain.precision`: `auto` = bf16-mixed on a GPU with bf16, fp32 on a CPU.
    On a CPU with native bf16 the loss curve matches fp32 and a fixed batch steps 1.2x faster, but real batches
    (a new shape each) ran 0.85x as fast: benchmarks/results/pretrain_throughput.json."""
    if setting != "auto":
        return setting
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def fingerprint(cfg: EncoderConfig, p: Pretrain, seed: int, manifest: Path) -> str:
    blob = json.dumps({"cfg": cfg.to_dict(), "p": {k: v for k, v in p.model_dump().items() if k not in RESUME_SAFE},
                       "seed": seed, "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                       "code": [hashlib.sha256(f.read_bytes()).hexdigest() for f in _CODE]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_spec(name: str, params: Params) -> tuple[str, Pretrain]:
    """(encoder size, params `pretrain`) of pretraining run `name`: an SSL size, or a calibration topline of
    params `toplines` (a size trained with the same recipe, masking and updates, and the topline's own
    objective and loss weight on the visible frames)."""
    topline = params.toplines.get(name)
    if topline is not None:
        own = {"objective": topline.objective, "unmasked_weight": topline.unmasked_weight}
        return topline.size, params.pretrain.model_copy(update={k: v for k, v in own.items() if v is not None})
    if name not in params.models:
        raise ValueError(f"no model size {name!r} in params `models` (have: {', '.join(params.models)}) "
                         f"and no topline {name!r} in params `toplines`")
    return name, params.pretrain


class PretrainWaves(WaveDataset):
    """Unlabeled waveforms, each with what its recipe needs beside it: the per-utterance targets of an objective
    that has them (`phones`) and, with `clean`, the utterance's clean rendering (itself when it has none)."""

    def __init__(self, rows: list[dict], corpus: Corpus, targets: torch.nn.Module, clean: bool = False):
        super().__init__([str(corpus.audio_path(r)) for r in rows], [r["duration"] for r in rows])
        self.ids = [r["id"] for r in rows]
        self.targets = targets if getattr(targets, "per_utterance", False) else None
        self.clean = [corpus.clean_path(r) for r in rows] if clean else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wav = super().__getitem__(i)
        extra = {}
        if self.targets is not None:
            extra["labels"] = self.targets.labels(self.ids[i], len(wav))
        if self.clean is not None:
            extra["clean"] = wav if self.clean[i] is None else self.load_clean(self.clean[i], len(wav))
        return wav, extra

    @staticmethod
    def load_clean(path: Path, samples: int) -> torch.Tensor:
        wav = load_wave(str(path))
        return torch.nn.functional.pad(wav, (0, max(0, samples - len(wav))))[:samples]  # telephone: +-1 sample

    @property
    def clean_share(self) -> float | None:
        """Share of the utterances whose targets come from a clean rendering (None: clean targets off)."""
        return None if self.clean is None else sum(c is not None for c in self.clean) / max(1, len(self.clean))


def collate_pretrain(items: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(waves, lengths, extras): the extras padded like the waves (labels with -1)."""
    from labelbudget.ssl import pad_labels

    wav, lengths = collate_waves([w for w, _ in items])
    extra = {}
    if "labels" in items[0][1]:
        extra["labels"] = pad_labels([e["labels"] for _, e in items])
    if "clean" in items[0][1]:
        extra["clean"] = collate_waves([e["clean"] for _, e in items])[0]
    return wav, lengths, extra


class StepData(L.LightningDataModule):
    """Batches of about `batch_seconds` of audio, `max_steps` of them, in an order fixed by the seed: a resumed
    run starts at the trainer's step and sees the batches the uninterrupted run would have."""

    def __init__(self, data: PretrainWaves, p: Pretrain, seed: int):
        super().__init__()
        self.data, self.p, self.seed = data, p, seed

    def train_dataloader(self):
        t, gpu = self.trainer, torch.cuda.is_available()
        sampler = StepBatchSampler(self.data.durations, self.p.batch_seconds, self.p.max_steps, self.seed,
                                   start_step=lambda: t.global_step, rank=t.global_rank, world_size=t.world_size)
        return torch.utils.data.DataLoader(self.data, batch_sampler=sampler, collate_fn=collate_pretrain,
                                           num_workers=4 if gpu else 0, pin_memory=gpu)


class Monitoring(Callback):
    """Runs `monitor` outside the training step; it must not touch the training's random stream, so an exact
    resume stays exact."""

    def __init__(self, monitor: Monitor):
        self.monitor, self.seconds, self.last, self.last_step, self.trained = monitor, 0.0, {}, -1, False

    def measure(self, trainer, pl_module) -> None:
        t = time.time()
        self.last = self.monitor(pl_module.encoder)
        self.seconds += time.time() - t
        self.last_step = trainer.global_step
        for lg in trainer.loggers:  # directly: a value logged between log_every_n_steps would be dropped
            lg.log_metrics(self.last, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, *_):
        self.trained = True
        if trainer.is_global_zero and trainer.global_step % self.monitor.every == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.trained and self.last_step != trainer.global_step:
            self.measure(trainer, pl_module)  # stopped by the time cap between two measurements


def pretrain(name: str, params: Params, out: Path, corpus_dir: Path = Path("data/corpus"),
             monitor: Monitor | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train run `name` (an SSL size or a topline, `run_spec`) and export `out/model.pt`. Checkpoints in
    `out/checkpoints` are resumed when they belong to the same configuration, code and data; otherwise they
    are discarded. `monitor`'s last values and the share of the training time it took land in the summary;
    `callbacks` are Lightning's (a test's crash, for one)."""
    size, p = run_spec(name, params)
    seed = params.seed
    cfg = EncoderConfig.from_params(params.models[size], params.features.n_mels)
    corpus = Corpus.load(corpus_dir)
    rows = corpus.read(corpus.unlabeled)
    last = fresh_checkpoints(out / "checkpoints", fingerprint(cfg, p, seed, corpus.manifest_path(corpus.unlabeled)))
    L.seed_everything(seed, workers=True, verbose=False)
    quantizer = make_targets(p.objective, rows, corpus, p, cfg, seed)
    # Where an utterance has no clean rendering, its targets come from itself.
    data = PretrainWaves(rows, corpus, quantizer, clean=p.clean_targets)
    if data.clean_share == 0:
        print(f"pretrain.clean_targets: corpus {corpus.dir} has no clean renderings ({CLEAN_DIR}/, the "
              "synthesized corpus only): targets come from the audio as stored", flush=True)
    precision = resolve_precision(str(p.precision))
    # Lightning refuses gradient clipping with a fused optimizer under mixed precision (CUDA bf16 crashed at
    # the first step): fused only for full-precision training.
    module = make_ssl_module(cfg, p, seed, quantizer, fused=precision in ("32-true", "32", 32))
    monitoring = Monitoring(monitor) if monitor is not None else None
    loggers = [CSVLogger(str(out / "logs"), name="", version="")]
    run = wandb_run(params, name, size, p, module) if rank_zero_only.rank == 0 else None
    if run is not None:
        loggers.append(tracking.lightning_logger(run))
    trainer = L.Trainer(
        max_steps=p.max_steps, max_epochs=-1, max_time={"minutes": p.max_minutes},
        precision=precision, gradient_clip_val=p.grad_clip,
        accelerator="auto", devices=p.devices, num_nodes=p.num_nodes, strategy=p.strategy,
        use_distributed_sampler=False, logger=loggers, enable_model_summary=False,
        log_every_n_steps=max(1, min(10, p.max_steps // 10)),
        callbacks=[ModelCheckpoint(dirpath=last.parent, every_n_train_steps=p.checkpoint_every, save_last=True,
                                   save_top_k=0), *callbacks, *([monitoring] if monitoring else [])],
    )
    wall = fit(trainer, module, StepData(data, p, seed), last, out, run)
    if trainer.global_rank != 0:
        return {}
    summary = summarize(trainer, module, name, size, p, out, wall, monitoring, data.clean_share)
    export(module, name, p.objective, trainer.global_step, out / "model.pt")
    write_json(out / "metrics.json", summary)
    return summary


def fresh_checkpoints(ckpt_dir: Path, fp: str) -> Path:
    """`ckpt_dir/last.ckpt`, after discarding checkpoints of another configuration, code or data (`fp`)."""
    stamp = ckpt_dir / "fingerprint.txt"
    if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != fp):
        shutil.rmtree(ckpt_dir)  # checkpoints of another config or data set must never be resumed
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp)
    return ckpt_dir / "last.ckpt"


def wandb_run(params: Params, name: str, size: str, p: Pretrain, module: L.LightningModule):
    if params.wandb.mode == "disabled":
        return None
    return tracking.init_run(params.wandb, job_type="pretrain", name=f"pretrain-{name}", config={
        **tracking.group_keys(params, name), "size": size, "objective": p.objective,
        "parameters": count_parameters(module.encoder), **module.cfg.to_dict(), **p.model_dump()})


def fit(trainer: L.Trainer, module: L.LightningModule, data: StepData, last: Path, out: Path, run) -> float:
    """Train (resuming from `last` if it exists); seconds it took. A diverged run keeps the curves that show
    the divergence and exports nothing."""
    start = time.time()
    hist = out / "logs" / "metrics.csv"
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    except NonFiniteLossError:
        trainer.loggers[0].save()  # the CSV log, flushed
        if hist.exists():
            shutil.copyfile(hist, out / "history.csv")
        (out / "model.pt").unlink(missing_ok=True)
        raise
    finally:
        if run is not None:
            tracking.finish(run)
    wall = time.time() - start
    trainer.save_checkpoint(str(last))  # the final state, so a longer run can resume (collective under DDP)
    return wall


def summarize(trainer: L.Trainer, module: L.LightningModule, name: str, size: str, p: Pretrain, out: Path,
              wall: float, monitoring: Monitoring | None, clean_share: float | None) -> dict:
    """The run's summary (metrics.json); history.csv holds the curves of the updates trained in this process."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    trained_now = bool(metrics)
    if not trained_now and (out / "history.csv").exists():
        metrics = last_logged(out / "history.csv")  # resumed at the end: nothing trained in this process
    if monitoring is not None and monitoring.last:
        metrics.update(monitoring.last)
        metrics["monitor_seconds"] = round(monitoring.seconds, 2)
        metrics["monitor_share"] = round(monitoring.seconds / max(wall, 1e-9), 4)  # of the wall time of fit
    summary = {"upstream": name, "size": size, "steps": trainer.global_step, "wall_seconds": round(wall, 1),
               "parameters": count_parameters(module.encoder), "objective": p.objective, **metrics}
    if clean_share is not None:
        summary["clean_target_share"] = round(clean_share, 4)
    hist = out / "logs" / "metrics.csv"
    if hist.exists() and trained_now:
        shutil.copyfile(hist, out / "history.csv")
    return summary


def last_logged(history: Path, prefixes: tuple[str, ...] = ("train/", "probe/")) -> dict[str, float]:
    """The last logged value of every `train/` (and monitor) column of a Lightning CSV log."""
    import csv

    out: dict[str, float] = {}
    with open(history, newline="") as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if k.startswith(prefixes) and v not in ("", None)})
    return out


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def export(module, size: str, objective: str, steps: int, path: Path) -> None:
    """Everything extraction needs, loadable with `torch.load(weights_only=True)`: tensors and plain types.
    Refuses (and writes nothing) when any weight is NaN or infinite."""
    bad = non_finite_tensors(module.encoder.state_dict()) + non_finite_tensors(module.head.state_dict())
    if bad:
        raise NonFiniteLossError(f"pretrain@{size}: {len(bad)} weight tensor(s) hold NaN/inf after {steps} "
                                 f"updates (e.g. {bad[:3]}); nothing exported to {path}")
    blob = {
        "format": FORMAT, "size": size, "objective": objective, "steps": steps,
        "encoder_config": module.cfg.to_dict(),
        "encoder": {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()},
        "quantizer": {k: v.detach().cpu() for k, v in module.quantizer.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in module.head.state_dict().items()},
        "stack": STACK,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
