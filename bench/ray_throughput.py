"""Ray workers: jobs per second with 1 actor and with 2, side by side in one run, on the tiny model.

    .venv/bin/python bench/ray_throughput.py            # 16 jobs of 64x64, 20 steps, per setting
    .venv/bin/python bench/ray_throughput.py --smoke    # 2 jobs of 1 step: only checks that the bench still runs

Needs `pip install -r requirements-ray.txt`. Starts a local Ray with one CPU per actor (each actor's torch then
uses one thread), warms every actor up (its checkpoint load is not timed), then times the same jobs through the
engine's queue, as the API would queue them. Prints the ratio and writes bench/results/ray_throughput.json.
On a machine with 2 CPU cores shared with other work the ratio is only indicative: on GPUs each actor owns a
whole device and the ratio is what matters there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from modules import cmd_args  # noqa: E402
from modules.devices import DevicePolicy  # noqa: E402
from modules.engine import Engine  # noqa: E402
from modules.paths import Paths  # noqa: E402
from modules.ray_workers import start_ray_workers  # noqa: E402
from modules.request import GenerationRequest  # noqa: E402
from modules.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CPU_FP32 = DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, False)


def make_engine(work: Path, ckpt_dir: Path) -> Engine:
    paths = Paths.from_flags(data_dir=str(work), ckpt_dir=str(ckpt_dir), outputs_dir=str(work / "outputs"))
    settings = Settings(file=work / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    return Engine(paths, CPU_FP32, settings)


def request(seed: int, steps: int) -> GenerationRequest:
    # Not saved: this times generation and the trip back, not the disk.
    return GenerationRequest(prompt="a lighthouse at dawn", seed=seed, steps=steps, width=64, height=64,
                             sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)


def throughput(actors: int, jobs: int, steps: int, work: Path, ckpt_dir: Path) -> dict:
    engine = make_engine(work / f"actors-{actors}", ckpt_dir)
    dispatcher = start_ray_workers(engine, cmd_args.parse(["--workers", "ray"]), policy=CPU_FP32, actors=actors)
    try:
        warm = [engine.submit(request(i, 1)) for i in range(2 * actors)]  # every actor loads its model now
        for job in warm:
            engine.queue.wait(job, 300)
        started = time.perf_counter()
        timed = [engine.submit(request(1000 + i, steps)) for i in range(jobs)]
        for job in timed:
            engine.queue.wait(job, 600)
        seconds = time.perf_counter() - started
        states = {job.state.value for job in timed}
        assert states == {"done"}, f"jobs ended {states}: {[job.error for job in timed if job.error]}"
        return {"actors": actors, "jobs": jobs, "seconds": seconds, "jobs_per_second": jobs / seconds,
                "per_actor": {s["name"]: s["jobs_done"] for s in dispatcher.stats()}}
    finally:
        engine.shutdown()
        dispatcher.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 jobs of 1 step: checks the bench runs, no timing")
    args = parser.parse_args()
    jobs, steps = (2, 1) if args.smoke else (args.jobs, args.steps)
    from tests.tiny_models import save_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="atelier-ray-bench-") as tmp:
        work = Path(tmp)
        ckpt_dir = work / "models" / "Stable-diffusion"
        ckpt_dir.mkdir(parents=True)
        save_tiny_checkpoint(ckpt_dir / "tiny-sd1.safetensors", "sd1")
        ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
        try:
            runs = [throughput(n, jobs, steps, work, ckpt_dir) for n in (1, 2)]
        finally:
            ray.shutdown()
    one, two = runs
    ratio = two["jobs_per_second"] / one["jobs_per_second"]
    print(f"tiny model, 64x64, {steps} steps, {jobs} jobs per setting, {os.cpu_count()} CPU core(s) here")
    for run in runs:
        print(f"  {run['actors']} actor(s): {run['seconds']:.2f} s, {run['jobs_per_second']:.2f} jobs/s "
              f"(jobs per actor: {run['per_actor']})")
    print(f"throughput ratio, 2 actors / 1 actor: {ratio:.2f}x")
    print("Indicative only: measured on CPU cores this machine shares with other work; on GPUs each actor owns "
          "a whole device.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ray_throughput-smoke.json" if args.smoke else "ray_throughput.json"
    (RESULTS / name).write_text(json.dumps({"smoke": args.smoke, "steps": steps, "runs": runs, "ratio": ratio,
                                            "cpu_count": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
