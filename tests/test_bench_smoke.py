"""The benchmark still runs (tiny model, one step). It asserts that figures come out, never what they are."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_bench_smoke_mode_runs_and_writes_json():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "core.py"), "--smoke"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overhead" in proc.stdout
    results = json.loads((ROOT / "bench" / "results" / "core-smoke.json").read_text())
    assert results["smoke"] is True and isinstance(results["tiny_overhead"], float)
