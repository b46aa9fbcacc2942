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


def test_building_the_ui_and_api_imports_neither_diffusers_nor_transformers(tmp_path):
    """They cost seconds at start (bench/startup.py); the first model load imports them."""
    code = f"""
import sys
from modules import cmd_args
from modules.api.server import create_app
from modules.devices import choose_policy
from modules.engine import Engine
from modules.extensions import load_extensions
from modules.paths import Paths
args = cmd_args.parse(["--data-dir", {str(tmp_path)!r}])
paths = Paths.from_flags(args.data_dir)
paths.ensure()
engine = Engine(paths, choose_policy())
engine.extensions = load_extensions(engine, args)
create_app(engine, args)
print(sorted(m for m in ("diffusers", "transformers") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
