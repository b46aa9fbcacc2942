"""Set-up for the built-in extension tests: an engine on the tiny models with one built-in extension loaded
(from extensions-builtin/, as the app loads it), its model folders in the test's own temp dir."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from modules.engine import Engine
from modules.extensions import BUILTIN_DIR, ExtensionManager, load_extensions
from modules.jobs import JobState
from modules.paths import Paths
from modules.request import GenerationRequest
from modules.settings import Settings
from tests.extension_helpers import close  # noqa: F401  (re-exported for the tests)
from tests.tiny_models import build_tiny_components


def make_engine(tiny_dir: Path, policy, tmp_path: Path, *builtins: str, checkpoint: str = "tiny-sd1.safetensors"
                ) -> Engine:
    """An engine whose LoRA/embedding/hypernetwork/VAE folders are under tmp_path, with `builtins` loaded."""
    paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "outputs"),
                             lora_dir=str(tmp_path / "Lora"), embeddings_dir=str(tmp_path / "embeddings"),
                             hypernetwork_dir=str(tmp_path / "hypernetworks"), vae_dir=str(tmp_path / "VAE"))
    for folder in (paths.lora_dir, paths.embeddings_dir, paths.hypernetwork_dir, paths.vae_dir):
        folder.mkdir(parents=True, exist_ok=True)
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", checkpoint)
    settings.set("samples_save", False)
    engine = Engine(paths, policy, settings)
    builtin_dir = tmp_path / "extensions-builtin"
    builtin_dir.mkdir()
    for name in builtins:
        shutil.copytree(BUILTIN_DIR / name, builtin_dir / name, ignore=shutil.ignore_patterns("__pycache__"))
    manager = ExtensionManager(paths, settings, builtin_dir=builtin_dir, user_dir=tmp_path / "extensions")
    loaded = load_extensions(engine, manager=manager)
    assert not loaded.failures, [str(f) for f in loaded.failures]
    return engine


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a lighthouse", negative_prompt="blurry", seed=7, steps=2, width=64, height=64,
                sampler_name="Euler", cfg_scale=5.0)
    base.update(changes)
    return GenerationRequest(**base)


def run(engine: Engine, **changes):
    """(image as an array, infotext, notes) of a one-image job."""
    job = engine.generate(request(**changes), timeout=120)
    assert job.state == JobState.done, job.error
    return np.asarray(job.result.images[0]).astype(np.int16), job.result.infotexts[0], job.result.result.notes


def components(family: str) -> dict[str, torch.nn.Module]:
    """The tiny model's modules (same seed as the checkpoints in tiny_dir): their names, shapes and configs."""
    return build_tiny_components(family)
