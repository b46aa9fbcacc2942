"""Memory bench: RSS over repeated checkpoint switches, and hires fix's peak RSS against a plain txt2img.

    .venv/bin/python bench/memory.py             # full-size SD1.5-architecture random weights (bench/core.py's)
    .venv/bin/python bench/memory.py --smoke     # tiny models: proves the bench runs, in seconds

Switches: two checkpoints (two links to one file; the manager keys models by path, so they are two models)
alternated 10 times through ModelManager, RSS printed after each: once with the default RAM cache
(`sd_checkpoint_cache` 1: both stay in RAM, so from the third switch on nothing loads) and once with no cache
(every switch a real load). A leak shows as a climb from switch to switch. After unloading, RSS is printed again
and after glibc's malloc_trim, which tells memory the allocator keeps for reuse from memory still referenced.
Nothing is asserted.
Hires: peak RSS of one 256² txt2img against the same job with hires fix ×2 (to 512²), side by side.
Writes bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.core import CACHE as RESULTS_DIR, PeakRSS, full_size_checkpoint, tiny_checkpoint  # noqa: E402
from modules.devices import DevicePolicy, choose_policy, configure_backend  # noqa: E402
from modules.model_manager import ModelManager  # noqa: E402
from modules.paths import Paths  # noqa: E402
from modules.processing import generate  # noqa: E402
from modules.request import GenerationRequest  # noqa: E402
from modules.settings import Settings  # noqa: E402


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def link_checkpoints(source: Path, folder: Path) -> list[str]:
    """Two names for one file. The tiny checkpoint's sibling config is linked along with it."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for tag in ("a", "b"):
        target = folder / f"bench-{tag}.safetensors"
        target.symlink_to(source)
        config = source.with_name(source.stem + ".config.json")
        if config.exists():
            (folder / f"bench-{tag}.config.json").symlink_to(config)
        names.append(target.name)
    return names


def malloc_trim() -> bool:
    """Hand the allocator's free pages back to the OS (glibc only), so RSS shows what is still in use."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def switches(source: Path, policy: DevicePolicy, count: int, cache: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.from_flags(data_dir=tmp)
        names = link_checkpoints(source, paths.ckpt_dir)
        settings = Settings()
        settings.set("sd_checkpoint_cache", cache, save=False)
        manager = ModelManager(paths, policy, settings)
        after = []
        for i in range(count):
            manager.get(names[i % 2])
            gc.collect()
            after.append(rss_gb())
            print(f"  switch {i + 1:2d} -> {names[i % 2]}: RSS {after[-1]:.2f} GB")
        manager.unload()
        gc.collect()
        unloaded = rss_gb()
        trimmed = rss_gb() if malloc_trim() else None
        print(f"  after unload: RSS {unloaded:.2f} GB" + (f"; after malloc_trim {trimmed:.2f} GB" if trimmed else ""))
    return {"after_switch_gb": after, "after_unload_gb": unloaded, "after_trim_gb": trimmed}


def hires_peaks(source: Path, policy: DevicePolicy, size: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.from_flags(data_dir=tmp)
        [name, _] = link_checkpoints(source, paths.ckpt_dir)
        model, _ = ModelManager(paths, policy, Settings()).get(name)
        base = dict(prompt="a harbour at dusk", negative_prompt="blurry", seed=3, steps=steps, width=size,
                    height=size, sampler_name="Euler", cfg_scale=7.0)
        generate(GenerationRequest(**{**base, "steps": 1}), model)  # warm up
        peaks = {}
        for label, extra in (("plain", {}), ("hires x2", dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                                                                  denoising_strength=0.5))):
            gc.collect()
            with PeakRSS() as peak:
                generate(GenerationRequest(**base, **extra), model)
            peaks[label] = peak.peak / 1e9
        return peaks


def run(smoke: bool) -> dict:
    policy = choose_policy()
    configure_backend(policy)
    source = tiny_checkpoint() if smoke else full_size_checkpoint()
    results: dict = {"smoke": smoke, "policy": policy.name, "checkpoint": source.name}
    print(f"RSS before any load: {rss_gb():.2f} GB")
    count = 4 if smoke else 10
    for cache in (1, 0):
        print(f"{count} checkpoint switches ({source.name}, {policy.name}), sd_checkpoint_cache {cache}:")
        found = switches(source, policy, count, cache)
        after = found["after_switch_gb"]
        results[f"cache_{cache}"] = found
        print(f"RSS after switch 2 -> after switch {count}: {after[1]:.2f} -> {after[-1]:.2f} GB "
              f"({after[-1] / after[1]:.2f}x)")

    size, steps = (64, 1) if smoke else (256, 4)
    peaks = hires_peaks(source, policy, size, steps)
    results.update(hires_size=size, hires_steps=steps, peak_rss_gb=peaks)
    print(f"peak RSS, {size}² txt2img, {steps} steps: plain {peaks['plain']:.2f} GB, with hires fix x2 "
          f"{peaks['hires x2']:.2f} GB -> {peaks['hires x2'] / peaks['plain']:.2f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny models: proves the bench runs")
    args = parser.parse_args()
    results = run(args.smoke)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / ("memory-smoke.json" if args.smoke else "memory.json")).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
