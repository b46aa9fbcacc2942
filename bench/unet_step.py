"""One CFG UNet step (batch 2) on a full-size SD1.5 UNet: plain, with packed conv weights (`cpu_prepack`), and
compiled (`unet_compile`), in turns on the very same module.

    .venv/bin/python bench/unet_step.py                 # 256², the policy's dtype (bf16 on a CPU with native bf16)
    .venv/bin/python bench/unet_step.py --dtype fp32    # what a CPU without bf16 runs
    .venv/bin/python bench/unet_step.py --compile       # adds torch.compile: its compile time, then its step
    .venv/bin/python bench/unet_step.py --smoke         # tiny model, no compile: only checks the bench runs

The compile row is opt-in because inductor builds C++ for minutes on a small CPU. Its first call is reported
apart as the compile time, as the app's first image after a load pays it. Writes bench/results/unet_step.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.core import CACHE, full_size_checkpoint, timed, tiny_checkpoint  # noqa: E402
from modules import cpu_prepack  # noqa: E402
from modules.devices import DevicePolicy, choose_policy, configure_backend  # noqa: E402
from modules.model_loading import load_checkpoint  # noqa: E402


def step_fn(unet, size: int, factor: int):
    param = next(unet.parameters())
    x = torch.randn(2, unet.config.in_channels, size // factor, size // factor, dtype=param.dtype)
    x = x.to(memory_format=torch.channels_last) if param.is_contiguous(memory_format=torch.channels_last) else x
    context = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=param.dtype)
    t = torch.tensor([500, 500])

    def run(module=unet):
        with torch.inference_mode():
            return module(x, t, encoder_hidden_states=context).sample
    return run


def in_turns(rows: dict, rounds: int) -> dict[str, float]:
    """Best seconds per row; each row is (prepare, call). Rows alternate, so load elsewhere hits all alike."""
    best = {name: float("inf") for name in rows}
    for _ in range(rounds):
        for name, (prepare, call) in rows.items():
            prepare()
            call()  # a warm-up after each switch: a new packing, or a first call after the other row
            best[name] = min(best[name], timed(call))
    return best


def run(smoke: bool, size: int, dtype: str, compile_row: bool) -> dict:
    policy = choose_policy()
    if dtype == "fp32":
        policy = DevicePolicy(policy.device, torch.float32, torch.float32, policy.channels_last)
    configure_backend(policy)
    model = load_checkpoint(tiny_checkpoint() if smoke else full_size_checkpoint(), policy)
    size = 64 if smoke else size
    unet, call = model.unet, step_fn(model.unet, size, model.vae_scale_factor)
    results: dict = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "smoke": smoke, "size": size,
                     "dtype": str(policy.dtype).removeprefix("torch."), "channels_last": policy.channels_last}
    reason = cpu_prepack.unavailable_reason(policy.device)
    rows = {"plain": (lambda: cpu_prepack.sync([unet], False), call)}
    if reason is None:
        rows["cpu_prepack"] = (lambda: cpu_prepack.sync([unet], True), call)
    best = in_turns(rows, 1 if smoke else 3)
    cpu_prepack.sync([unet], False)
    if compile_row and not smoke:
        compiled = torch.compile(unet, dynamic=False)  # a wrapper: `unet` itself stays eager for the other row
        start = time.perf_counter()
        call(compiled)
        results["compile_s"] = time.perf_counter() - start
        results["compiled_turns_s"] = in_turns({"plain": (lambda: None, call),
                                                "compiled": (lambda: None, lambda: call(compiled))}, 3)
    results["step_s"] = best
    label = f"{results['dtype']}{' + channels_last' if policy.channels_last else ''}, {size}², batch 2"
    print(f"UNet step ({label}), best of {1 if smoke else 3} in turns:")
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds:.3f}s  -> {best['plain'] / seconds:.2f}x plain")
    if reason:
        print(f"  cpu_prepack not measured: {reason}")
    if "compile_s" in results:
        turns = results["compiled_turns_s"]
        print(f"torch.compile (no cpu_prepack): first call, which compiles, {results['compile_s']:.1f}s; then "
              f"{turns['compiled']:.3f}s a step against plain {turns['plain']:.3f}s in the same turns -> "
              f"{turns['plain'] / turns['compiled']:.2f}x plain")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny model, one round, no compile")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", choices=("policy", "fp32"), default="policy")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row (minutes to compile)")
    args = parser.parse_args()
    results = run(args.smoke, args.size, args.dtype, args.compile)
    CACHE.mkdir(parents=True, exist_ok=True)
    name = "unet_step-smoke.json" if args.smoke else f"unet_step-{results['dtype']}-{results['size']}.json"
    (CACHE / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
