"""Opt-in speed knobs from A1111's "Optimizations" settings: torch.compile of the UNet, and token merging.

Both change the loaded UNet, so both live here, next to each other, with their undo.
"""
from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from typing import Iterator

import torch

from modules.errors import GenerationError, ValidationError

log = logging.getLogger(__name__)

TOKEN_MERGING_KEY = "Token merging ratio"  # A1111's infotext key


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile can't be used here, or None. Inductor on the CPU writes and builds C++."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
    except ImportError:
        return "torch._dynamo is missing"
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "no C++ compiler found (inductor needs one on the CPU)"
    return None


def compile_unet(model) -> bool:
    """Compile the UNet's forward in place (nn.Module.compile), so the module, its names and its hooks stay
    the same object: weight patches, attention hooks and offload hooks keep working. The first image after
    a load (and after each new size) pays for the compile."""
    reason = compile_unavailable_reason(model.policy.device)
    if reason:
        log.warning("unet_compile is on but skipped: %s", reason)
        return False
    if getattr(model.unet, "_compiled_call_impl", None) is not None:
        return True
    model.unet.compile(dynamic=False)
    log.info("UNet set to compile with torch.compile on its first call (the first image will be slow)")
    return True


def check_ratio(ratio: object) -> float:
    """A token merging ratio from settings or a request's override_settings."""
    field = "override_settings.token_merging_ratio"
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, type(None))):
        raise ValidationError(field, f"must be a number, got {ratio!r}")
    ratio = float(ratio or 0.0)
    if not 0.0 <= ratio <= 0.9:  # tomesd's own limit is below 1; A1111's slider stops at 0.9
        raise ValidationError(field, f"must be within 0..0.9, got {ratio}")
    return ratio


def apply_token_merging(unet: torch.nn.Module, ratio: float) -> bool:
    """Merge redundant tokens in the UNet's self-attention (tomesd). Returns whether a patch is on.

    Settings as A1111 uses them: no random token choice (it would make the same seed give different images),
    self-attention only, 2×2 strides."""
    ratio = check_ratio(ratio)
    if ratio <= 0:
        remove_token_merging(unet)
        return False
    try:
        import tomesd
    except ImportError:
        raise GenerationError("token merging needs tomesd (.venv/bin/pip install tomesd==0.1.3), "
                              "or set token_merging_ratio to 0") from None
    tomesd.apply_patch(unet, ratio=ratio, use_rand=False, sx=2, sy=2, merge_attn=True, merge_crossattn=False,
                       merge_mlp=False)
    return True


def remove_token_merging(unet: torch.nn.Module) -> None:
    if has_token_merging(unet):
        import tomesd

        tomesd.remove_patch(unet)


def has_token_merging(unet: torch.nn.Module) -> bool:
    # remove_patch restores the block classes and drops the hooks but leaves `_tome_info` behind: check both.
    return any(type(m).__name__ == "ToMeBlock" or (m.__dict__.get("_tome_info") or {}).get("hooks")
               for m in unet.modules())


@contextmanager
def token_merging(unet: torch.nn.Module, ratio: float) -> Iterator[bool]:
    """Token merging for one job: on when ratio > 0, always off again afterwards."""
    try:
        yield apply_token_merging(unet, ratio)
    finally:
        remove_token_merging(unet)
