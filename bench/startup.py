"""Startup bench: seconds from process start until the server answers, with no checkpoint to load.

    .venv/bin/python bench/startup.py            # API only (--nowebui) and API + UI, 3 runs each, best kept
    .venv/bin/python bench/startup.py --smoke    # one `webui.py --exit` run: proves the bench still works

Also runs `python -X importtime webui.py --exit` and prints the imports that dominate, beside how long
`import torch` alone takes in a fresh interpreter (the floor no Python-level change can go under).
Target: ≤ 5 s to the API answering. Writes bench/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_S = 5.0


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_answer(data_dir: Path, ui: bool, timeout: float = 180.0) -> float:
    """Start webui.py and poll until the URL answers 200; seconds from Popen to that answer."""
    port = free_port()
    args = [sys.executable, "webui.py", "--data-dir", str(data_dir), "--port", str(port), "--no-download-prompt"]
    args += ["--api"] if ui else ["--nowebui"]
    url = f"http://127.0.0.1:{port}" + ("/" if ui else "/sdapi/v1/samplers")
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"webui.py exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def time_command(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=_env(), check=True, capture_output=True)
    return time.perf_counter() - start


def import_profile(data_dir: Path, top: int = 12) -> tuple[float, list[tuple[str, float]]]:
    """`-X importtime` of a full set-up (`webui.py --exit`): total seconds and the packages whose modules
    take longest to import (each module's own time, summed per top-level package)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "webui.py", "--exit", "--no-download-prompt",
                           "--data-dir", str(data_dir)], cwd=ROOT, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    by_package: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue
        # Each module's own time (not cumulative), summed per top-level package: additive, nothing counted twice.
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(own) / 1e6
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    return wall, ranked


def run(smoke: bool, repeat: int) -> dict:
    results: dict = {"smoke": smoke, "target_s": TARGET_S}
    with tempfile.TemporaryDirectory() as tmp:  # an empty data dir: no checkpoint, nothing to load
        data_dir = Path(tmp)
        torch_alone = time_command([sys.executable, "-c", "import torch"])
        wall, ranked = import_profile(data_dir, top=5 if smoke else 12)
        results.update(import_torch_s=torch_alone, exit_run_s=wall, top_imports=ranked)
        print(f"`import torch` alone: {torch_alone:.2f}s; `webui.py --exit` (imports + set-up, no server): {wall:.2f}s "
              f"-> torch is {torch_alone / wall:.0%} of it")
        print("import time by package (own s):",
              ", ".join(f"{name} {secs:.2f}" for name, secs in ranked))
        if smoke:
            return results
        for ui in (False, True):
            best = min(time_to_answer(data_dir, ui) for _ in range(repeat))
            key = "api_and_ui_s" if ui else "api_only_s"
            results[key] = best
            verdict = "within" if best <= TARGET_S else "over"
            print(f"start -> {'UI (/) answering' if ui else 'API answering (--nowebui)'}: {best:.2f}s "
                  f"({verdict} the {TARGET_S:.0f} s target; {best / torch_alone:.1f}x `import torch`)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="one --exit run with the import profile; no server")
    parser.add_argument("--repeat", type=int, default=3, help="server starts per mode; the best is kept")
    args = parser.parse_args()
    results = run(args.smoke, args.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("startup-smoke.json" if args.smoke else "startup.json")).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
