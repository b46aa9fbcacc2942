"""Model upscalers (ESRGAN, Real-ESRGAN, DAT, SwinIR, HAT, ...) loaded with spandrel, run in blended tiles.

Files: any .pth/.pt/.safetensors in models/ESRGAN, RealESRGAN, DAT, SwinIR or HAT. Each joins the upscaler
registry (`modules.upscaling`) under its file stem; when the stem doesn't tell the scale ("4x-UltraSharp" and
"RealESRGAN_x4plus" do), it is appended: "MyModel (4x)".

Loading is safe: tensors come from our own reader (safetensors, or a pickle through weights_only=True) and
spandrel only detects the architecture from the state dict (`ModelLoader.load_from_state_dict`); its own
pickle loader is never used. One model stays loaded at a time.

Tiling: the image is cut into `ESRGAN_tile`-sized tiles that overlap by `ESRGAN_tile_overlap` pixels. Each
tile is run with the same overlap of extra context around it, and neighbouring tiles are cross-faded with
linear ramps over their overlap, so seams don't show and the result is close to an untiled run. Finished rows
go straight into a uint8 output, so only one band of tiles is ever held in float.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from PIL import Image

from modules import devices, safe_loading, upscaling
from modules.devices import DevicePolicy
from modules.errors import CheckpointError
from modules.model_files import scan
from modules.safe_loading import read_state_dict
from modules.paths import Paths
from modules.settings import Settings

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

log = logging.getLogger(__name__)

UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors")
MAX_PASSES = 3  # A1111: a model is applied at most three times to reach the wanted size
# "4x-UltraSharp", "4x_foolhardy_Remacri", "RealESRGAN_x4plus", "ESRGAN_4x", "2xNomosUni": a scale in the name.
_SCALE_IN_NAME = re.compile(r"(?i)(?<![a-z0-9])(?:(\d{1,2})x|x(\d{1,2}))")


# --------------------------------------------------------------------------- files and names


def scale_in_name(stem: str) -> Optional[int]:
    """The scale a file name states ("4x-UltraSharp" -> 4, "RealESRGAN_x2plus" -> 2), or None."""
    match = _SCALE_IN_NAME.search(stem)
    if not match:
        return None
    scale = int(match.group(1) or match.group(2))
    return scale if 1 <= scale <= 16 else None


def display_name(stem: str, scale: int) -> str:
    return stem if scale_in_name(stem) is not None else f"{stem} ({scale}x)"


def import_spandrel():  # noqa: ANN201 - the module
    """spandrel, importable even where torchvision isn't (see modules/torchvision_standin.py)."""
    from modules.torchvision_standin import ensure_torchvision

    ensure_torchvision()
    import spandrel

    return spandrel


def read_upscaler_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an upscaler file, read safely, unwrapped from `params_ema`/`params`/`state_dict`/... nesting."""
    canonicalize_state_dict = import_spandrel().canonicalize_state_dict
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return canonicalize_state_dict(read_state_dict(path))
    # A pickle: weights_only, as read_state_dict does, but keep the nesting spandrel knows how to unwrap
    # (read_state_dict flattens to top-level tensors, and Real-ESRGAN files keep theirs under "params_ema").
    data = safe_loading.load_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: the file holds no state dict")
    return canonicalize_state_dict(data)


def load_descriptor(path: Path, policy: DevicePolicy) -> "ImageModelDescriptor":
    """The spandrel model for a file, on the policy's device in the dtype `choose_dtype` picks, in eval mode."""
    spandrel = import_spandrel()
    path = Path(path)
    state_dict = read_upscaler_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(f"{path.name}: not a model architecture spandrel recognises") from None
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path.name}: weights don't fit their detected architecture ({e})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        kind = getattr(descriptor, "purpose", type(descriptor).__name__)
        raise CheckpointError(f"{path.name}: a {descriptor.architecture.name} {kind} model, not an upscaler")
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        raise CheckpointError(f"{path.name}: {descriptor.input_channels}-channel models are not supported")
    descriptor.to(policy.device)
    descriptor.to(choose_dtype(descriptor, policy))
    descriptor.eval()
    return descriptor


def choose_dtype(descriptor: Any, policy: DevicePolicy) -> torch.dtype:
    """The policy's dtype when the architecture supports it (spandrel says which), else the best it does, else fp32.

    On the CPU the policy is fp32 unless the CPU has native bf16, so models run in fp32 there unless both the
    CPU and the architecture support bf16."""
    wanted = policy.dtype
    if wanted == torch.float16 and descriptor.supports_half:
        return torch.float16
    if wanted in (torch.float16, torch.bfloat16) and descriptor.supports_bfloat16:
        if policy.device.type != "cuda" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------- tiled inference


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """A1111's split_grid placement: as few tiles as keep at least `overlap` between neighbours, spread evenly."""
    if tile <= 0 or length <= tile:
        return [0]
    overlap = min(overlap, tile - 1)
    count = math.ceil((length - overlap) / (tile - overlap))
    if count <= 1:
        return [0]
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramps(starts: list[int], size: int, scale: int) -> list[np.ndarray]:
    """Per tile, weights along one axis in output pixels: 1 inside, linear ramps where a neighbour overlaps."""
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(size * scale, dtype=np.float32)
        if i > 0:
            n = (starts[i - 1] + size - start) * scale
            if n > 0:
                w[:n] = np.minimum(w[:n], (np.arange(n, dtype=np.float32) + 0.5) / n)
        if i < len(starts) - 1:
            n = (start + size - starts[i + 1]) * scale
            if n > 0:
                w[-n:] = np.minimum(w[-n:], 1 - (np.arange(n, dtype=np.float32) + 0.5) / n)
        weights.append(w)
    return weights


def _run_model(descriptor: Any, pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 in [0, 1] -> (h*s, w*s, 3) float32, through the model in its own dtype and device."""
    param = next(descriptor.model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    if descriptor.input_channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.inference_mode():
        y = descriptor(x.to(param.device, param.dtype))
    y = y[0].float().cpu()
    if y.shape[0] == 1:
        y = y.expand(3, -1, -1)
    return y.permute(1, 2, 0).numpy()


def upscale_array(descriptor: Any, image: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """One pass of the model over a (H, W, 3) uint8 image, tiled when `tile` > 0; returns (H*s, W*s, 3) uint8."""
    ModelTiling = import_spandrel().ModelTiling  # noqa: N806

    height, width = image.shape[:2]
    scale = int(descriptor.scale)
    if descriptor.tiling == ModelTiling.INTERNAL:
        tile = 0
    tile_w = min(tile, width) if tile > 0 else width
    tile_h = min(tile, height) if tile > 0 else height
    overlap = max(0, min(overlap, tile_w - 1, tile_h - 1)) if tile > 0 else 0
    xs, ys = tile_starts(width, tile_w, overlap), tile_starts(height, tile_h, overlap)
    wx, wy = _ramps(xs, tile_w, scale), _ramps(ys, tile_h, scale)
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)

    band_top = 0  # output rows from band_top on are still being accumulated
    acc = np.zeros((0, width * scale, 3), dtype=np.float32)
    wsum = np.zeros((0, width * scale, 1), dtype=np.float32)
    for row, y0 in enumerate(ys):
        bottom = (y0 + tile_h) * scale
        grow = bottom - band_top - acc.shape[0]
        if grow > 0:
            acc = np.concatenate([acc, np.zeros((grow, width * scale, 3), np.float32)])
            wsum = np.concatenate([wsum, np.zeros((grow, width * scale, 1), np.float32)])
        cy0, cy1 = max(0, y0 - overlap), min(height, y0 + tile_h + overlap)  # tile plus context
        for col, x0 in enumerate(xs):
            cx0, cx1 = max(0, x0 - overlap), min(width, x0 + tile_w + overlap)
            result = _run_model(descriptor, image[cy0:cy1, cx0:cx1].astype(np.float32) / 255.0)
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            core = result[oy:oy + tile_h * scale, ox:ox + tile_w * scale]
            weight = (wy[row][:, None] * wx[col][None, :])[..., None]
            top = y0 * scale - band_top
            acc[top:top + tile_h * scale, x0 * scale:(x0 + tile_w) * scale] += core * weight
            wsum[top:top + tile_h * scale, x0 * scale:(x0 + tile_w) * scale] += weight
        done = (ys[row + 1] * scale if row + 1 < len(ys) else height * scale) - band_top
        finished = acc[:done]  # normalised in place: these rows are complete
        finished /= np.maximum(wsum[:done], 1e-8)
        finished *= 255.0
        finished += 0.5
        np.clip(finished, 0, 255, out=finished)
        out[band_top:band_top + done] = finished  # numpy casts (truncates) to uint8 here
        acc, wsum = acc[done:], wsum[done:]
        band_top += done
    return out


# --------------------------------------------------------------------------- the loaded model


@dataclass(frozen=True)
class _Key:
    path: Path
    mtime_ns: int
    size: int
    device: str
    dtype: torch.dtype


class ModelUpscalers:
    """Runs model upscalers for the registry: one model loaded at a time, tile settings read on every run."""

    def __init__(self, policy: DevicePolicy, settings: Optional[Settings] = None):
        self.policy = policy
        self.settings = settings or Settings()
        self._lock = threading.RLock()
        self._key: Optional[_Key] = None
        self._descriptor: Any = None
        self._scales: dict[tuple[Path, int, int], int] = {}  # detected scale per file version

    def _file_key(self, path: Path) -> tuple[Path, int, int]:
        stat = path.stat()
        return path, stat.st_mtime_ns, stat.st_size

    def descriptor(self, path: Path) -> Any:
        """The loaded model for `path`, loading it (and releasing any other) when needed."""
        path = Path(path)
        with self._lock:
            try:
                file_key = self._file_key(path)
            except OSError:
                raise CheckpointError(f"upscaler file not found: {path}") from None
            if self._key is not None and (self._key.path, self._key.mtime_ns, self._key.size) == file_key:
                return self._descriptor
            self.release()  # one model at a time: free the old one before reading the new
            descriptor = load_descriptor(path, self.policy)
            param = next(descriptor.model.parameters())
            self._key = _Key(path, file_key[1], file_key[2], str(param.device), param.dtype)
            self._descriptor = descriptor
            self._scales[file_key] = int(descriptor.scale)
            log.info("loaded upscaler %s (%s, %sx, %s)", path.name, descriptor.architecture.name, descriptor.scale,
                     str(param.dtype).replace("torch.", ""))
            return descriptor

    def release(self) -> None:
        with self._lock:
            if self._descriptor is None:
                return
            self._descriptor = None
            self._key = None
            devices.free_memory(self.policy)

    @property
    def loaded_path(self) -> Optional[Path]:
        return self._key.path if self._key else None

    def detect_scale(self, path: Path) -> int:
        """The model's scale, from a cache by file version, else by loading it (on the CPU, then dropped)."""
        key = self._file_key(path)
        if key not in self._scales:
            if self._key is not None and self._key.path == path:
                self._scales[key] = int(self._descriptor.scale)
            else:
                cpu = DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, False)
                self._scales[key] = int(load_descriptor(path, cpu).scale)
        return self._scales[key]

    def upscale(self, path: Path, image: Image.Image, width: int, height: int) -> Image.Image:
        """A1111's Upscaler.upscale: apply the model until the image covers (width, height), at most three times
        (at least once), then Lanczos to exactly that size."""
        tile = int(self.settings.get("ESRGAN_tile"))
        overlap = int(self.settings.get("ESRGAN_tile_overlap"))
        with self._lock:
            descriptor = self.descriptor(path)
            img = image.convert("RGB")
            for _ in range(MAX_PASSES):
                before = img.size
                img = Image.fromarray(upscale_array(descriptor, np.asarray(img), tile, overlap))
                if img.size == before or (img.width >= width and img.height >= height):
                    break
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.LANCZOS)
        return img


# --------------------------------------------------------------------------- the registry


_runtime: Optional[ModelUpscalers] = None
_registered: set[str] = set()  # names this module put in the registry


def runtime() -> Optional[ModelUpscalers]:
    return _runtime


def model_files(paths: Paths) -> list[Path]:
    found: list[Path] = []
    for folder in paths.upscaler_dirs:
        found.extend(scan(folder, UPSCALER_EXTENSIONS))
    return found


def refresh_model_upscalers(paths: Paths, policy: DevicePolicy,
                            settings: Optional[Settings] = None) -> list[upscaling.Upscaler]:
    """Rescan the upscaler folders and (re)register every model found; drop those that are gone.

    Files whose name doesn't state a scale are loaded once to learn it (cached by file version); a file that
    isn't an upscaler spandrel knows is skipped with a warning. Returns the model upscalers now registered."""
    global _runtime
    if _runtime is None or _runtime.policy != policy:
        if _runtime is not None:
            _runtime.release()
        _runtime = ModelUpscalers(policy, settings)
    elif settings is not None:
        _runtime.settings = settings
    run = _runtime
    found: list[upscaling.Upscaler] = []
    taken = {u["name"] for u in upscaling.list_upscalers() if u["name"] not in _registered}
    for path in model_files(paths):
        scale = scale_in_name(path.stem)
        if scale is None:
            try:
                scale = run.detect_scale(path)
            except (CheckpointError, OSError) as e:
                log.warning("skipped upscaler %s: %s", path, e)
                continue
        name = display_name(path.stem, scale)
        if name in taken:  # same stem in two folders, or a built-in's name
            name = f"{name} ({path.parent.name})"
        if name in taken:
            log.warning("skipped upscaler %s: the name %r is taken", path, name)
            continue
        taken.add(name)
        found.append(upscaling.Upscaler(name, scale, _runner(run, path), str(path)))
    for name in _registered - {u.name for u in found}:
        upscaling.unregister(name)
    _registered.clear()
    for upscaler in found:
        upscaling.register(upscaler)
        _registered.add(upscaler.name)
    if run.loaded_path is not None and all(Path(u.model_path or "") != run.loaded_path for u in found):
        run.release()
    return found


def _runner(run: ModelUpscalers, path: Path):
    return lambda image, width, height: run.upscale(path, image, width, height)


def release_models() -> None:
    """Free the loaded upscaler model (the next run loads it again)."""
    if _runtime is not None:
        _runtime.release()
