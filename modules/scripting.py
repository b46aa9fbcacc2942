"""Scripts: A1111's `Script` classes from extensions, and the runner that calls their hooks for a job.

A script is selectable (the "Script" dropdown, `script_name` in the API: its `run()` replaces the normal
generation) or always-on (`show()` returns `AlwaysVisible`: its hooks run in every job, with the arguments from
the request's `alwayson_scripts`, or its defaults). One `ScriptRunner` per tab (txt2img, img2img) holds one
instance of each script, as in A1111; `ScriptRunner.for_job` binds a job's arguments and failures.

Arguments travel as A1111's flat `script_args` list: index 0 is the selected script (0 = none, i = the i-th
selectable one), then each always-on script's arguments, then each selectable one's, each script owning
`script_args[args_from:args_to]`. How many arguments a script takes, and their defaults, come from its
`api_args` declaration or else from the components its `ui()` returns (read by duck typing: `.value`,
`.label`, `.minimum`, ...; the core never imports gradio).
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from modules.errors import AtelierError, ValidationError
from modules.extension_callbacks import JobErrors, record_failure

if TYPE_CHECKING:
    from modules.processing_context import ProcessingContext, Processed
    from modules.request import GenerationRequest

log = logging.getLogger(__name__)


class _AlwaysVisible:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()  # what show() returns for an always-on script (A1111: scripts.AlwaysVisible)


class ScriptError(AtelierError):
    """A selected script's run() failed; the message names the script and its extension."""


@dataclass
class ScriptArg:
    """One argument of a script, as /sdapi/v1/script-info shows it. `name` lets API clients pass arguments
    by name: alwayson_scripts: {"my script": {"args": {"strength": 0.5}}}. `check(value)`, if given, runs when a
    request arrives and raises ValueError for a value the script can't use: the API answers 422 naming the
    argument, instead of the job failing later. What it returns (unless None) is what the script receives, so a
    value parsed there (images decoded, say) isn't parsed again in the job."""

    label: str = ""
    value: Any = None  # the default
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: Optional[list[Any]] = None
    name: Optional[str] = None
    check: Optional[Callable[[Any], Any]] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": self.choices}


@dataclass
class PostprocessImageArgs:
    """postprocess_image(p, pp, *args): replace `pp.image` to change the image before it is saved."""

    image: Any


@dataclass
class PostprocessBatchListArgs:
    """postprocess_batch_list(p, pp, *args, batch_number): `pp.images` is the batch as a list of float tensors
    [3, H, W] in 0..1. Change, remove or add entries (tensors, [H, W, 3] uint8 arrays or PIL images); a script
    that changes how many there are also sets p.prompts, p.negative_prompts, p.seeds and p.subseeds to match."""

    images: list[Any]


class Script:
    """Base class of a script (A1111's `modules.scripts.Script`). Subclass it in an extension's `scripts/*.py`.

    Override `title()` and `show()`; `ui()` returns Gradio components whose values become the script's
    arguments (`*args` below, in order). Hooks, in the order they run for a job (always-on scripts only;
    a selectable script gets `run()` instead):

        setup(p, *args)                    before anything else
        before_process(p, *args)           before seeds and prompts are set up
        process(p, *args)                  p.all_prompts / all_seeds are set: rewrite them here
        before_process_batch(p, *args, batch_number, prompts, seeds, subseeds)
        process_batch(p, *args, batch_number, prompts, seeds, subseeds)
        process_before_every_sampling(p, *args, x, noise, c, uc)   before each sampling pass (first, hires)
        before_hr(p, *args)                before the hires pass (after the upscale), then the call above
        postprocess_batch(p, *args, images, batch_number)     images: float tensor [B, 3, H, W] in 0..1
        postprocess_batch_list(p, pp, *args, batch_number)    pp.images: the batch as a list, may change length
        postprocess_image(p, pp, *args)    pp.image: the PIL image about to get its infotext and be saved
        postprocess(p, processed, *args)   after the last batch

    `p` is a ProcessingContext (A1111's field names). Raising in a hook reports the error with the
    extension's name and turns the script off for the rest of the job; the job goes on.
    While the UI is built, `before_component(component, **kwargs)` / `after_component(...)` run around every
    Gradio component of this script's tab, with the component's constructor arguments (`kwargs.get("elem_id")`),
    as in A1111 (modules/ui/component_hooks.py).
    """

    # Set by the runner (A1111's attributes).
    filename: Optional[str] = None
    extension: str = ""  # the extension this script came from ("" for built-in scripts/)
    args_from: Optional[int] = None
    args_to: Optional[int] = None
    alwayson: bool = False
    is_txt2img: bool = False
    is_img2img: bool = False
    tabname: Optional[str] = None
    group: Any = None
    create_group: bool = True
    infotext_fields: Optional[list] = None  # [(component, "Infotext key"), ...] for pasting
    paste_field_names: Optional[list] = None
    api_info: Any = None
    section: Optional[str] = None
    sorting_priority: int = 0
    controls: Any = None
    # Declared arguments: typed defaults for the API without building the UI (see ScriptArg).
    api_args: Optional[Sequence[ScriptArg]] = None

    def title(self) -> str:
        """The name shown in the UI and used by the API (case-insensitively)."""
        raise NotImplementedError(f"{type(self).__name__} must define title()")

    def show(self, is_img2img: bool) -> Any:
        """False: hidden on this tab; True: in the Script dropdown; AlwaysVisible: always on."""
        return True

    def ui(self, is_img2img: bool) -> Optional[list[Any]]:
        """Build Gradio components (inside the caller's Blocks) and return them: their values are *args."""
        return None

    def run(self, p: "ProcessingContext", *args: Any) -> Optional["Processed"]:
        """Selectable scripts: do the job, usually by calling process_images(p) (maybe several times)."""
        return None

    def setup(self, p: "ProcessingContext", *args: Any) -> None: ...
    def before_process(self, p: "ProcessingContext", *args: Any) -> None: ...
    def process(self, p: "ProcessingContext", *args: Any) -> None: ...
    def before_process_batch(self, p: "ProcessingContext", *args: Any, **kwargs: Any) -> None: ...
    def process_batch(self, p: "ProcessingContext", *args: Any, **kwargs: Any) -> None: ...
    def process_before_every_sampling(self, p: "ProcessingContext", *args: Any, **kwargs: Any) -> None: ...
    def before_hr(self, p: "ProcessingContext", *args: Any) -> None: ...
    def postprocess_batch(self, p: "ProcessingContext", *args: Any, **kwargs: Any) -> None: ...
    def postprocess_batch_list(self, p: "ProcessingContext", pp: PostprocessBatchListArgs, *args: Any,
                               **kwargs: Any) -> None: ...
    def postprocess_image(self, p: "ProcessingContext", pp: PostprocessImageArgs, *args: Any) -> None: ...
    def postprocess(self, p: "ProcessingContext", processed: "Processed", *args: Any) -> None: ...

    def before_component(self, component: Any, **kwargs: Any) -> None:
        """Before each component of this tab is built; `kwargs` are its constructor's (elem_id, label, ...)."""

    def after_component(self, component: Any, **kwargs: Any) -> None:
        """After each component of this tab is built: find one by kwargs.get("elem_id") and wire events to it."""

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """A1111's element ids: txt2img_script_<title>_<item_id>."""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"{'img2img' if self.is_img2img else 'txt2img'}_script_{title}_{item_id}"


@dataclass
class ScriptClass:
    """A Script subclass found in a loaded file."""

    cls: type
    path: Path
    extension: str = ""


def _check(arg: ScriptArg, value: Any, field_name: str) -> Any:
    """The value the script receives: `value`, or what its check made of it."""
    if arg.check is None:
        return value
    try:
        checked = arg.check(value)
    except ValueError as e:
        raise ValidationError(field_name, str(e)) from None
    return value if checked is None else checked


def args_from_components(components: Any) -> list[ScriptArg]:
    """A script's arguments as its ui() components describe them (label, default, range, choices)."""
    if components is None:
        return []
    if isinstance(components, dict):
        components = list(components.values())
    args = []
    for component in components:
        choices = getattr(component, "choices", None)
        if choices is not None:  # Gradio keeps (display, value) pairs
            choices = [c[1] if isinstance(c, (tuple, list)) and len(c) == 2 else c for c in choices]
        args.append(ScriptArg(label=str(getattr(component, "label", "") or ""), value=getattr(component, "value", None),
                              minimum=getattr(component, "minimum", None), maximum=getattr(component, "maximum", None),
                              step=getattr(component, "step", None), choices=choices))
    return args


def _throwaway_ui() -> Any:
    """Where a script's ui() may build components outside the app's UI (to learn its arguments): a Blocks of
    the Gradio the extension itself imported. The core never imports gradio."""
    gradio = sys.modules.get("gradio")
    return gradio.Blocks(analytics_enabled=False) if gradio is not None else contextlib.nullcontext()


class ScriptRunner:
    """One tab's scripts (A1111's scripts_txt2img / scripts_img2img), one instance of each."""

    def __init__(self, classes: Sequence[ScriptClass], is_img2img: bool):
        self.is_img2img = is_img2img
        self.alwayson_scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        for entry in classes:
            script = self._instantiate(entry)
            if script is None:
                continue
            try:
                visibility = script.show(is_img2img)
            except Exception as e:
                record_failure(entry.extension, f"show() of {entry.cls.__name__} ({entry.path.name})", e)
                continue
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif visibility:
                self.selectable_scripts.append(script)
        self.alwayson_scripts.sort(key=lambda s: s.sorting_priority)
        self._specs: dict[int, list[ScriptArg]] = {}
        self._layout_done = False

    def _instantiate(self, entry: ScriptClass) -> Optional[Script]:
        try:
            script = entry.cls()
            script.filename, script.extension = str(entry.path), entry.extension
            script.is_img2img, script.is_txt2img = self.is_img2img, not self.is_img2img
            script.tabname = "img2img" if self.is_img2img else "txt2img"
            script.title()  # a script without a title can't be listed
            return script
        except Exception as e:
            record_failure(entry.extension, f"creating script {entry.cls.__name__} ({entry.path.name})", e)
            return None

    # -- listing ----------------------------------------------------------------------------------------
    @property
    def scripts(self) -> list[Script]:
        return self.alwayson_scripts + self.selectable_scripts

    @property
    def titles(self) -> list[str]:
        return [s.title() for s in self.selectable_scripts]

    def find(self, name: str, alwayson: bool) -> Optional[Script]:
        """A script by title, case-insensitively (how A1111's API names scripts)."""
        wanted = name.strip().lower()
        for script in (self.alwayson_scripts if alwayson else self.selectable_scripts):
            if script.title().lower() == wanted:
                return script
        return None

    def arg_spec(self, script: Script) -> list[ScriptArg]:
        """The script's arguments: declared `api_args`, else read from the components its ui() returns."""
        if id(script) not in self._specs:
            if script.api_args is not None:
                spec = list(script.api_args)
            else:
                try:
                    with _throwaway_ui():
                        spec = args_from_components(script.ui(self.is_img2img))
                except Exception as e:
                    record_failure(script.extension, f"ui() of script '{script.title()}'", e)
                    spec = []
            self._specs[id(script)] = spec
        return self._specs[id(script)]

    def use_ui_components(self, script: Script, components: Any) -> None:
        """The UI built this script's components (call once per script, in the order of `scripts`): their
        values are its arguments, unless the script declares `api_args`."""
        if script.api_args is None:
            self._specs[id(script)] = args_from_components(components)
            self._layout_done = False

    def prepare(self) -> None:
        """Read every script's arguments (api_args or ui()) and place them in script_args."""
        self._layout()

    def _layout(self) -> None:
        if self._layout_done:
            return
        position = 1  # 0 is the selected script's index
        for script in self.scripts:
            script.args_from = position
            position += len(self.arg_spec(script))
            script.args_to = position
        self._layout_done = True

    def script_info(self) -> list[dict[str, Any]]:
        """/sdapi/v1/script-info entries for this tab."""
        return [{"name": s.title().lower(), "is_alwayson": s.alwayson, "is_img2img": self.is_img2img,
                 "args": [a.to_dict() for a in self.arg_spec(s)]} for s in self.scripts]

    # -- a request's arguments ------------------------------------------------------------------------
    def validate(self, request: "GenerationRequest") -> None:
        """Refuse unknown script names and malformed arguments, naming the field (for the API's preflight)."""
        self.script_args(request)

    def script_args(self, request: "GenerationRequest") -> list[Any]:
        """The flat A1111 script_args for a request: defaults, then what the request gives."""
        given = self._requested(request)
        self._layout()
        args: list[Any] = [0]
        for script in self.scripts:
            args.extend(a.value for a in self.arg_spec(script))
        for script, values, field_name in given:
            if not script.alwayson:
                args[0] = self.selectable_scripts.index(script) + 1
            self._fill(args, script, values, field_name)
        return args

    def _requested(self, request: "GenerationRequest") -> list[tuple[Script, Any, str]]:
        """(script, its given arguments, field name) for the selected script and each named always-on one."""
        found = []
        if request.script_name:
            script = self.find(request.script_name, alwayson=False)
            if script is None:
                raise ValidationError("script_name", f"script {request.script_name!r} not found; available: "
                                                     f"{', '.join(self.titles) or 'none'}")
            found.append((script, request.script_args or [], "script_args"))
        if not isinstance(request.alwayson_scripts, dict):
            raise ValidationError("alwayson_scripts", "must be an object: {script name: {\"args\": [...]}}")
        for name, entry in request.alwayson_scripts.items():
            script = self.find(str(name), alwayson=True)
            if script is None:
                known = ", ".join(s.title().lower() for s in self.alwayson_scripts) or "none"
                raise ValidationError(f"alwayson_scripts.{name}", f"always-on script not found; available: {known}")
            values = entry.get("args", []) if isinstance(entry, dict) else entry
            field_name = f"alwayson_scripts.{name}.args"
            if not isinstance(values, (list, tuple, dict)):
                raise ValidationError(field_name, "must be a list of the script's arguments (or an object by name)")
            found.append((script, values, field_name))
        return found

    def _fill(self, args: list[Any], script: Script, given: Any, field_name: str) -> None:
        spec = self.arg_spec(script)
        if isinstance(given, dict):  # by name (declared api_args) or label
            for key, value in given.items():
                index = next((i for i, a in enumerate(spec) if key in (a.name, a.label)), None)
                if index is None:
                    raise ValidationError(f"{field_name}.{key}", f"script '{script.title()}' has no argument "
                                                                 f"named {key!r}")
                args[script.args_from + index] = _check(spec[index], value, f"{field_name}.{key}")
            return
        if len(given) > len(spec):
            raise ValidationError(field_name, f"script '{script.title()}' takes {len(spec)} argument(s), "
                                              f"got {len(given)}")
        checked = [_check(spec[index], value, f"{field_name}.{index}") for index, value in enumerate(given)]
        args[script.args_from:script.args_from + len(given)] = checked  # the rest keep their defaults

    def for_job(self, request: "GenerationRequest", errors: JobErrors) -> "JobScripts":
        return JobScripts(self, self.script_args(request), errors)


class JobScripts:
    """One job's scripts (this is `p.scripts`): calls each always-on script's hook in order, skipping any
    that failed earlier in the job; a failure is reported with the extension's name (see JobErrors)."""

    def __init__(self, runner: ScriptRunner, script_args: list[Any], errors: JobErrors):
        self.runner = runner
        self.script_args = script_args
        self.errors = errors
        index = script_args[0] if script_args else 0
        self.selected: Optional[Script] = runner.selectable_scripts[index - 1] if index else None

    # A1111 code reads these from p.scripts.
    @property
    def alwayson_scripts(self) -> list[Script]:
        return self.runner.alwayson_scripts

    @property
    def selectable_scripts(self) -> list[Script]:
        return self.runner.selectable_scripts

    @property
    def scripts(self) -> list[Script]:
        return self.runner.scripts

    @property
    def titles(self) -> list[str]:
        return self.runner.titles

    @property
    def failures(self):
        return self.errors.failures

    def _args(self, p: "ProcessingContext", script: Script) -> list[Any]:
        source = p.script_args if p.script_args is not None else self.script_args
        return list(source[script.args_from:script.args_to])

    def _each(self, hook: str, p: "ProcessingContext", *before: Any, **kwargs: Any) -> None:
        for script in self.runner.alwayson_scripts:
            self.errors.call(script, script.extension, f"{hook}() of script '{script.title()}'",
                             getattr(script, hook), p, *before, *self._args(p, script), **kwargs)

    def run(self, p: "ProcessingContext") -> Optional["Processed"]:
        """The selected script's run(), or None when none is selected. Its failure fails the job."""
        script = self.selected
        if script is None:
            return None
        try:
            return script.run(p, *self._args(p, script))
        except AtelierError:
            raise
        except Exception as e:
            owner = f" (extension '{script.extension}')" if script.extension else ""
            log.exception("script '%s'%s failed in run()", script.title(), owner)
            raise ScriptError(f"script '{script.title()}'{owner} failed in run(): {type(e).__name__}: {e}") from e

    def setup(self, p: "ProcessingContext") -> None:
        self._each("setup", p)

    def before_process(self, p: "ProcessingContext") -> None:
        self._each("before_process", p)

    def process(self, p: "ProcessingContext") -> None:
        self._each("process", p)

    def before_process_batch(self, p: "ProcessingContext", **kwargs: Any) -> None:
        self._each("before_process_batch", p, **kwargs)

    def process_batch(self, p: "ProcessingContext", **kwargs: Any) -> None:
        self._each("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p: "ProcessingContext", **kwargs: Any) -> None:
        self._each("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p: "ProcessingContext") -> None:
        self._each("before_hr", p)

    def postprocess_batch(self, p: "ProcessingContext", images: Any, **kwargs: Any) -> None:
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p: "ProcessingContext", pp: PostprocessBatchListArgs, **kwargs: Any) -> None:
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p: "ProcessingContext", pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image", p, pp)

    def postprocess(self, p: "ProcessingContext", processed: "Processed") -> None:
        self._each("postprocess", p, processed)


@dataclass
class ScriptRegistry:
    """The loaded script classes and a runner per tab. Empty until extensions are loaded; the engine asks it
    for each job's scripts."""

    classes: list[ScriptClass] = field(default_factory=list)
    txt2img: ScriptRunner = field(default_factory=lambda: ScriptRunner([], False))
    img2img: ScriptRunner = field(default_factory=lambda: ScriptRunner([], True))

    def set_classes(self, classes: list[ScriptClass]) -> None:
        """New runners for these classes; each script's arguments are read now (its ui() runs once outside
        the app's UI), so no job ever builds components while the UI is being built."""
        self.classes = list(classes)
        self.txt2img = ScriptRunner(self.classes, False)
        self.img2img = ScriptRunner(self.classes, True)
        self.txt2img.prepare()
        self.img2img.prepare()

    def runner(self, is_img2img: bool) -> ScriptRunner:
        return self.img2img if is_img2img else self.txt2img

    def for_job(self, request: "GenerationRequest", errors: JobErrors) -> Optional[JobScripts]:
        """The job's scripts, or None when no script would run (then the job runs without the scripts path)."""
        runner = self.runner(request.is_img2img)
        if not runner.alwayson_scripts and not request.script_name and not request.alwayson_scripts:
            return None
        return runner.for_job(request, errors)

    def script_info(self) -> list[dict[str, Any]]:
        return self.txt2img.script_info() + self.img2img.script_info()
