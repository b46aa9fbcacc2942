"""Merge bench: peak memory of the streamed checkpoint merger on two full-size SD1-shaped checkpoints.

    .venv/bin/python bench/merge.py            # weighted sum of two 2.1 GB fp16 files -> fp16
    .venv/bin/python bench/merge.py --naive    # also the load-everything way, for comparison
    .venv/bin/python bench/merge.py --smoke    # tiny checkpoints: only checks that the bench runs

The inputs (random weights, SD1.5 shapes and key names, fp16) are written once into bench/results/ tensor by
tensor. Each merge runs in its own process, so its peak RSS (ru_maxrss) is the merge's alone. Prints peak RSS
against the input sizes and writes bench/results/merge.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / "results"

import torch  # noqa: E402

MB = 1024 * 1024


def sd1_shapes() -> dict[str, tuple]:
    """SD1.5's keys and shapes in the original layout, from the shipped configs, without allocating weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_models import export_ldm_state_dict

    configs = ROOT / "configs" / "sd1"
    read = lambda name: json.loads((configs / name / "config.json").read_text())  # noqa: E731
    with init_empty_weights():
        components = {
            "unet": UNet2DConditionModel.from_config(read("unet")),
            "vae": AutoencoderKL.from_config(read("vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**{k: v for k, v in read("text_encoder").items()
                                                            if not k.startswith("_")})),
        }
    return {k: tuple(v.shape) for k, v in export_ldm_state_dict(components, "sd1").items()}


def random_checkpoint(path: Path, shapes: dict[str, tuple], seed: int) -> Path:
    """Write random fp16 weights one tensor at a time (the generator never holds the model either)."""
    from modules.merging import _write_safetensors

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    _write_safetensors(path, list(shapes), shapes, lambda k: torch.float16,
                       lambda k, rows: torch.randn((rows[1] - rows[0], *shapes[k][1:]) if shapes[k] else (),
                                                   generator=generator) * 0.02, {"format": "pt"}, None)
    return path


def run_child(mode: str, a: Path, b: Path, out_dir: Path) -> dict:
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
start = time.perf_counter()
if {mode!r} == "stream":
    from modules.merging import merge_checkpoints
    result = merge_checkpoints(Path({str(a)!r}), Path({str(b)!r}), output_dir=Path({str(out_dir)!r}),
                               multiplier=0.5, precision="fp16", custom_name="bench-stream", save_metadata=False)
    out = result.path
else:
    import torch
    from safetensors.torch import load_file, save_file
    ta, tb = load_file({str(a)!r}), load_file({str(b)!r})
    merged = {{k: (ta[k].float() * 0.5 + tb[k].float() * 0.5).half() for k in ta}}
    out = Path({str(out_dir)!r}) / "bench-naive.safetensors"
    save_file(merged, str(out))
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "output_mb": out.stat().st_size / 2**20}}))
out.unlink()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--naive", action="store_true", help="also measure load_file + dict merge + save_file")
    parser.add_argument("--smoke", action="store_true", help="tiny checkpoints, no figures worth keeping")
    args = parser.parse_args()

    if args.smoke:
        from tests.tiny_models import save_tiny_checkpoint

        folder = CACHE / "merge-smoke"
        a = folder / "a.safetensors"
        b = folder / "b.safetensors"
        if not a.exists():
            save_tiny_checkpoint(a, "sd1", seed=0)
            save_tiny_checkpoint(b, "sd1", seed=1)
    else:
        shapes = sd1_shapes()
        start = time.perf_counter()
        a = random_checkpoint(CACHE / "sd15-shaped-a-fp16.safetensors", shapes, seed=0)
        b = random_checkpoint(CACHE / "sd15-shaped-b-fp16.safetensors", shapes, seed=1)
        print(f"inputs ready in {time.perf_counter() - start:.1f} s")
    inputs_mb = (a.stat().st_size + b.stat().st_size) / MB
    rows = {"stream": run_child("stream", a, b, a.parent)}
    if args.naive:
        rows["naive"] = run_child("naive", a, b, a.parent)
    baseline = run_child_baseline()
    print(f"inputs: A {a.stat().st_size / MB:.0f} MB + B {b.stat().st_size / MB:.0f} MB = {inputs_mb:.0f} MB "
          f"(a process that only imports the merger peaks at {baseline:.0f} MB)")
    for mode, row in rows.items():
        print(f"{mode:>6}: peak RSS {row['peak_rss_mb']:.0f} MB = {row['peak_rss_mb'] / inputs_mb:.2f}x the inputs "
              f"({row['peak_rss_mb'] - baseline:.0f} MB above that); {row['seconds']:.1f} s; "
              f"output {row['output_mb']:.0f} MB")
    if not args.smoke:
        report = {"inputs_mb": inputs_mb, "imports_only_mb": baseline, **rows}
        (CACHE / "merge.json").write_text(json.dumps(report, indent=2))


def run_child_baseline() -> float:
    """Peak RSS of a process that only imports what the streamed merge imports."""
    code = (f"import sys, resource; sys.path.insert(0, {str(ROOT)!r}); import modules.merging; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
