#!/usr/bin/env bash
# GPU check (about 5 minutes on one H100/H200):
#   1. the real stage scripts, end to end (corpus -> report), on a tiny configuration with every GPU path on:
#      bf16-mixed pretraining with gradient clipping, bf16 extraction, finetuning on the GPU. It runs the
#      commands of dvc.yaml in DAG order (benchmarks/run_stages.py), so it needs no DVC or Prefect;
#   2. throughput: bf16 pretraining steps/s and MFU, extraction.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR keeps the tiny run's report and timings
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export PYTHONPATH="$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 WANDB_MODE="${WANDB_MODE:-offline}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: CPU only"
python3 -c "import torch; print('torch', torch.__version__, 'bf16', torch.cuda.is_bf16_supported())"

echo "== end to end: stage scripts in DAG order on a tiny GPU configuration =="
work="$(mktemp -d)"
(cd "$repo" && git ls-files -z | xargs -0 -I{} cp --parents {} "$work/")
python3 - "$repo" "$work/params.yaml" <<'PY'
import sys, yaml
from pathlib import Path
from labelbudget.profiles import compose_plain
p = compose_plain(Path(sys.argv[1]), "smoke")
p["profile"] = "gpu-check"
p["corpus"]["synth"].update(unlabeled_hours=0.5, labeled_hours=0.3, test_utterances=20)
p["pretrain"].update(max_steps=200, warmup_steps=20, precision="auto", grad_clip=1.0, checkpoint_every=100)
p["extract"]["device"] = "auto"
p["finetune"].update(accelerator="auto", max_steps=600)
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
(cd "$work" && python3 benchmarks/run_stages.py --out "$out") 2>&1 | tail -n 60
cp -r "$work/reports/." "$out/" 2>/dev/null || true
for s in small large; do cp "$work/models/pretrain/$s/metrics.json" "$out/pretrain_$s.json" 2>/dev/null || true; done
grep -A8 "^## Findings" "$out/results.md" || echo "no report: see the stage output above"

if ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device: throughput checks skipped"; exit 0
fi
echo "== pretraining throughput, bf16 autocast (gpu profile sizes; paper 0.5B size) =="
cd "$here"
python3 pretrain_throughput.py --profile gpu --size small --device cuda --steps 20 --curve-steps 0 --no-save --wait-idle 0
python3 pretrain_throughput.py --profile gpu --size large --device cuda --steps 20 --curve-steps 0 --no-save --wait-idle 0
python3 pretrain_throughput.py --profile paper --size small --device cuda --steps 10 --curve-steps 0 --no-save --wait-idle 0
echo "== extraction (stage path vs naive) =="
python3 extraction_throughput.py --profile gpu --size large --device cuda --utterances 1500 --no-save --wait-idle 0
