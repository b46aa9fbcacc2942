"""The built-in scripts (scripts/*.py): their registry by A1111 title, and what they share.

    run_script(engine, request)            # request.script_name / request.script_args, as /sdapi/v1/txt2img has them
    find_script("x/y/z plot", is_img2img)  # -> BuiltinScript (ValidationError naming script_name if unknown)

Each script lives in scripts/<name>.py with a plain entry point (run_xyz_plot, run_prompts_from_file,
run_sd_upscale, run_loopback) and a `run_from_args(engine, request, script_args)` adapter taking A1111's
script_args order. A script never touches models: it builds GenerationRequests and submits them to the
engine's queue one job at a time, so progress, interrupt and saving work as for a plain generation. It waits
for its jobs, so call it from a request thread, never from inside a job (the worker thread).
"""
from __future__ import annotations

import importlib
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from PIL import Image

from modules import image_saving
from modules.errors import AtelierError, GenerationError, ValidationError
from modules.infotext import quote
from modules.jobs import JobState
from modules.request import GenerationRequest

if TYPE_CHECKING:
    from modules.engine import Engine, JobOutput

WORKER_THREAD_NAME = "atelier-jobs"  # modules/jobs.py names its worker thread so
MAX_SEED = 4294967294  # A1111's fix_seed draws from range(4294967294)


# --------------------------------------------------------------------------- what scripts share


@dataclass
class ScriptResult:
    """A script's output, in A1111's Processed order: grids first, then the single images, each with its infotext."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # files saved by the script and by its jobs
    errors: list[str] = field(default_factory=list)  # parts that failed while the rest went on
    interrupted: bool = False
    seed: Optional[int] = None  # the first seed actually used


class JobFailed(GenerationError):
    """A job the script submitted failed; the message is the job's error."""


class ScriptInterrupted(AtelierError):
    """The user interrupted (or cancelled) one of the script's jobs; the script stops there."""

    def __init__(self, output: Optional["JobOutput"]):
        super().__init__("interrupted")
        self.output = output


def run_job(engine: "Engine", request: GenerationRequest, timeout: Optional[float] = None) -> "JobOutput":
    """Submit one request, wait for it, and return its output; raises JobFailed or ScriptInterrupted."""
    if threading.current_thread().name == WORKER_THREAD_NAME:
        raise RuntimeError("scripts submit jobs and wait for them, so they can't run on the job worker thread")
    if request.script_name:  # a script's own jobs never start the script again
        request = request.copy(script_name=None, script_args=[])
    job = engine.generate(request, timeout)
    if job.state == JobState.done:
        return job.result
    if job.state in (JobState.interrupted, JobState.cancelled):
        raise ScriptInterrupted(job.result)
    raise JobFailed(job.error or f"job ended {job.state.value}")


def fix_seed(request: GenerationRequest) -> GenerationRequest:
    """A1111's fix_seed: -1 seeds become concrete random ones, so every job of a script shares them."""
    changes = {}
    if request.seed == -1:
        changes["seed"] = random.randrange(MAX_SEED)
    if request.subseed == -1:
        changes["subseed"] = random.randrange(MAX_SEED)
    return request.copy(**changes) if changes else request


def add_infotext_params(text: str, params: dict[str, object]) -> str:
    """Append `Key: value` pairs to an infotext's parameter line (before `Version`, where A1111 keeps extras)."""
    if not params or not text:
        return text
    extra = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    head, _, last = text.rpartition("\n")
    marker = ", Version: "
    if marker in last:
        before, _, version = last.rpartition(marker)
        last = f"{before}, {extra}{marker}{version}"
    else:
        last = f"{last}, {extra}" if last else extra
    return f"{head}\n{last}" if head else last


def output_kind(request: GenerationRequest) -> str:
    return "img2img" if request.is_img2img else "txt2img"


def save_grid(engine: "Engine", request: GenerationRequest, grid: Image.Image, infotext: Optional[str],
              basename: str = "grid") -> Optional[Path]:
    """Save a script's grid where the engine saves grids (`<basename>-NNNN.png`), if grid saving is on."""
    if request.do_not_save_grid or not engine.option(request, "grid_save"):
        return None
    folder = image_saving.dated_folder(engine.paths.outputs_dir, f"{output_kind(request)}-grids")
    return image_saving.save_image(grid, folder, seed=None, infotext=infotext,
                                   extension=str(engine.settings.get("grid_format")), basename=basename)


def save_sample(engine: "Engine", request: GenerationRequest, image: Image.Image, seed: Optional[int],
                infotext: Optional[str]) -> Optional[Path]:
    """Save an image a script assembled itself (SD upscale's result) where samples go, if sample saving is on."""
    if request.do_not_save_samples or not engine.option(request, "samples_save"):
        return None
    kind = output_kind(request)
    custom = engine.settings.get(f"outdir_{kind}_samples")
    folder = Path(custom) if custom else image_saving.dated_folder(engine.paths.outputs_dir, f"{kind}-images")
    return image_saving.save_image(image, folder, seed=seed, infotext=infotext,
                                   extension=str(engine.option(request, "samples_format")))


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class BuiltinScript:
    title: str  # A1111's title; the API matches script_name to it case-insensitively
    module: str  # where run_from_args lives
    txt2img: bool
    img2img: bool
    args: tuple[str, ...]  # A1111's script_args order

    @property
    def run_from_args(self) -> Callable[["Engine", GenerationRequest, Sequence[Any]], "ScriptResult"]:
        return importlib.import_module(self.module).run_from_args

    def run(self, engine: "Engine", request: GenerationRequest, script_args: Sequence[Any]) -> "ScriptResult":
        return self.run_from_args(engine, request, script_args)


BUILTIN_SCRIPTS: tuple[BuiltinScript, ...] = (
    BuiltinScript("Prompts from file or textbox", "scripts.prompts_from_file", True, True,
                  ("checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt")),
    BuiltinScript("X/Y/Z plot", "scripts.xyz_grid", True, True,
                  ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
                   "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
                   "no_fixed_seeds", "margin_size", "csv_mode")),
    BuiltinScript("Loopback", "scripts.loopback", False, True,
                  ("loops", "final_denoising_strength", "denoising_curve", "append_interrogation")),
    BuiltinScript("SD upscale", "scripts.sd_upscale", False, True,
                  ("info", "overlap", "upscaler_index", "scale_factor")),
)


def list_scripts() -> dict[str, list[str]]:
    """/sdapi/v1/scripts' shape: lower-case titles per tab."""
    return {"txt2img": [s.title.lower() for s in BUILTIN_SCRIPTS if s.txt2img],
            "img2img": [s.title.lower() for s in BUILTIN_SCRIPTS if s.img2img]}


def find_script(script_name: str, is_img2img: bool) -> BuiltinScript:
    wanted = (script_name or "").strip().lower()
    for script in BUILTIN_SCRIPTS:
        if script.title.lower() == wanted:
            if not (script.img2img if is_img2img else script.txt2img):
                tab = "img2img" if script.img2img else "txt2img"
                raise ValidationError("script_name", f"{script.title!r} is an {tab} script")
            return script
    names = list_scripts()["img2img" if is_img2img else "txt2img"]
    raise ValidationError("script_name", f"unknown script {script_name!r}; available: {', '.join(names)}")


def run_script(engine: "Engine", request: GenerationRequest) -> "ScriptResult":
    """Run the script a request names, with its script_args; the request's own script fields are cleared."""
    script = find_script(request.script_name or "", request.is_img2img)
    return script.run(engine, request.copy(script_name=None, script_args=[]), list(request.script_args or []))
