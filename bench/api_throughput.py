"""API throughput bench: N tiny jobs through the HTTP API against the same jobs called on the core directly.

    .venv/bin/python bench/api_throughput.py            # 50 jobs each way, tiny model
    .venv/bin/python bench/api_throughput.py --smoke    # 3 jobs each way: proves the bench runs

The tiny model makes each job cost almost nothing, so what is left is the machinery around it. Three rows,
side by side in one run, same requests, same device policy:
  core    processing.generate() on a loaded model
  engine  Engine.generate(): validation, the job queue and its worker thread, infotext (no saving)
  http    POST /sdapi/v1/txt2img to `webui.py --nowebui` in another process: JSON, base64 PNGs, uvicorn
Each row runs in its own process (one thread doing torch work per process; see `in_own_process`), warmed up,
and the rows take turns (two rounds of 25 jobs), so load elsewhere on the machine falls on all alike. The ratios
are of medians; means and jobs per second are printed beside.
The overhead ratios are http / core and engine / core. Writes bench/results/api_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.core import CACHE as RESULTS_DIR  # noqa: E402
from bench.startup import _env, free_port  # noqa: E402
from modules.devices import choose_policy, configure_backend  # noqa: E402
from modules.engine import Engine  # noqa: E402
from modules.model_loading import load_checkpoint  # noqa: E402
from modules.paths import Paths  # noqa: E402
from modules.processing import generate  # noqa: E402
from modules.request import GenerationRequest  # noqa: E402
from modules.settings import Settings  # noqa: E402

JOB = dict(prompt="a small red boat", negative_prompt="fog", steps=2, width=64, height=64, sampler_name="Euler",
           cfg_scale=5.0)


def data_dir_with_tiny_model(root: Path) -> Path:
    from tests.tiny_models import save_tiny_checkpoint

    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    return save_tiny_checkpoint(folder / "tiny-sd1.safetensors", "sd1")


WARM_UP = 3  # bf16 kernels are set up per shape on first use; the first jobs in a process are slow
ROUNDS = 2  # each row runs its share of the jobs this many times, in turn with the others


def core_runner(checkpoint: Path):
    policy = choose_policy()
    configure_backend(policy)
    model = load_checkpoint(checkpoint, policy)
    return lambda i: generate(GenerationRequest(**JOB, seed=i), model)


def engine_runner(engine: Engine):
    def run(i):
        job = engine.generate(GenerationRequest(**JOB, seed=i, do_not_save_samples=True), timeout=600)
        assert job.state.value == "done", job.error
    return run


def http_runner(base: str):
    def run(i):
        body = json.dumps({**JOB, "seed": i}).encode()
        request = urllib.request.Request(f"{base}/txt2img", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            assert response.status == 200 and json.loads(response.read())["images"]
    return run


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "webui.py", "--nowebui", "--port", str(port), "--data-dir", str(root),
                             "--no-download-prompt"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/sdapi/v1"
    _wait_for(f"{base}/samplers", proc)
    return proc, base


def timed_jobs(run, first: int, count: int) -> list[float]:
    for i in range(WARM_UP):
        run(first + i)
    times = []
    for i in range(first, first + count):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return times


def in_own_process(row: str, root: Path, first: int, count: int) -> list[float]:
    """Run a row in a fresh process. Each row gets a process with one thread doing torch work: a second
    thread's OpenMP pool slows the first one's work while it exists (here a job took 52 ms, and 101 ms once
    the engine's worker thread had run jobs in the same process, until that thread ended), which would
    charge one row for another's presence."""
    proc = subprocess.run([sys.executable, __file__, "--row", row, "--data-dir", str(root), "--first", str(first),
                           "--jobs", str(count)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{row} row failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_row(row: str, root: Path, first: int, count: int) -> list[float]:
    """The --row entry point: a row's per-job seconds, in this process."""
    if row == "core":
        return timed_jobs(core_runner(root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"), first, count)
    engine = Engine(Paths.from_flags(data_dir=str(root)), choose_policy(), Settings())
    try:
        return timed_jobs(engine_runner(engine), first, count)
    finally:
        engine.shutdown()


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"webui.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def run(jobs: int, smoke: bool) -> dict:
    """Rows take turns, a round of jobs each, so load elsewhere on the machine (or its drift) falls on all alike."""
    rounds = 1 if smoke else ROUNDS
    times: dict[str, list[float]] = {"core": [], "engine": [], "http": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir_with_tiny_model(root)
        proc, base = start_server(root)
        try:
            for r in range(rounds):
                count = jobs // rounds + (1 if r < jobs % rounds else 0)
                first = sum(len(v) for v in times.values())
                times["core"] += in_own_process("core", root, first, count)
                times["engine"] += in_own_process("engine", root, first, count)
                times["http"] += timed_jobs(http_runner(base), first, count)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # Medians for the ratios: one job stalled by something else on the machine shouldn't decide them.
    core, engine, http = (statistics.median(times[name]) for name in ("core", "engine", "http"))
    means = {name: statistics.fmean(values) for name, values in times.items()}
    results = {"smoke": smoke, "jobs": jobs, "core_s_per_job": core, "engine_s_per_job": engine,
               "http_s_per_job": http, "engine_over_core": engine / core, "http_over_core": http / core,
               "mean_s_per_job": means, "jobs_per_s": {name: 1 / mean for name, mean in means.items()}}
    print(f"{jobs} tiny txt2img jobs ({JOB['width']}², {JOB['steps']} steps), median per job (mean):")
    print(f"  core   generate()             {core * 1000:6.1f} ms ({means['core'] * 1000:.1f})")
    print(f"  engine queue + worker         {engine * 1000:6.1f} ms ({means['engine'] * 1000:.1f})  "
          f"-> {engine / core:.2f}x core")
    print(f"  http   POST /sdapi/v1/txt2img {http * 1000:6.1f} ms ({means['http'] * 1000:.1f})  "
          f"-> {http / core:.2f}x core, +{(http - core) * 1000:.1f} ms per job")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="3 jobs each way: proves the bench runs")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--row", choices=("core", "engine"), help=argparse.SUPPRESS)  # one row, in a child
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, Path(args.data_dir), args.first, args.jobs)))
        return
    results = run(3 if args.smoke else args.jobs, args.smoke)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "api_throughput-smoke.json" if args.smoke else "api_throughput.json"
    (RESULTS_DIR / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
