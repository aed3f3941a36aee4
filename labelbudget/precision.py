"""Numeric precision per device: bf16 autocast where the hardware runs it natively, fp32 elsewhere.

On CPUs with AMX or AVX512-BF16 (Sapphire Rapids and later, Zen 4) oneDNN runs bf16 matrix products natively,
several times faster than fp32; without them bf16 is emulated and slower than fp32, so `auto` keeps fp32 there.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def use_bf16(setting: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: `auto` = a GPU with bf16, or a CPU with native bf16."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()
