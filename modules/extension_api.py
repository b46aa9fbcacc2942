"""Atelier's extension API: the one module an extension imports (`from modules import extension_api as api`).

Versioned by API_VERSION ("major.minor"): a minor bump only adds; a major bump may change or remove what is
here. Nothing else in `modules` is promised to stay. Extension code is trusted: it runs inside the app, with
its rights. See docs/extensions.md for a walk-through and a complete example.

Scripts (put a subclass in your extension's scripts/*.py)
    Script, AlwaysVisible, ScriptArg, PostprocessImageArgs   the script base class and its helpers
    ProcessingContext                                       `p`: A1111's field names over the request
    Processed, process_images(p)                            for selectable scripts' run()
    ModelInfo                                               read-only description of the loaded model
Callbacks (register at import time; each is called with A1111's arguments)
    on_app_started(fn(demo, app))      add FastAPI routes to `app` (demo is None without the UI)
    on_ui_tabs(fn() -> [(blocks, title, elem_id)])           add a UI tab
    on_ui_settings(fn())               declare settings (or call register_settings at import)
    on_model_loaded(fn(model_info))
    on_before_image_saved(fn(ImageSaveParams)), on_image_saved(fn(ImageSaveParams))
    on_cfg_denoiser(fn(CFGDenoiserParams)), on_cfg_denoised(fn(CFGDenoisedParams))   each denoise step
    add_denoise_hook(point, fn(DenoiseState))   any of HOOK_POINTS, with the loop's full state
    on_infotext_pasted(fn(infotext, params)), on_script_unloaded(fn())
Extra networks (`<kind:args>` prompt tags)
    register_extra_network(kind, handler), ExtraNetworkHandler, ExtraNetworkParams, ExtraNetworkContext,
    parse_extra_networks; cards for the browser: register_extra_network_cards(kind, provider),
    ExtraNetworkCard, card_for_file, find_preview
Settings
    register_settings(section, {name: setting(default, label, ...)}), get_setting(name), Option
    API arguments of a script: its `api_args` (list of ScriptArg), shown by /sdapi/v1/script-info and
    accepted in a request's alwayson_scripts: {"<title>": {"args": [...] or {name: value}}}
Where am I
    extension_dir(): the folder of the extension being imported (call it at import time)

A failure in extension code is reported with the extension's name (the job's notes and the log, with its
traceback); the failing script or callback is off for the rest of that job, and the app goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from modules import extension_callbacks as _callbacks
from modules.extension_callbacks import (CFGDenoisedParams, CFGDenoiserParams, ImageSaveParams, UiTab,
                                         add_denoise_hook, on_app_started, on_before_image_saved, on_cfg_denoised,
                                         on_cfg_denoiser, on_image_saved, on_infotext_pasted, on_model_loaded,
                                         on_script_unloaded, on_ui_settings, on_ui_tabs)
from modules.extra_network_cards import (ExtraNetworkCard, card_for_file, find_preview,
                                         register_extra_network_cards)
from modules.extra_networks import (ExtraNetworkContext, ExtraNetworkHandler, ExtraNetworkParams,
                                    parse_extra_networks, register_extra_network)
from modules.processing_context import ModelInfo, ProcessingContext, Processed
from modules.sampling import HOOK_POINTS, DenoiseState
from modules.script_processing import process_images
from modules.scripting import AlwaysVisible, PostprocessImageArgs, Script, ScriptArg, ScriptError
from modules.settings import OPTIONS, Option

API_VERSION = "1.0"

# Which extension declared each setting (the Settings tab can say so).
setting_owners: dict[str, str] = {}


def register_option(name: str, option: Option) -> None:
    """Add one setting. An extension may re-declare its own; a core setting can't be replaced."""
    owner = _callbacks.current_owner().extension
    if name in OPTIONS and name not in setting_owners:
        raise ValueError(f"setting '{name}' belongs to Atelier; choose another name")
    OPTIONS[name] = option
    setting_owners[name] = owner


def setting(default: Any, label: str, *, choices: Any = None, minimum: Any = None, maximum: Any = None) -> Option:
    """An Option for register_settings (which gives it its section)."""
    return Option(default, label, "", tuple(choices) if choices is not None else None, minimum, maximum)


def register_settings(section: str, options: dict[str, Option]) -> None:
    """Declare settings shown under `section` in the Settings tab and stored in config.json:
    register_settings("My extension", {"my_ext_strength": setting(0.5, "Strength", minimum=0, maximum=1)})."""
    for name, option in options.items():
        register_option(name, Option(option.default, option.label, section, option.choices, option.minimum,
                                     option.maximum))


def get_setting(name: str) -> Any:
    """The current value of a setting (yours or the app's)."""
    from modules.compat import host

    return host.settings().get(name)


def extension_dir() -> Path:
    """The folder of the extension whose script is being imported; call it at import time."""
    from modules.compat import host

    return Path(host.basedir())


__all__ = [
    "API_VERSION", "Script", "AlwaysVisible", "ScriptArg", "ScriptError", "PostprocessImageArgs",
    "ProcessingContext", "Processed", "process_images", "ModelInfo",
    "on_app_started", "on_ui_tabs", "on_ui_settings", "on_model_loaded", "on_before_image_saved", "on_image_saved",
    "on_cfg_denoiser", "on_cfg_denoised", "on_infotext_pasted", "on_script_unloaded", "add_denoise_hook",
    "HOOK_POINTS", "DenoiseState", "CFGDenoiserParams", "CFGDenoisedParams", "ImageSaveParams", "UiTab",
    "register_extra_network", "ExtraNetworkHandler", "ExtraNetworkParams", "ExtraNetworkContext",
    "parse_extra_networks", "register_extra_network_cards", "ExtraNetworkCard", "card_for_file", "find_preview",
    "Option", "setting", "register_settings", "register_option", "get_setting", "extension_dir",
]
