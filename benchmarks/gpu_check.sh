#!/usr/bin/env bash
# GPU check (under 5 minutes on one H100/H200): bf16 pretraining steps/s and MFU, extraction throughput.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'bf16', torch.cuda.is_bf16_supported())"
echo "== pretraining, bf16 autocast, AdamW (gpu profile sizes; paper 0.5B size) =="
python3 pretrain_throughput.py --profile gpu --size small --device cuda --steps 20
python3 pretrain_throughput.py --profile gpu --size large --device cuda --steps 20
python3 pretrain_throughput.py --profile paper --size small --device cuda --steps 10 --batch-seconds 960
echo "== extraction (stage path vs naive) =="
python3 extraction_throughput.py --profile gpu --size large --device cuda --utterances 1500 --no-rss
echo "== Lightning bf16-mixed pretraining steps =="
python3 - <<'PY'
import time, torch, lightning as L
from common import load_profile, synthetic_batch
from labelbudget.encoder import EncoderConfig
from labelbudget.ssl import make_ssl_module
p = load_profile("gpu"); cfg = EncoderConfig.from_params(p["models"]["large"])
pp = dict(p["pretrain"], max_steps=30, warmup_steps=5)
m = make_ssl_module(cfg, pp, 0)
wav, lens = synthetic_batch(4.0, 240, torch.device("cpu"))
data = torch.utils.data.DataLoader([(wav[i], lens[i]) for i in range(len(wav))] * 30, batch_size=len(wav))
tr = L.Trainer(max_steps=30, precision="bf16-mixed", accelerator="gpu", devices=1, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
t = time.time(); tr.fit(m, data); dt = time.time() - t
print(f"Lightning bf16-mixed: 30 steps in {dt:.1f} s (incl. start-up); loss {float(tr.callback_metrics['train/loss']):.3f}")
PY
