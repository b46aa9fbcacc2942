"""Lists whose features arrive separately (LoRA, embeddings, hypernetworks, face restorers, extensions...).

Each answers A1111's empty shape until its feature registers a provider, so clients never see a 404.
Prompt styles (styles.csv) and RealESRGAN models (the upscaler registry) are served already:

    from modules.api import lists
    lists.register("loras", lambda engine: [{"name": ..., "alias": ..., "path": ..., "metadata": {}}])
    lists.register_refresh("loras", lambda engine: reload_loras())
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from modules import extension_lists

log = logging.getLogger(__name__)

EMPTY: dict[str, Callable[[], Any]] = {
    "hypernetworks": list,  # [{name, path}]
    "face-restorers": list,  # [{name, cmd_dir}]
    "realesrgan-models": list,  # [{name, path, scale}]
    "prompt-styles": list,  # [{name, prompt, negative_prompt}]
    "embeddings": lambda: {"loaded": {}, "skipped": {}},  # {loaded: {name: {step, sd_checkpoint, ...}}, skipped}
    "loras": list,  # [{name, alias, path, metadata}]
    "script-info": list,  # [{name, is_alwayson, is_img2img, args}]
    "extensions": list,  # [{name, remote, branch, commit_hash, version, commit_date, enabled}]
}
REFRESHABLE = ("embeddings", "loras")

_providers: dict[str, Callable[[Any], Any]] = {}
_refreshers: dict[str, Callable[[Any], Any]] = {}


def register(name: str, provider: Callable[[Any], Any]) -> None:
    """provider(engine) -> the list in A1111's shape for /sdapi/v1/<name>."""
    if name not in EMPTY:
        raise KeyError(f"no API list named {name!r}; known: {', '.join(EMPTY)}")
    _providers[name] = provider


def register_refresh(name: str, refresh: Callable[[Any], Any]) -> None:
    """refresh(engine): what POST /sdapi/v1/refresh-<name> does."""
    if name not in REFRESHABLE:
        raise KeyError(f"no refresh route for {name!r}; known: {', '.join(REFRESHABLE)}")
    _refreshers[name] = refresh


def _prompt_styles(engine: Any) -> list[dict]:
    """styles.csv, read fresh: the engine's style database when it has one, else the file in the data dir."""
    database = getattr(engine, "styles", None)
    if database is None:
        try:
            from modules.styles import StyleDatabase
        except ImportError:
            return []
        database = StyleDatabase(engine.paths.styles_file)
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in database.styles.values()]


def _realesrgan_models(engine: Any) -> list[dict]:
    """The registered model upscalers whose file is in models/RealESRGAN."""
    from pathlib import Path

    from modules import upscaling

    folder = getattr(engine.paths, "realesrgan_dir", None)
    if folder is None:
        return []
    folder = Path(folder).resolve()
    found = []
    for item in upscaling.list_upscalers():
        path = item.get("model_path")
        if path and folder in Path(path).resolve().parents:
            found.append({"name": item["name"], "path": path, "scale": item.get("scale")})
    return found


_providers.update({"prompt-styles": _prompt_styles, "realesrgan-models": _realesrgan_models})


def get(name: str, engine: Any) -> Any:
    provider = _providers.get(name)
    if provider is not None:
        return provider(engine)
    served = extension_lists.provider(name)  # lists that extensions serve (LoRA, embeddings, hypernetworks)
    return served() if served is not None else EMPTY[name]()


def refresh(name: str, engine: Any) -> None:
    refresher = _refreshers.get(name)
    if refresher is not None:
        refresher(engine)
    else:
        extension_lists.refresh_list(name)
