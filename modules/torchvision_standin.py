"""A minimal stand-in for torchvision, installed only when the real one can't be imported.

Why: spandrel (the upscaler-model loader) imports torchvision at import time, but PyPI's torchvision
wheels don't import beside our torch CPU build (torch 2.13, see shared ENV-NOTES), and webui.sh installs
spandrel with `--no-deps` so pip never swaps our torch for another. spandrel 0.4.2 touches exactly three
names at import: `torchvision.transforms.functional.{InterpolationMode, rotate, normalize}` (LaMa and
RestoreFormer). Neither of those architectures is an upscaler, so `rotate` only has to exist; `normalize`
is small enough to be real.

When a real torchvision imports, nothing here is used.
"""
from __future__ import annotations

import sys
import types
from enum import Enum
from typing import Sequence

import torch

_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> torch.Tensor:
    """torchvision's normalize for (..., C, H, W) float tensors: (x - mean) / std per channel."""
    if not inplace:
        tensor = tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def rotate(*args, **kwargs):  # noqa: ANN002, ANN003 - signature is torchvision's; never called by Atelier
    raise NotImplementedError("torchvision is not installed: rotate() is only needed by LaMa inpainting models, "
                              "which Atelier does not run")


def _real_torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
        import torchvision.transforms.functional  # noqa: F401
        return True
    except Exception:  # a broken wheel raises RuntimeError/OSError as well as ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # drop half-imported modules so ours take their place cleanly
        return False


def ensure_torchvision() -> bool:
    """Make `import torchvision.transforms.functional` work. True when the stand-in was installed."""
    if isinstance(sys.modules.get("torchvision"), types.ModuleType) and getattr(
            sys.modules["torchvision"], "__atelier_standin__", False):
        return True
    if _real_torchvision_imports():
        return False
    root, transforms, functional = (types.ModuleType(name) for name in _NAMES)
    root.__atelier_standin__ = True  # type: ignore[attr-defined]
    root.__version__ = "0.0.0+atelier-standin"  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.normalize = normalize  # type: ignore[attr-defined]
    functional.rotate = rotate  # type: ignore[attr-defined]
    for name, module in zip(_NAMES, (root, transforms, functional)):
        module.__path__ = []  # type: ignore[attr-defined]  # a package, so submodule imports resolve here
        sys.modules[name] = module
    return True
