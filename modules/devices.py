"""The one place that chooses the compute device and dtypes.

CUDA: bf16 where the GPU supports it, else fp16; VAE falls back to fp32 on NaN (see vae_decode).
MPS: fp16. CPU: bf16 + channels_last when the CPU has native bf16 (AVX512-BF16 or AMX), else fp32.
`--precision full` / `--no-half` force fp32; `--no-half-vae` keeps the VAE in fp32.
`--medvram` / `--lowvram` set the offload mode (modules/offload.py does the moving); they mean nothing on
the CPU, where weights already live in RAM, so there they are dropped with a log line saying so.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

import torch

log = logging.getLogger(__name__)
OFFLOAD_MODES = ("none", "medvram", "lowvram")


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype
    channels_last: bool
    offload: str = "none"  # "medvram": one component on the device at a time; "lowvram": UNet blocks too

    @property
    def name(self) -> str:
        base = f"{self.device.type} {str(self.dtype).replace('torch.', '')}"
        return base if self.offload == "none" else f"{base} {self.offload}"

    @property
    def weights_device(self) -> torch.device:
        """Where weights rest between uses: the CPU when offloading, so loading never fills the GPU."""
        return torch.device("cpu") if self.offload != "none" else self.device


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_policy(use_cpu: bool = False, precision: str = "autocast", no_half: bool = False,
                  no_half_vae: bool = False, medvram: bool = False, lowvram: bool = False) -> DevicePolicy:
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
    return DevicePolicy(device, dtype, vae_dtype, channels_last, offload_mode(device, medvram, lowvram))


def offload_mode(device: torch.device, medvram: bool, lowvram: bool) -> str:
    wanted = "lowvram" if lowvram else "medvram" if medvram else "none"
    if wanted != "none" and device.type == "cpu":
        log.info("--%s ignored: the models run on the CPU, so their weights are in RAM already", wanted)
        return "none"
    return wanted


def configure_backend(policy: DevicePolicy) -> None:
    """Process-wide knobs that make the chosen device fast."""
    if policy.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif policy.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def free_memory(policy: DevicePolicy | None = None) -> None:
    """After a big release (a model dropped, an out-of-memory error): collect, then hand cached memory back,
    the device's and the RAM allocator's."""
    gc.collect()
    empty_device_cache()
    trim_ram()


def empty_device_cache() -> None:
    """The GPU allocator's cached blocks back to the driver, so the next big allocation can have them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def trim_ram() -> None:
    """glibc keeps freed memory for reuse rather than returning it: after checkpoint switches without a cache,
    RSS stayed at over twice one loaded model's size (bench/memory.py). malloc_trim gives it back."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None


def memory_stats() -> dict:
    import psutil

    rss = psutil.Process().memory_info().rss
    stats = {"ram": {"rss": rss, "total": psutil.virtual_memory().total, "free": psutil.virtual_memory().available}}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats["cuda"] = {"free": free, "total": total, "allocated": torch.cuda.memory_allocated(),
                         "peak": torch.cuda.max_memory_allocated()}
    return stats
