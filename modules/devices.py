"""The one place that chooses the compute device and dtypes.

CUDA: bf16 where the GPU supports it, else fp16; VAE falls back to fp32 on NaN (see vae_decode).
MPS: fp16. CPU: bf16 + channels_last when the CPU has native bf16 (AVX512-BF16 or AMX), else fp32.
`--precision full` / `--no-half` force fp32; `--no-half-vae` keeps the VAE in fp32.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype
    channels_last: bool

    @property
    def name(self) -> str:
        return f"{self.device.type} {str(self.dtype).replace('torch.', '')}"


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_policy(use_cpu: bool = False, precision: str = "autocast", no_half: bool = False,
                  no_half_vae: bool = False) -> DevicePolicy:
    full = precision == "full" or no_half
    if not use_cpu and torch.cuda.is_available():
        device = torch.device("cuda")
        dtype = torch.float32 if full else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        channels_last = False
    elif not use_cpu and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = torch.device("mps")
        dtype = torch.float32 if full else torch.float16
        channels_last = False
    else:
        device = torch.device("cpu")
        dtype = torch.bfloat16 if (cpu_has_native_bf16() and not full) else torch.float32
        channels_last = dtype == torch.bfloat16
    vae_dtype = torch.float32 if no_half_vae else dtype
    return DevicePolicy(device, dtype, vae_dtype, channels_last)


def configure_backend(policy: DevicePolicy) -> None:
    """Process-wide knobs that make the chosen device fast."""
    if policy.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif policy.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def free_memory(policy: DevicePolicy | None = None) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def memory_stats() -> dict:
    import psutil

    rss = psutil.Process().memory_info().rss
    stats = {"ram": {"rss": rss, "total": psutil.virtual_memory().total, "free": psutil.virtual_memory().available}}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats["cuda"] = {"free": free, "total": total, "allocated": torch.cuda.memory_allocated(),
                         "peak": torch.cuda.max_memory_allocated()}
    return stats
