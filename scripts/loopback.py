"""Loopback (img2img): feed each result back in as the next init image, `loops` times.

The denoising strength moves from the request's value to `final_denoising_strength` along a curve:
Linear, Aggressive (fast at first: sin) or Lazy (slow at first: 1 − cos), as A1111 computes it. Each loop uses
the next seed. With n_iter > 1, each batch restarts from the original image and only its last image is kept.
A1111's script_args: [loops, final_denoising_strength, denoising_curve, append_interrogation]; interrogation
(CLIP / DeepBooru) isn't available in Atelier, so only "None" is accepted there.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from modules import image_saving
from modules.errors import ValidationError
from modules.request import GenerationRequest
from modules.builtin_scripts import (ScriptInterrupted, ScriptResult, add_infotext_params, fix_seed, run_job,
                                     save_grid)

if TYPE_CHECKING:
    from modules.engine import Engine

TITLE = "Loopback"
CURVES = ("Aggressive", "Linear", "Lazy")


def denoising_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """The strength for loop number `loop` (0-based) of `loops`."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


def run_loopback(engine: "Engine", request: GenerationRequest, loops: int = 4,
                 final_denoising_strength: float = 0.5, denoising_curve: str = "Linear",
                 append_interrogation: str = "None") -> ScriptResult:
    """Returns [grid of the loops (when more than one image), every kept image]."""
    request = request.validate()
    if not request.is_img2img:
        raise ValidationError("init_images", "Loopback works on an img2img request: give it an init image")
    if isinstance(loops, bool) or not isinstance(loops, int) or not 1 <= loops <= 32:
        raise ValidationError("loops", f"must be between 1 and 32, got {loops!r}")
    if not isinstance(final_denoising_strength, (int, float)) or not 0 <= final_denoising_strength <= 1:
        raise ValidationError("final_denoising_strength", f"must be between 0 and 1, got {final_denoising_strength!r}")
    if denoising_curve not in CURVES:
        raise ValidationError("denoising_curve", f"must be one of {', '.join(CURVES)}, got {denoising_curve!r}")
    if append_interrogation not in ("None", None, ""):
        raise ValidationError("append_interrogation", "interrogation (CLIP, DeepBooru) isn't available; use None")
    request = fix_seed(request)
    extras = {"Final denoising strength": final_denoising_strength, "Denoising curve": denoising_curve}
    result = ScriptResult(seed=request.seed)
    history: list[Image.Image] = []
    kept: list[tuple[Image.Image, str]] = []
    seed = request.seed
    for batch in range(request.n_iter):
        init = request.init_images
        strength = request.denoising_strength
        last = None
        for loop in range(loops):
            job = request.copy(init_images=init, n_iter=1, batch_size=1, seed=seed, denoising_strength=strength,
                               do_not_save_grid=True, inpainting_fill=request.inpainting_fill if loop == 0 else 1)
            try:
                output = run_job(engine, job)
            except ScriptInterrupted:
                result.interrupted = True
                break
            seed += 1
            strength = denoising_strength(loop + 1, loops, request.denoising_strength, final_denoising_strength,
                                          denoising_curve)
            last = (output.images[0], add_infotext_params(output.infotexts[0], extras))
            result.paths.extend(output.paths)
            init = [output.images[0]]
            if request.n_iter == 1:
                history.append(last[0])
                kept.append(last)
        if request.n_iter > 1 and last is not None and not result.interrupted:
            history.append(last[0])
            kept.append(last)
        if result.interrupted:
            break
    if len(history) > 1:
        grid = image_saving.make_grid(history, rows=1)
        info = kept[0][1] if kept else None
        path = save_grid(engine, request, grid, info)
        if path:
            result.paths.insert(0, path)
        if engine.option(request, "return_grid"):
            result.images.append(grid)
            result.infotexts.append(info or "")
    for image, info in kept:
        result.images.append(image)
        result.infotexts.append(info)
    return result


def run_from_args(engine: "Engine", request: GenerationRequest, args: Sequence[Any]) -> ScriptResult:
    """A1111's script_args: [loops, final_denoising_strength, denoising_curve, append_interrogation]."""
    a = list(args) + [None] * max(0, 4 - len(args))
    try:
        loops = int(a[0]) if a[0] is not None else 4
        final = float(a[1]) if a[1] is not None else 0.5
    except (TypeError, ValueError):
        raise ValidationError("script_args", f"loops and final_denoising_strength must be numbers, got {a[:2]}")
    return run_loopback(engine, request, loops, final, str(a[2] or "Linear"), str(a[3] or "None"))
