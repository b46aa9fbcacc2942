"""webui.py starts without a checkpoint and says where to put one."""
import subprocess
import sys
from pathlib import Path

import webui

ROOT = Path(__file__).resolve().parent.parent


def test_exit_with_no_checkpoint_says_where_to_put_one(tmp_path, capsys):
    assert webui.main(["--data-dir", str(tmp_path), "--exit"]) == 0
    out = capsys.readouterr().out
    assert "No checkpoint found" in out and str(tmp_path / "models" / "Stable-diffusion") in out
    for folder in ("models/Stable-diffusion", "models/VAE", "models/Lora", "embeddings", "outputs"):
        assert (tmp_path / folder).is_dir()


def test_exit_finds_a_checkpoint(tiny_dir, capsys):
    assert webui.main(["--data-dir", str(tiny_dir), "--exit"]) == 0
    assert "No checkpoint found" not in capsys.readouterr().out


def test_unknown_flag_is_an_error():
    proc = subprocess.run([sys.executable, str(ROOT / "webui.py"), "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr
