"""Pretraining step throughput and model-FLOPs utilisation (MFU) against a GEMM peak measured in the same run.

    python benchmarks/pretrain_throughput.py --profile default --size large          # CPU, fp32
    python benchmarks/pretrain_throughput.py --profile gpu --size large --device cuda # GPU, bf16
"""

from __future__ import annotations

import argparse
import time

import torch
from common import encoder_flops, gemm_peak, load_profile, sync, synthetic_batch

from labelbudget.encoder import EncoderConfig, count_parameters
from labelbudget.logmel import LogMel
from labelbudget.ssl import make_ssl_module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--size", default="large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--utterance-seconds", type=float, default=4.0)
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="default: params pretrain.batch_seconds")
    args = ap.parse_args()
    params = load_profile(args.profile)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    p = dict(params["pretrain"])
    cfg = EncoderConfig.from_params(params["models"][args.size], params["features"]["n_mels"])
    module = make_ssl_module(cfg, p, seed=0).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    wav, lengths = synthetic_batch(args.utterance_seconds, args.batch_seconds or p["batch_seconds"], device)
    in_frames = int(LogMel.frames(wav.shape[1]))
    flops = encoder_flops(cfg, len(wav), in_frames, module.quantizer.num_targets)

    def step(k: int) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module.ssl_loss(wav, lengths, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for k in range(3):
        step(k)
    sync(device)
    t = time.perf_counter()
    for k in range(args.steps):
        loss = step(k)
    sync(device)
    dt = (time.perf_counter() - t) / args.steps
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = gemm_peak(device, dtype)
    audio = float(lengths.sum()) / 16000
    where = torch.cuda.get_device_name() if bf16 else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), {'bf16 autocast' if bf16 else 'fp32'}; model {args.size}: "
          f"{count_parameters(module.encoder) / 1e6:.1f}M encoder parameters; "
          f"batch {len(wav)} x {args.utterance_seconds:.0f} s")
    print(f"  step time        {dt * 1000:9.1f} ms  ({1 / dt:.2f} steps/s, {audio / dt:.0f} audio-s/s)")
    print(f"  model FLOPs/step {flops / 1e9:9.2f} GFLOP -> {flops / dt / 1e12:.3f} TFLOP/s")
    print(f"  GEMM peak        {peak / 1e12:9.3f} TFLOP/s ({dtype}, measured now)")
    print(f"  MFU              {flops / dt / peak * 100:9.1f} %   (last loss {float(loss):.3f}, finite: "
          f"{bool(torch.isfinite(loss))})")


if __name__ == "__main__":
    main()
