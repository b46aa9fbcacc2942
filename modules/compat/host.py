"""The app behind A1111's globals: `shared.opts` (settings), `shared.state` (the running job),
`shared.cmd_opts` (flags), `shared.sd_model` (what is loaded) and `scripts.scripts_txt2img`.

Each is a stable proxy object, so `from modules.shared import opts` at import time keeps working after `bind`.
Before `bind` (or in a bare test) they read defaults from an in-memory Settings.
"""
from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from modules import extension_callbacks as callbacks
from modules.paths import REPO_ROOT
from modules.settings import OPTIONS, Option, Settings

if TYPE_CHECKING:
    from modules.engine import Engine
    from modules.processing_context import ModelInfo

_engine: Optional["Engine"] = None
_args: Optional[argparse.Namespace] = None
_unbound_settings = Settings()

# Flags A1111 extensions read from cmd_opts that Atelier doesn't have, with A1111's defaults.
A1111_FLAG_DEFAULTS: dict[str, Any] = {
    "lowvram": False, "medvram": False, "medvram_sdxl": False, "lowram": False, "xformers": False,
    "force_enable_xformers": False, "opt_sdp_attention": False, "opt_split_attention": False,
    "disable_safe_unpickle": False, "no_half": False, "no_half_vae": False, "precision": "autocast",
    "upcast_sampling": False, "api": False, "nowebui": False, "listen": False, "share": False, "port": None,
    "ui_debug_mode": False, "freeze_settings": False, "hide_ui_dir_config": False, "gradio_auth": None,
    "api_auth": None, "data_dir": str(REPO_ROOT), "ckpt_dir": None, "lora_dir": None, "embeddings_dir": None,
    "hypernetwork_dir": None, "vae_dir": None, "controlnet_dir": None, "disable_all_extensions": False,
    "disable_extra_extensions": False, "enable_insecure_extension_access": False, "skip_torch_cuda_test": False,
    "use_cpu": [], "device_id": None, "theme": None, "disable_nan_check": False, "no_gradio_queue": False,
}


def bind(engine: Optional["Engine"], args: Optional[argparse.Namespace] = None) -> None:
    global _engine, _args
    _engine, _args = engine, args


def engine() -> Optional["Engine"]:
    return _engine


def settings() -> Settings:
    return _engine.settings if _engine is not None else _unbound_settings


def model_info(eng: Optional["Engine"] = None) -> Optional["ModelInfo"]:
    from modules.processing_context import ModelInfo

    eng = eng or _engine
    if eng is None or eng.models.current is None:
        return None
    return ModelInfo(eng.models.current, eng.models.current_file)


def basedir() -> str:
    """The folder of the extension whose script is being imported (A1111's scripts.basedir())."""
    path = callbacks.current_owner().path
    return str(path if path is not None else REPO_ROOT)


# -- shared.opts ----------------------------------------------------------------------------------------

class OptionInfo:
    """A1111's OptionInfo: a setting an extension declares (see Options.add_option)."""

    def __init__(self, default: Any = None, label: str = "", component: Any = None, component_args: Any = None,
                 onchange: Optional[Callable[[], None]] = None, section: Any = None, refresh: Any = None,
                 comment_before: str = "", comment_after: str = "", infotext: Optional[str] = None,
                 restrict_api: bool = False, category_id: Optional[str] = None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.refresh, self.infotext = onchange, section, refresh, infotext
        self.comment_before, self.comment_after = comment_before, comment_after
        self.restrict_api, self.category_id = restrict_api, category_id
        self.do_not_save = False

    def info(self, text: str) -> "OptionInfo":
        self.comment_after += f"<span class='info'>({text})</span>"
        return self

    def html(self, html: str) -> "OptionInfo":
        self.comment_after += html
        return self

    def link(self, label: str, url: str) -> "OptionInfo":
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label: str, js_func: str) -> "OptionInfo":
        return self

    def needs_reload_ui(self) -> "OptionInfo":
        return self.info("requires Reload UI")

    def needs_restart(self) -> "OptionInfo":
        return self.info("requires restart")

    def to_option(self) -> Option:
        """Our Option: the section's title, and choices/range when component_args gives them plainly."""
        section = self.section[1] if isinstance(self.section, (tuple, list)) and len(self.section) > 1 else self.section
        args = self.component_args if isinstance(self.component_args, dict) else {}
        choices = args.get("choices")
        if choices is not None:
            choices = tuple(c[1] if isinstance(c, (tuple, list)) and len(c) == 2 else c for c in choices)
        return Option(self.default, self.label, str(section or "Uncategorized"), choices,
                      args.get("minimum"), args.get("maximum"))


def options_section(section_identifier: Any, options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    for info in options_dict.values():
        info.section = section_identifier
    return options_dict


class _Data(MutableMapping):
    """opts.data: every current value by name; assignments change settings in memory (opts.save() writes)."""

    def __getitem__(self, key: str) -> Any:
        values = settings().all()
        if key not in values:
            raise KeyError(key)
        return values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        settings().set(key, value, save=False)

    def __delitem__(self, key: str) -> None:
        settings().values.pop(key)

    def __iter__(self) -> Iterator[str]:
        return iter(settings().all())

    def __len__(self) -> int:
        return len(settings().all())


class Options:
    """A1111's shared.opts over Atelier's Settings: `opts.name` reads, `opts.name = v` sets (in memory)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_onchange", {})

    @property
    def data(self) -> _Data:
        return _Data()

    @property
    def data_labels(self) -> dict[str, OptionInfo]:
        return {name: OptionInfo(o.default, o.label, section=o.section,
                                 component_args={"choices": list(o.choices)} if o.choices else None)
                for name, o in OPTIONS.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        current = settings()
        if name in OPTIONS or name in current.values:
            return current.get(name)
        raise AttributeError(f"no setting named '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def __contains__(self, name: str) -> bool:
        return name in OPTIONS or name in settings().values

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        current = settings()
        if current.get(key) == value:
            return False
        current.set(key, value, save=False)
        callback = self._onchange.get(key)
        if run_callbacks and callback is not None:
            callback()
        return True

    def get_default(self, key: str) -> Any:
        option = OPTIONS.get(key)
        return option.default if option else None

    def add_option(self, key: str, info: OptionInfo) -> None:
        from modules.extension_api import register_option

        register_option(key, info.to_option())
        if info.onchange is not None:
            self._onchange[key] = info.onchange

    def onchange(self, key: str, func: Callable[[], None], call: bool = True) -> None:
        self._onchange[key] = func
        if call:
            func()

    def save(self, filename: Optional[str] = None) -> None:
        settings().update({})  # writes config.json atomically

    def dumpjson(self) -> str:
        import json

        return json.dumps(settings().all(), default=str)

    def reorder(self) -> None:
        pass


# -- shared.state ---------------------------------------------------------------------------------------

class State:
    """A1111's shared.state over the job queue: the running job's progress, interrupt and skip. The counters
    scripts set themselves (job_count, job_no, textinfo) are plain attributes."""

    def __init__(self) -> None:
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.processing_has_refined_job_count = False
        self.job_timestamp = "0"
        self.textinfo: Optional[str] = None
        self.time_start: Optional[float] = None
        self.server_start: Optional[float] = None
        self.id_live_preview = 0
        self.current_latent = None
        self.current_image_sampling_step = 0
        self.need_restart = False
        self.server_command = None
        self.stopping_generation = False

    def _job(self):
        return _engine.queue.current() if _engine is not None else None

    @property
    def interrupted(self) -> bool:
        job = self._job()
        return bool(job is not None and job.control.interrupted)

    @property
    def skipped(self) -> bool:
        job = self._job()
        return bool(job is not None and job.control._skip.is_set())

    @property
    def sampling_step(self) -> int:
        job = self._job()
        return job.step if job is not None else 0

    @property
    def sampling_steps(self) -> int:
        job = self._job()
        return job.total_steps if job is not None else 0

    @property
    def current_image(self) -> Any:
        job = self._job()
        return job.preview if job is not None else None

    def interrupt(self) -> None:
        if _engine is not None:
            _engine.queue.interrupt()

    def skip(self) -> None:
        if _engine is not None:
            _engine.queue.skip()

    def stop_generating(self) -> None:
        self.interrupt()

    def nextjob(self) -> None:
        self.job_no += 1

    def begin(self, job: str = "(unknown)") -> None:
        self.job, self.job_no, self.job_count, self.textinfo = job, 0, 0, None

    def end(self) -> None:
        self.job = ""

    def set_current_image(self) -> None:
        pass

    def assign_current_image(self, image: Any) -> None:
        pass

    def dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "interrupted": self.interrupted, "job": self.job,
                "job_count": self.job_count, "job_timestamp": self.job_timestamp, "job_no": self.job_no,
                "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps}


# -- shared.cmd_opts ------------------------------------------------------------------------------------

class CmdOpts:
    """The app's flags; A1111 flags Atelier lacks read as A1111's defaults."""

    def __getattr__(self, name: str) -> Any:
        if _args is not None and hasattr(_args, name):
            return getattr(_args, name)
        if name in A1111_FLAG_DEFAULTS:
            return A1111_FLAG_DEFAULTS[name]
        raise AttributeError(f"no command-line flag named '{name}'")


opts = Options()
state = State()
cmd_opts = CmdOpts()


def shared_attr(name: str) -> Any:
    """Module attributes of `modules.shared` that follow the app (PEP 562)."""
    if name == "sd_model":
        return model_info()
    if name == "device":
        return _engine.policy.device if _engine is not None else "cpu"
    data = _engine.paths.data_dir if _engine is not None else REPO_ROOT
    paths = {"data_path": data, "models_path": data / "models", "script_path": REPO_ROOT}
    if name in paths:
        return str(paths[name])
    raise AttributeError(f"module 'modules.shared' has no attribute '{name}'")


def scripts_attr(name: str) -> Any:
    """`scripts.scripts_txt2img` / `scripts_img2img`: the engine's runners."""
    if name in ("scripts_txt2img", "scripts_img2img") and _engine is not None:
        return _engine.scripts.runner(name == "scripts_img2img")
    if name == "scripts_data":
        return list(_engine.scripts.classes) if _engine is not None else []
    raise AttributeError(f"module 'modules.scripts' has no attribute '{name}'")

