"""Preprocessors ("modules" in sd-webui-controlnet's API): an input image → the control map a ControlNet reads.

Names and sliders follow sd-webui-controlnet, so API clients and infotexts keep working. A map is a float32
array [H, W, 3] in 0..1; the inpaint preprocessors mark masked pixels with -1, as the inpaint ControlNet
was trained. Those needing no weights run on opencv and numpy; the rest run through the `controlnet_aux`
library when it is installed and their weight files are in models/ControlNet/annotators (nothing is ever
downloaded); otherwise they are listed as unavailable, naming the file they need.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from controlnet_models import ANNOTATORS

from modules import extension_api as api


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    minimum: float
    maximum: float
    step: float = 1

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Preprocessor Resolution", 512, 64, 2048)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    tag: str  # the control type it belongs to (sd-webui-controlnet's /controlnet/control_types)
    run: Optional[Callable[..., np.ndarray]]  # (rgb uint8 [H,W,3], a, b, mask) -> map float [H,W,3]
    sliders: tuple[Slider, ...] = ()  # threshold_a, threshold_b
    resolution: bool = True  # whether processor_res applies
    weights: tuple[str, ...] = ()  # files needed in models/ControlNet/annotators
    aux: Optional[tuple[str, str]] = None  # (controlnet_aux class, call style)
    uses_mask: bool = False
    aliases: tuple[str, ...] = field(default=())

    def defaults(self) -> tuple[float, float]:
        values = [s.value for s in self.sliders] + [0.0, 0.0]
        return float(values[0]), float(values[1])


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _rgb(single: np.ndarray) -> np.ndarray:
    return np.repeat(single[..., None], 3, axis=2).astype(np.float32) / 255.0


def run_none(img, a, b, mask):
    return img.astype(np.float32) / 255.0


def run_canny(img, a, b, mask):
    return _rgb(cv2.Canny(img, int(a), int(b)))


def run_invert(img, a, b, mask):
    return 1.0 - img.astype(np.float32) / 255.0


def run_binary(img, a, b, mask):
    """White lines on black, as scribble ControlNets expect; threshold 0 picks one by Otsu's method."""
    flags = cv2.THRESH_BINARY_INV | (cv2.THRESH_OTSU if int(a) <= 0 else 0)
    _, out = cv2.threshold(_gray(img), int(a), 255, flags)
    return _rgb(out)


def run_scribble_xdog(img, a, b, mask):
    """A difference of Gaussians, thresholded: rough scribbles from any picture."""
    x = img.astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)).clip(0, 255)
    out = np.zeros(dog.shape, np.uint8)
    out[2 * (255 - dog) > a] = 255
    return _rgb(out)


def run_lineart_standard(img, a, b, mask):
    """Lines from how much darker a pixel is than its blurred surroundings (sd-webui-controlnet's
    lineart_standard): a soft, model-free line drawing."""
    x = img.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), max(float(a), 0.1)) - x, axis=2).clip(0, 255)
    bright = intensity[intensity > 8]
    intensity = intensity / max(16.0, float(np.median(bright)) if bright.size else 16.0) * 127
    return _rgb(intensity.clip(0, 255).astype(np.uint8))


def run_tile_resample(img, a, b, mask):
    """Down-sample by `a`: the tile ControlNet adds back detail the blur removed."""
    rate = max(float(a), 1.0)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def run_shuffle(img, a, b, mask):
    """Content shuffle: pixels moved along smooth random flows (seeded, so a job repeats exactly)."""
    h, w = img.shape[:2]
    rng = np.random.default_rng(0)
    f = max(8, min(h, w) // 8)
    flows = []
    for size in (w, h):
        noise = rng.random((h // f + 2, w // f + 2)).astype(np.float32)
        flows.append(cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) * size)
    return cv2.remap(img, flows[0], flows[1], cv2.INTER_LINEAR).astype(np.float32) / 255.0


def run_inpaint(img, a, b, mask):
    out = img.astype(np.float32) / 255.0
    if mask is not None:
        out[mask > 127] = -1.0  # the inpaint ControlNet's "fill here" marker
    return out


_AUX = {  # name: (tag, controlnet_aux class, weight files)
    "depth_midas": ("Depth", "MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",)),
    "depth_leres": ("Depth", "LeresDetector", ("res101.pth",)),
    "normal_bae": ("NormalMap", "NormalBaeDetector", ("scannet.pt",)),
    "openpose": ("OpenPose", "OpenposeDetector", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "openpose_full": ("OpenPose", "OpenposeDetector", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "mlsd": ("MLSD", "MLSDdetector", ("mlsd_large_512_fp32.pth",)),
    "softedge_hed": ("SoftEdge", "HEDdetector", ("ControlNetHED.pth",)),
    "softedge_pidinet": ("SoftEdge", "PidiNetDetector", ("table5_pidinet.pth",)),
    "scribble_hed": ("Scribble/Sketch", "HEDdetector", ("ControlNetHED.pth",)),
    "lineart_realistic": ("Lineart", "LineartDetector", ("sk_model.pth", "sk_model2.pth")),
    "lineart_coarse": ("Lineart", "LineartDetector", ("sk_model.pth", "sk_model2.pth")),
    "lineart_anime": ("Lineart", "LineartAnimeDetector", ("netG.pth",)),
}

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("none", "All", run_none, resolution=False),
    Preprocessor("canny", "Canny", run_canny,
                 (Slider("Canny Low Threshold", 100, 1, 255), Slider("Canny High Threshold", 200, 1, 255))),
    Preprocessor("invert", "Scribble/Sketch", run_invert, aliases=("invert (from white bg & black line)",)),
    Preprocessor("binary", "Scribble/Sketch", run_binary, (Slider("Binary threshold", 0, 0, 255),)),
    Preprocessor("scribble_xdog", "Scribble/Sketch", run_scribble_xdog, (Slider("XDoG Threshold", 32, 1, 64),)),
    Preprocessor("lineart_standard", "Lineart", run_lineart_standard,
                 (Slider("Blur sigma", 6, 0.5, 20, 0.5),),
                 aliases=("lineart_standard (from white bg & black line)",)),
    Preprocessor("tile_resample", "Tile/Blur", run_tile_resample, (Slider("Down Sampling Rate", 1, 1, 8, 0.01),),
                 resolution=False),
    Preprocessor("shuffle", "Shuffle", run_shuffle),
    Preprocessor("inpaint_only", "Inpaint", run_inpaint, resolution=False, uses_mask=True,
                 aliases=("inpaint", "inpaint_global_harmonious")),
    *[Preprocessor(name, tag, None, weights=files, aux=(cls, name)) for name, (tag, cls, files) in _AUX.items()],
]}
_BY_ALIAS = {alias.lower(): p for p in PREPROCESSORS.values() for alias in (p.name, *p.aliases)}


def find_preprocessor(name: str) -> Preprocessor:
    preprocessor = _BY_ALIAS.get(str(name or "none").strip().lower())
    if preprocessor is None:
        raise ValueError(f"preprocessor '{name}' not found; available: {', '.join(PREPROCESSORS)}")
    return preprocessor


def annotators_dir() -> Path:
    return api.model_dir("ControlNet") / ANNOTATORS


def missing_files(preprocessor: Preprocessor) -> list[str]:
    """What keeps a preprocessor from running: the controlnet_aux library, or weight files."""
    if preprocessor.run is not None:
        return []
    missing = [f for f in preprocessor.weights if not (annotators_dir() / f).is_file()]
    if importlib.util.find_spec("controlnet_aux") is None:
        missing.insert(0, "the controlnet_aux Python package")
    return missing


def _run_aux(preprocessor: Preprocessor, img: np.ndarray, resolution: int) -> np.ndarray:
    missing = missing_files(preprocessor)
    if missing:
        raise ValueError(f"preprocessor '{preprocessor.name}' needs {', '.join(missing)} "
                         f"(weight files go in {annotators_dir()})")
    module = importlib.import_module("controlnet_aux")
    cls_name, style = preprocessor.aux  # type: ignore[misc]
    detector = getattr(module, cls_name).from_pretrained(str(annotators_dir()))
    kwargs = {"detect_resolution": resolution, "image_resolution": resolution, "output_type": "np"}
    if style == "openpose_full":
        kwargs.update(include_hand=True, include_face=True)
    if style == "lineart_coarse":
        kwargs["coarse"] = True
    if style == "scribble_hed":
        kwargs["scribble"] = True
    out = np.asarray(detector(img, **kwargs))
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out.astype(np.float32) / (255.0 if out.dtype == np.uint8 else 1.0)


def resize_short_side(img: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution`, as preprocessors see their input."""
    h, w = img.shape[:2]
    k = resolution / min(h, w)
    if resolution <= 0 or abs(k - 1) < 1e-6:
        return img
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def preprocess(name: str, img: np.ndarray, resolution: int = 512, a: Optional[float] = None,
               b: Optional[float] = None, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Run a preprocessor on an RGB uint8 image; -1 (or None) for a slider means its default."""
    preprocessor = find_preprocessor(name)
    da, db = preprocessor.defaults()
    a = da if a is None or a < 0 else a
    b = db if b is None or b < 0 else b
    resolution = int(resolution) if resolution and resolution > 0 else int(RESOLUTION.value)
    if preprocessor.resolution:
        img = resize_short_side(img, resolution)
        if mask is not None:
            mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    if preprocessor.run is None:
        return _run_aux(preprocessor, img, resolution)
    return preprocessor.run(np.ascontiguousarray(img), a, b, mask)


def module_detail(preprocessor: Preprocessor) -> dict:
    """/controlnet/module_list's module_detail entry (sd-webui-controlnet's shape)."""
    sliders = ([RESOLUTION.to_dict()] if preprocessor.resolution else []) + [s.to_dict() for s in preprocessor.sliders]
    detail = {"model_free": preprocessor.run is not None and not preprocessor.weights, "sliders": sliders}
    missing = missing_files(preprocessor)
    if missing:
        detail["unavailable"] = f"needs {', '.join(missing)} in {annotators_dir()}"
    return detail
