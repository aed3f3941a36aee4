"""The downstream CTC model trained on cached upstream features, the same recipe for every upstream.

features (frames, layers, dim) --CMVN per layer--> learned softmax-weighted layer sum (SUPERB) or one layer
  --> stack frames down to `frame_rate` (fbank 100 Hz -> 25 Hz, like the SSL encoders' 4x subsampling)
  --> SpecAugment (training only) --> Conv1d(k=3) projection [--> conv blocks] [--> BiLSTM] --> Linear
  --> character CTC at `upsample` x `frame_rate` (25 Hz alone is too coarse for fast speech's characters).

Training: AdamW with warm-up then a constant rate, multiplied by `lr_decay` at every dev evaluation without
improvement (newbob: the noise of a high rate would otherwise end runs on a false plateau). Dev CER every
`eval_every` steps; early stopping that starts counting only once the model has left the all-blank phase (CTC
models emit only blanks for their first steps, while dev CER is flat at 1.0); the best dev-CER weights are
kept. One rule for every upstream and budget: stop after `patience` evaluations without an improvement of at
least `min_delta`, or at the generous `max_steps`. A run stopped by patience has converged; one stopped by
`max_steps` has not (the report counts them), and one that never left the all-blank phase is degenerate.

Lightning is imported only inside the training function: evaluation needs nothing but torch.

Modules: config (params `finetune`), data (datasets and batches), model (the network, decoding,
checkpoints), training (the loop and its stopping rule), checks (inputs checked before training).
"""

from labelbudget.downstream.checks import LABELED_PART, check_compatible, check_ids, layer_index, open_part
from labelbudget.downstream.config import DownstreamInputError
from labelbudget.downstream.data import (
    BlockBatches,
    BucketBatchSampler,
    FeatureDataset,
    collate,
    feature_stats,
    sorted_batches,
)
from labelbudget.downstream.model import (
    BiLSTM,
    ConvBlock,
    DownstreamModel,
    ctc_loss,
    load_checkpoint,
    reverse_padded,
    save_checkpoint,
    transcribe,
)
from labelbudget.downstream.training import BlankAwareStopping, TrainResult, train, training_device

__all__ = [
    "BiLSTM", "BlankAwareStopping", "BlockBatches", "BucketBatchSampler", "ConvBlock",
    "DownstreamInputError", "DownstreamModel", "FeatureDataset", "LABELED_PART", "TrainResult",
    "check_compatible", "check_ids", "collate", "ctc_loss", "feature_stats", "layer_index", "load_checkpoint",
    "open_part", "reverse_padded", "save_checkpoint", "sorted_batches", "train", "training_device",
    "transcribe",
]
