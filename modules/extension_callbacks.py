"""Callbacks that extensions register (`on_ui_tabs`, `on_cfg_denoiser`, ...) and the code that runs them.

Extensions register at import time; the loader says which extension is importing (`loading`), so every
callback knows its owner. Running a callback never raises: a failure is logged with the extension's name and
traceback and kept in `app_failures` (app-level callbacks) or in the job's `JobErrors` (per-job callbacks,
which are then off for the rest of that job).

The denoise-loop callbacks (`on_cfg_denoiser`, `on_cfg_denoised`, `add_denoise_hook`) are bridged onto the
loop's hook points (modules/sampling.py) by `attach_denoise_hooks`, which the engine calls on each job's copy
of `Engine.hooks`.
"""
from __future__ import annotations

import contextlib
import logging
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from modules.progress import Interrupted, Skipped
from modules.sampling import HOOK_POINTS, DenoiseState, Hooks
from modules.text_encoding import Conditioning

log = logging.getLogger(__name__)

# Callback kinds that run. A1111 has more; `ACCEPTED_ONLY` are stored so extensions import and load, but
# Atelier never calls them (their UI or model internals don't exist here).
KINDS = ("app_started", "ui_tabs", "ui_settings", "model_loaded", "before_image_saved", "image_saved",
         "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "infotext_pasted", "script_unloaded",
         "denoise_hook", "before_component", "after_component")
ACCEPTED_ONLY = ("before_ui", "ui_train_tabs", "image_grid",
                 "before_reload", "list_optimizers", "list_unets", "extra_noise", "before_token_counter",
                 "denoiser", "beta_schedule")


@dataclass
class Owner:
    """Who registered something: the extension's name (or "" for the app itself) and the script file."""

    extension: str = ""
    path: Optional[Path] = None  # the extension's folder
    script: Optional[Path] = None  # the file being imported

    @property
    def label(self) -> str:
        return f"extension '{self.extension}'" if self.extension else "built-in code"


@dataclass
class Callback:
    kind: str
    fn: Callable[..., Any]
    owner: Owner
    point: Optional[str] = None  # for denoise hooks: the hook point

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


@dataclass
class Failure:
    """One failure of extension code: shown on the job (or the Extensions tab) and logged with its traceback."""

    extension: str
    where: str  # "process() of script 'Prompt suffix'", "on_ui_tabs callback ui_tab", ...
    message: str  # "ValueError: boom"
    traceback: str

    def __str__(self) -> str:
        owner = f"extension '{self.extension}'" if self.extension else "built-in code"
        return f"{owner} failed in {self.where}: {self.message}"


# -- registry -------------------------------------------------------------------------------------------

_callbacks: dict[str, list[Callback]] = defaultdict(list)
_loading = Owner()
app_failures: list[Failure] = []  # failures outside jobs (loading, UI and app callbacks); newest last
MAX_APP_FAILURES = 200


@contextlib.contextmanager
def loading(owner: Owner) -> Iterator[Owner]:
    """While an extension's script is imported, what it registers belongs to it."""
    global _loading
    previous, _loading = _loading, owner
    try:
        yield owner
    finally:
        _loading = previous


def current_owner() -> Owner:
    return _loading


def add_callback(kind: str, fn: Callable[..., Any], point: Optional[str] = None) -> None:
    if not callable(fn):
        raise TypeError(f"{kind} callback must be callable, got {fn!r}")
    if kind not in KINDS and kind not in ACCEPTED_ONLY:
        raise ValueError(f"unknown callback kind '{kind}'")
    if kind in ACCEPTED_ONLY:
        log.info("%s registered on_%s, which Atelier accepts but never calls", _loading.label, kind)
    _callbacks[kind].append(Callback(kind, fn, _loading, point))


def callbacks(kind: str) -> list[Callback]:
    return list(_callbacks.get(kind, ()))


def remove_extension_callbacks(extension: str) -> None:
    for kind in list(_callbacks):
        _callbacks[kind] = [cb for cb in _callbacks[kind] if cb.owner.extension != extension]


def clear() -> None:
    """Forget every callback (extensions are being unloaded)."""
    _callbacks.clear()


def record_failure(extension: str, where: str, error: BaseException) -> Failure:
    """Log an app-level failure with its traceback and keep it for the Extensions tab."""
    failure = Failure(extension, where, f"{type(error).__name__}: {error}",
                      "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    log.error("%s\n%s", failure, failure.traceback)
    app_failures.append(failure)
    del app_failures[:-MAX_APP_FAILURES]
    return failure


def _run_app(kind: str, *args: Any) -> list[tuple[Callback, Any]]:
    """Call every `kind` callback; failures are recorded, never raised. Returns (callback, result) pairs."""
    results = []
    for cb in callbacks(kind):
        try:
            with loading(cb.owner):  # what a callback registers (a setting, say) is its extension's too
                results.append((cb, cb.fn(*args)))
        except Exception as e:
            record_failure(cb.owner.extension, f"on_{kind} callback {cb.name}", e)
    return results


# -- per-job failures -----------------------------------------------------------------------------------

class JobErrors:
    """Failures of extension code during one job. Whatever failed is off for the rest of the job; the job
    goes on. `notes` are the job's user-visible notes (GenerationResult.notes)."""

    def __init__(self, notes: Optional[list[str]] = None):
        self.notes = notes if notes is not None else []
        self.failures: list[Failure] = []
        self._off: set[int] = set()

    def is_off(self, key: object) -> bool:
        return id(key) in self._off

    def call(self, key: object, extension: str, where: str, fn: Callable[..., Any], *args: Any,
             **kwargs: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) when `key` is off or fails now (then it is reported and off)."""
        if id(key) in self._off:
            return False, None
        try:
            return True, fn(*args, **kwargs)
        except (Interrupted, Skipped):
            raise
        except Exception as e:
            self.fail(key, extension, where, e)
            return False, None

    def fail(self, key: object, extension: str, where: str, error: BaseException) -> Failure:
        self._off.add(id(key))
        failure = Failure(extension, where, f"{type(error).__name__}: {error}",
                          "".join(traceback.format_exception(type(error), error, error.__traceback__)))
        self.failures.append(failure)
        self.notes.append(f"{failure}; it is off for the rest of this job")
        log.error("%s\n%s", failure, failure.traceback)
        return failure


# -- params given to callbacks (A1111's classes and field names) -----------------------------------------

@dataclass
class UiTab:
    """A tab an extension adds (on_ui_tabs): the Gradio Blocks it built, its title and element id."""

    component: Any
    title: str
    elem_id: str
    extension: str


@dataclass
class ImageSaveParams:
    """on_before_image_saved / on_image_saved. Before saving, `image` and `pnginfo` may be replaced; `filename`
    is the target folder then, and the saved file's path after."""

    image: Any  # PIL image
    p: Any  # the ProcessingContext, or None outside a scripted job
    filename: str
    pnginfo: dict[str, Any]


@dataclass
class CFGDenoiserParams:
    """on_cfg_denoiser, once per step before the UNet. Assign `x` (UNet input latents, one row per image),
    `text_cond` or `text_uncond` (cross-attention tensors) to change what the UNet sees."""

    x: Any
    image_cond: Any
    sigma: Any  # the scheduler's timestep (Atelier runs diffusers schedulers)
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None
    state: Optional[DenoiseState] = None  # Atelier's full step state (unet_kwargs, pass_name, ...)


@dataclass
class CFGDenoisedParams:
    """on_cfg_denoised / on_cfg_after_cfg, once per step after guidance: `x` is the guided noise prediction
    (A1111 calls on_cfg_denoised before combining cond and uncond; Atelier has one point, after)."""

    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any = None
    state: Optional[DenoiseState] = None


AfterCFGCallbackParams = CFGDenoisedParams


# -- the denoise-loop bridge ----------------------------------------------------------------------------

def attach_denoise_hooks(hooks: Hooks, errors: JobErrors) -> None:
    """Bridge this job's on_cfg_* callbacks and denoise hooks onto `hooks` (a job's copy of Engine.hooks)."""
    denoiser = callbacks("cfg_denoiser")
    denoised = callbacks("cfg_denoised") + callbacks("cfg_after_cfg")
    if denoiser:
        hooks.add("cfg_denoiser", lambda state: _cfg_denoiser(state, denoiser, errors))
    if denoised:
        hooks.add("cfg_denoised", lambda state: _cfg_denoised(state, denoised, errors))
    for cb in callbacks("denoise_hook"):
        hooks.add(cb.point, lambda state, cb=cb: errors.call(cb, cb.owner.extension, f"denoise hook {cb.name} "
                                                                f"({cb.point})", cb.fn, state))


def _cfg_denoiser(state: DenoiseState, registered: list[Callback], errors: JobErrors) -> None:
    params = CFGDenoiserParams(state.model_input, state.image_conditioning, state.timestep, state.step,
                               state.total_steps, state.cond.context, state.uncond.context, None, state)
    for cb in registered:
        errors.call(cb, cb.owner.extension, f"on_cfg_denoiser callback {cb.name}", cb.fn, params)
    state.model_input = params.x
    if params.text_cond is not state.cond.context:
        state.cond = Conditioning(params.text_cond, state.cond.pooled, state.cond.parts)
    if params.text_uncond is not state.uncond.context:
        state.uncond = Conditioning(params.text_uncond, state.uncond.pooled, state.uncond.parts)


def _cfg_denoised(state: DenoiseState, registered: list[Callback], errors: JobErrors) -> None:
    params = CFGDenoisedParams(state.noise_pred, state.step, state.total_steps, None, state)
    for cb in registered:
        errors.call(cb, cb.owner.extension, f"on_{cb.kind} callback {cb.name}", cb.fn, params)
    state.noise_pred = params.x


def add_denoise_hook(point: str, fn: Callable[[DenoiseState], None]) -> None:
    if point not in HOOK_POINTS:
        raise ValueError(f"unknown hook point '{point}'; valid: {', '.join(HOOK_POINTS)}")
    add_callback("denoise_hook", fn, point)


# -- runners the app calls ------------------------------------------------------------------------------

def run_app_started(app: Any, demo: Any = None) -> None:
    """After the FastAPI app (and the UI, if any) exist: extensions add routes here. `demo` is None with
    --nowebui. Call it once, in server.create_app."""
    _run_app("app_started", demo, app)


def run_ui_tabs() -> list[UiTab]:
    """Tabs extensions build; call inside no Blocks (each callback makes its own) and render each `component`
    inside a gr.Tab(title, elem_id=elem_id)."""
    tabs = []
    for cb, result in _run_app("ui_tabs"):
        for item in result or ():
            try:
                component, title, elem_id = item[0], item[1], item[2]
            except (TypeError, IndexError) as e:
                record_failure(cb.owner.extension, f"on_ui_tabs callback {cb.name} (returned {item!r}, not "
                                                   "(blocks, title, elem_id))", e)
                continue
            tabs.append(UiTab(component, str(title), str(elem_id), cb.owner.extension))
    return tabs


def run_ui_settings() -> None:
    _run_app("ui_settings")


def run_model_loaded(sd_model: Any) -> None:
    _run_app("model_loaded", sd_model)


def run_infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """After an infotext is parsed for pasting: extensions may add or change `params` in place."""
    _run_app("infotext_pasted", infotext, params)


def run_script_unloaded() -> None:
    _run_app("script_unloaded")


def run_before_image_saved(params: ImageSaveParams, errors: Optional[JobErrors] = None) -> None:
    _run_for_job("before_image_saved", errors, params)


def run_image_saved(params: ImageSaveParams, errors: Optional[JobErrors] = None) -> None:
    _run_for_job("image_saved", errors, params)


def _run_for_job(kind: str, errors: Optional[JobErrors], *args: Any) -> None:
    if errors is None:
        _run_app(kind, *args)
        return
    for cb in callbacks(kind):
        errors.call(cb, cb.owner.extension, f"on_{kind} callback {cb.name}", cb.fn, *args)


# -- registration functions (public through modules.extension_api and modules.script_callbacks) ----------

def on_app_started(callback: Callable[[Any, Any], None]) -> None:
    """callback(demo, app): add FastAPI routes to `app`; `demo` is the Gradio Blocks or None (API only)."""
    add_callback("app_started", callback)


def on_ui_tabs(callback: Callable[[], list]) -> None:
    """callback() -> [(gr.Blocks, title, elem_id), ...]: tabs to add to the UI."""
    add_callback("ui_tabs", callback)


def on_ui_settings(callback: Callable[[], None]) -> None:
    """callback(): declare settings (shared.opts.add_option or extension_api.register_settings)."""
    add_callback("ui_settings", callback)


def on_before_component(callback: Callable[..., None]) -> None:
    """callback(component, **kwargs): before each Gradio component of the UI is built, with its constructor's
    keyword arguments (kwargs.get("elem_id")); modules/ui/component_hooks.py calls it."""
    add_callback("before_component", callback)


def on_after_component(callback: Callable[..., None]) -> None:
    """callback(component, **kwargs): after each Gradio component of the UI is built (A1111's way to find
    "txt2img_prompt" and wire events to it)."""
    add_callback("after_component", callback)


def on_model_loaded(callback: Callable[[Any], None]) -> None:
    """callback(sd_model): a checkpoint was loaded; sd_model is a read-only ModelInfo."""
    add_callback("model_loaded", callback)


def on_before_image_saved(callback: Callable[[ImageSaveParams], None]) -> None:
    add_callback("before_image_saved", callback)


def on_image_saved(callback: Callable[[ImageSaveParams], None]) -> None:
    add_callback("image_saved", callback)


def on_cfg_denoiser(callback: Callable[[CFGDenoiserParams], None]) -> None:
    add_callback("cfg_denoiser", callback)


def on_cfg_denoised(callback: Callable[[CFGDenoisedParams], None]) -> None:
    add_callback("cfg_denoised", callback)


def on_cfg_after_cfg(callback: Callable[[CFGDenoisedParams], None]) -> None:
    add_callback("cfg_after_cfg", callback)


def on_infotext_pasted(callback: Callable[[str, dict], None]) -> None:
    """callback(infotext, params): change the parsed `params` dict in place."""
    add_callback("infotext_pasted", callback)


def on_script_unloaded(callback: Callable[[], None]) -> None:
    add_callback("script_unloaded", callback)


def accepted_only(kind: str) -> Callable[[Callable[..., Any]], None]:
    """A registration function for an A1111 callback Atelier stores but never calls."""
    def register(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        add_callback(kind, callback)

    register.__name__ = f"on_{kind}"
    return register
