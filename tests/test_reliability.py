"""Faults: a process killed mid-save leaves no partial image; a corrupt config.json is backed up, not fatal."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from modules.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

SAVER = """
import sys, numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from modules.image_saving import save_image
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
print("ready", flush=True)
while True:
    save_image(image, {folder!r}, seed=1, infotext="Steps: 20")
"""


def _finished(folder: Path) -> list[Path]:
    # pathlib's glob matches dot files too; temp files are hidden on purpose and are not images yet.
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))


def test_sigkill_during_saves_leaves_only_complete_pngs(tmp_path):
    folder = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SAVER.format(root=str(ROOT), folder=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        while time.time() < deadline and len(_finished(folder)) < 3:
            time.sleep(0.05)
        time.sleep(0.13)  # land somewhere inside a write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finals = _finished(folder)
    assert len(finals) >= 3
    for path in finals:
        with Image.open(path) as image:
            image.load()  # a truncated PNG raises here
            assert image.size == (1024, 1024)
            assert image.info["parameters"] == "Steps: 20"
    # Whatever was mid-write is a hidden temp file, never a half image under a real name.
    assert all(p.name.startswith(".") for p in folder.iterdir() if p not in finals)


def test_corrupt_config_is_backed_up_and_defaults_apply(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"samples_format": "png", "CLIP_stop_at_', encoding="utf-8")
    settings = Settings.load(config)
    assert settings.get("CLIP_stop_at_last_layers") == 1
    assert settings.warnings and "unreadable" in settings.warnings[0]
    backups = list(tmp_path.glob("config.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf-8").startswith('{"samples_format"')
    settings.set("CLIP_stop_at_last_layers", 2)
    assert Settings.load(config).get("CLIP_stop_at_last_layers") == 2


def test_bad_saved_values_are_ignored_with_a_warning(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"CLIP_stop_at_last_layers": "lots", "my_extension_option": 5}', encoding="utf-8")
    settings = Settings.load(config)
    assert settings.get("CLIP_stop_at_last_layers") == 1
    assert settings.get("my_extension_option") == 5  # unknown keys survive for extensions that are off
    assert any("CLIP_stop_at_last_layers" in w for w in settings.warnings)
