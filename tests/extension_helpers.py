"""Shared set-up for the extension tests: an engine on the tiny SD1 model with extensions from given folders."""
from __future__ import annotations

import shutil
from pathlib import Path

from modules import extension_callbacks
from modules.engine import Engine
from modules.extensions import ExtensionManager, LoadedExtensions, load_extensions, unload_extensions
from modules.paths import Paths
from modules.request import GenerationRequest
from modules.settings import Settings

TESTS = Path(__file__).resolve().parent
A1111_EXTENSIONS = TESTS / "extensions_a1111"
EXAMPLE_EXTENSION = TESTS / "example_extension"


def make_engine(tiny_dir: Path, policy, tmp_path: Path) -> Engine:
    paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "outputs"))
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    return Engine(paths, policy, settings)


def load_from(engine: Engine, tmp_path: Path, *folders: Path) -> LoadedExtensions:
    """Copy each folder into a fresh user extensions dir (no built-ins) and load them all."""
    user_dir = tmp_path / "extensions"
    user_dir.mkdir(exist_ok=True)
    for folder in folders:
        shutil.copytree(folder, user_dir / folder.name)
    manager = ExtensionManager(engine.paths, engine.settings, builtin_dir=tmp_path / "no-builtins",
                               user_dir=user_dir)
    return load_extensions(engine, manager=manager)


def close(engine: Engine) -> None:
    unload_extensions(engine)
    extension_callbacks.app_failures.clear()
    engine.shutdown()


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a lighthouse", negative_prompt="blurry", seed=7, steps=2, width=64, height=64,
                sampler_name="Euler", cfg_scale=5.0)
    base.update(changes)
    return GenerationRequest(**base)
