"""The Lightning side of downstream training: the module and the dev-CER callback. Imported only by
`training.train`, so evaluation and transcription never load Lightning."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch

from labelbudget.downstream.data import FeatureDataset
from labelbudget.downstream.model import DownstreamModel, ctc_loss, transcribe

if TYPE_CHECKING:
    from labelbudget.downstream.training import BlankAwareStopping
    from labelbudget.schema import Finetune


class DevCER(pl.Callback):
    """Dev CER every `eval_every` steps, the best weights kept, newbob decay of the rate, early stopping after
    the all-blank phase (`stopper`)."""

    def __init__(self, cfg: Finetune, stopper: BlankAwareStopping, dev_set: FeatureDataset,
                 dev_texts: dict[str, str], verbose: bool = True):
        self.cfg, self.stopper, self.dev_set, self.verbose = cfg, stopper, dev_set, verbose
        self.dev_refs = [dev_texts[i] for i in dev_set.ids]
        self.dev_ref_chars = sum(len(r) for r in self.dev_refs)
        self.best_state: dict | None = None
        self.stopped_early = False
        self.non_finite = False
        self.lr_scale = 1.0
        self.history: list[dict] = []

    def scores(self, model: DownstreamModel) -> tuple[float, float, float]:
        """(CER, WER, output share: hypothesis characters per reference character) on the dev set."""
        from labelbudget.metrics import total, utterance_counts

        hyps = transcribe(model, self.dev_set)
        hyp_list = [hyps[i] for i in self.dev_set.ids]
        c = total(utterance_counts(self.dev_refs, hyp_list))
        out_share = sum(len(h) for h in hyp_list) / max(1, self.dev_ref_chars)
        return c.char_errors / max(1, c.chars), c.word_errors / max(1, c.words), out_share

    def evaluate(self, trainer: pl.Trainer, lit: LitDownstream) -> None:
        step = trainer.global_step
        cer, wer, out_share = self.scores(lit.model)
        improved, stop = self.stopper.update(step, cer, out_share)
        if not improved and self.stopper.left_blank_step is not None:
            self.lr_scale *= self.cfg.lr_decay
        if improved:
            self.best_state = copy.deepcopy(lit.model.state_dict())
        loss = trainer.callback_metrics.get("train/loss")
        row = {"step": step, "dev_cer": cer, "dev_wer": wer, "dev_output_share": out_share,
               "lr_scale": self.lr_scale, "train_loss": float(loss) if loss is not None else None}
        self.history.append(row)
        if trainer.logger is not None:
            weights = lit.model.layer_weights().detach().tolist()
            trainer.logger.log_metrics({"dev/cer": cer, "dev/wer": wer, "dev/output_share": out_share,
                                        **{f"layer_weight/{k}": w for k, w in enumerate(weights)}}, step=step)
        if self.verbose:
            print(f"step {step:5d}  loss {row['train_loss'] or float('nan'):7.3f}  dev CER {cer:.3f}  "
                  f"WER {wer:.3f}  output {out_share:.2f}" + ("  *" if improved else ""), flush=True)
        if stop:
            self.stopped_early = True
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, lit: LitDownstream, *_) -> None:
        step = trainer.global_step
        if step % self.cfg.eval_every == 0 or step >= self.cfg.max_steps:
            self.evaluate(trainer, lit)


class LitDownstream(pl.LightningModule):
    """CTC training of a DownstreamModel; the rate follows the warm-up and the dev callback's decay."""

    def __init__(self, model: DownstreamModel, cfg: Finetune, dev: DevCER):
        super().__init__()
        self.model, self.cfg, self.dev = model, cfg, dev

    def training_step(self, batch: dict, _: int) -> torch.Tensor | None:
        log_probs, lens = self.model(batch["feats"], batch["lengths"])
        loss = ctc_loss(log_probs, lens, batch["targets"], batch["target_lengths"])
        if not torch.isfinite(loss):  # stop: a NaN step would destroy the weights
            self.dev.non_finite = True
            self.trainer.should_stop = True
            return None
        self.log("train/loss", loss, batch_size=len(batch["ids"]))
        return loss

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def schedule(step: int) -> float:  # warm-up, then constant until dev CER stalls (DevCER)
            return min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * self.dev.lr_scale

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
