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
    add_denoise_hook(point, fn(DenoiseState))   any of HOOK_POINTS, with the loop's full state, every job
    p.add_denoise_hook(point, fn)      the same for one job only (from a script's process(); since 1.2)
    DenoiseState.residual_providers    fn(UNetCall) -> extra UNet kwargs (ControlNet residuals), summed across
                                       providers; append in a cfg_denoiser hook (since 1.2)
    optimize_for_inference(module)     the core's fast path for a network you run beside the UNet (packed conv
                                       weights on the CPU, per the cpu_prepack setting) (since 1.3)
    on_infotext_pasted(fn(infotext, params)), on_script_unloaded(fn())
Extra networks (`<kind:args>` prompt tags)
    register_extra_network(kind, handler), ExtraNetworkHandler, ExtraNetworkParams, ExtraNetworkContext,
    parse_extra_networks; cards for the browser: register_extra_network_cards(kind, provider),
    ExtraNetworkCard, card_for_file, find_preview
Changing the model during a job (since 1.1; see docs/extensions.md, "Model patches")
    set_weight_deltas(model, owner, {(component, param): delta}), clear_weight_deltas(model, owner),
    model_components(model), patched_weights(model)          add deltas to weights, restore them exactly
    ldm_unet_prefixes(unet_config)     diffusers UNet module names -> A1111 checkpoint (LDM) names
    set_attention_kv_hook(model, owner, fn(context, "k"|"v", AttentionLayer)), AttentionLayer
                                                             change what attention keys/values read
Textual-inversion embeddings (since 1.1)
    register_embedding_provider(fn(EmbeddingTarget) -> EmbeddingLookup | None), Embedding, EmbeddingTable,
    EmbeddingLookup, EmbeddingTarget, current_embedding_target()
Files and lists (since 1.1)
    model_dir(kind), vae_files(), current_model(); load_tensors(path), load_pickle(path) (weights_only),
    read_safetensors_metadata(path), sha256_file(path), addnet_hash(path), UnsafeFileError;
    register_api_list(name, provider, refresh)   serve /sdapi/v1/loras, /embeddings, /hypernetworks
    inpaint_crop_box(p, image)         the box of `image` that "only masked" inpainting generates, or None (since 1.2)
    decode_image(data, field)          a client's base64 image, checked as the API checks its own (size limits,
                                       bombs, odd modes; ValidationError(field, reason) -> a 422) (since 1.2)
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from modules import extension_callbacks as _callbacks
from modules.extension_callbacks import (CFGDenoisedParams, CFGDenoiserParams, ImageSaveParams, UiTab,
                                         add_denoise_hook, on_app_started, on_before_image_saved, on_cfg_denoised,
                                         on_cfg_denoiser, on_image_saved, on_infotext_pasted, on_model_loaded,
                                         on_script_unloaded, on_ui_settings, on_ui_tabs)
from modules.extra_network_cards import (ExtraNetworkCard, card_for_file, find_preview,
                                         register_extra_network_cards)
from modules import embedding_hooks as _embedding_hooks
from modules import extension_lists as _extension_lists
from modules import extra_networks as _extra_networks
from modules.attention_hooks import AttentionLayer, set_attention_kv_hook
from modules.embedding_hooks import EmbeddingTarget
from modules.errors import UnsafeFileError, ValidationError
from modules.image_input import decode_image
from modules.ldm_names import ldm_unet_prefixes
from modules.extra_networks import ExtraNetworkContext, ExtraNetworkHandler, ExtraNetworkParams, parse_extra_networks
from modules.processing_context import ModelInfo, ProcessingContext, Processed
from modules.safe_loading import addnet_hash, load_pickle, load_tensors, read_safetensors_metadata, sha256_file
from modules.sampling import HOOK_POINTS, DenoiseState, UNetCall
from modules.script_processing import process_images
from modules.scripting import AlwaysVisible, PostprocessImageArgs, Script, ScriptArg, ScriptError
from modules.settings import OPTIONS, Option
from modules.text_encoding import Embedding, EmbeddingLookup, EmbeddingTable
from modules.weight_patching import WeightPatchError, clear_weight_deltas, model_components, patched_weights, \
    set_weight_deltas

API_VERSION = "1.3"

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


def register_extra_network(kind: str, handler: ExtraNetworkHandler) -> None:
    """Make `<kind:...>` prompt tags reach `handler`; it goes away when extensions are unloaded."""
    _extra_networks.register_extra_network(kind, handler)

    def forget() -> None:
        if _extra_networks.default_registry.get(kind) is handler:
            _extra_networks.default_registry.unregister(kind)

    _callbacks.add_callback("script_unloaded", forget)


def register_embedding_provider(provider: "_embedding_hooks.EmbeddingProvider") -> None:
    """provider(EmbeddingTarget) -> EmbeddingLookup or None: textual-inversion embeddings for a model. Asked once
    per job; the lookup's `version` must change when its embeddings do (encoded prompts are cached under it)."""
    _embedding_hooks.register_embedding_provider(provider, _callbacks.current_owner().extension)
    _callbacks.add_callback("script_unloaded", lambda: _embedding_hooks.unregister_embedding_provider(provider))


def current_embedding_target() -> "Optional[EmbeddingTarget]":
    """The EmbeddingTarget of the loaded model (None before one is loaded): for listing which embeddings fit."""
    from modules.compat import host

    engine = host.engine()
    model = engine.models.current if engine is not None else None
    return _embedding_hooks.target_for(model) if model is not None else None


def register_api_list(name: str, provider: Callable[[], Any], refresh: Optional[Callable[[], None]] = None) -> None:
    """Serve provider() (A1111's JSON shape) at GET /sdapi/v1/<name> ("loras", "embeddings", "hypernetworks",
    "face-restorers"); refresh() runs for POST /sdapi/v1/refresh-<name>."""
    _extension_lists.register_api_list(name, provider, refresh)
    _callbacks.add_callback("script_unloaded", lambda: _extension_lists.unregister_api_list(name, provider))


# Model folders by A1111's folder name (and a lower-case alias); --lora-dir etc. move them.
_MODEL_DIRS = {"Stable-diffusion": "ckpt_dir", "checkpoints": "ckpt_dir", "VAE": "vae_dir", "vae": "vae_dir",
               "Lora": "lora_dir", "lora": "lora_dir", "embeddings": "embeddings_dir",
               "hypernetworks": "hypernetwork_dir", "ControlNet": "controlnet_dir", "controlnet": "controlnet_dir"}


def model_dir(kind: str) -> Path:
    """Where files of `kind` live: "Lora", "embeddings", "hypernetworks", "VAE", "Stable-diffusion", "ControlNet"
    (or lower case). Read it when you need it: the folders follow the running app's flags."""
    from modules.compat import host
    from modules.paths import Paths

    if kind not in _MODEL_DIRS:
        raise KeyError(f"no model folder '{kind}'; known: {', '.join(_MODEL_DIRS)}")
    engine = host.engine()
    paths = engine.paths if engine is not None else Paths.from_flags()
    return Path(getattr(paths, _MODEL_DIRS[kind]))


@dataclass(frozen=True)
class ModelFileInfo:
    name: str  # as the sd_vae setting and /sdapi/v1/sd-vae name it (path relative to its folder)
    path: Path


def vae_files(refresh: bool = False) -> list[ModelFileInfo]:
    """The VAE files the app can select (models/VAE and its subfolders)."""
    from modules.compat import host

    engine = host.engine()
    if engine is None:
        return []
    if refresh:
        engine.models.vaes.refresh()
    return [ModelFileInfo(item.name, item.path) for item in engine.models.vaes.items]


def current_model() -> Optional[ModelInfo]:
    """What is loaded (read-only), or None."""
    from modules.compat import host

    return host.model_info()


def inpaint_crop_box(p: ProcessingContext, image: Any) -> Optional[tuple[int, int, int, int]]:
    """For an inpaint job with "only masked" (inpaint_full_res): the (left, top, right, bottom) box of `image`
    (the img2img picture, or one of its size) that is generated, then pasted back; None when the whole picture
    is used. Anything that must line up with the generated area, such as a control image, is cut the same way."""
    from modules.inpainting import only_masked_box

    return only_masked_box(p.to_request(), image)


def optimize_for_inference(module: Any) -> None:
    """Give a network an extension runs every step (a ControlNet, an adapter) the fast path the core gives its
    own UNet and VAE: on the CPU, with the `cpu_prepack` setting on, conv weights packed once for oneDNN (same
    numbers, faster); turned back off when the setting is. Call it after moving the module to its device and
    dtype; calling it again each step is cheap. Weights stay ordinary parameters."""
    from modules import cpu_prepack

    cpu_prepack.sync([module], bool(get_setting("cpu_prepack")))


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
    # 1.1
    "set_weight_deltas", "clear_weight_deltas", "model_components", "patched_weights", "WeightPatchError",
    "ldm_unet_prefixes",
    "set_attention_kv_hook", "AttentionLayer",
    "register_embedding_provider", "Embedding", "EmbeddingTable", "EmbeddingLookup", "EmbeddingTarget",
    "current_embedding_target",
    "model_dir", "vae_files", "ModelFileInfo", "current_model", "load_tensors", "load_pickle",
    "read_safetensors_metadata", "sha256_file", "addnet_hash", "UnsafeFileError", "register_api_list",
    # 1.2
    "UNetCall", "decode_image", "ValidationError", "inpaint_crop_box",
    # 1.3
    "optimize_for_inference",
]
