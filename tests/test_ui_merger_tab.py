"""The Checkpoint Merger tab's handler: merges by name, shows the new file or the error, lists the result."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from modules.model_manager import ModelManager
from modules.paths import Paths
from modules.settings import Settings
from modules.ui import merger_tab
from tests.tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, policy):
    root = tmp_path_factory.mktemp("merger")
    folder = root / "models" / "Stable-diffusion"
    for name, family, seed in (("a", "sd1", 0), ("b", "sd1", 1), ("xl", "sdxl", 0)):
        save_tiny_checkpoint(folder / f"{name}.safetensors", family, seed=seed)
    models = ModelManager(Paths.from_flags(data_dir=str(root)), policy, Settings())
    return SimpleNamespace(engine=SimpleNamespace(models=models))


def test_merge_writes_the_file_and_lists_it(ctx):
    assert merger_tab.checkpoint_names(ctx) == ["a.safetensors", "b.safetensors", "xl.safetensors"]
    message = merger_tab.run_merge(ctx, "a", "b", None, "Weighted sum", 0.5, "fp32", "half", "None", "")
    assert "Saved" in message and "half.safetensors" in message and "atelier-error" not in message
    assert "half.safetensors" in merger_tab.checkpoint_names(ctx)
    assert ctx.engine.models.checkpoints.find("half") is not None


def test_discard_regex_and_errors_are_shown(ctx):
    message = merger_tab.run_merge(ctx, "a", "b", "", "Weighted sum", 0.3, "fp16", "nocond", "None",
                                   "cond_stage_model")
    assert "Saved" in message and "discarded" in message and "0 discarded" not in message
    message = merger_tab.run_merge(ctx, "a", "xl", "", "Weighted sum", 0.3, "fp16", "bad", "None", "")
    assert "atelier-error" in message
    message = merger_tab.run_merge(ctx, None, None, None, "Weighted sum", 0.3, "fp16", "", "None", "")
    assert "atelier-error" in message and "primary" in message.lower()
    message = merger_tab.run_merge(ctx, "a", "b", "", "Add difference", 0.3, "fp16", "", "None", "")
    assert "atelier-error" in message  # add difference needs C
