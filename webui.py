"""Start Atelier: flags → settings → engine (→ server, once the UI and API land)."""
from __future__ import annotations

import logging
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from modules import cmd_args  # noqa: E402
from modules.devices import choose_policy  # noqa: E402
from modules.paths import Paths  # noqa: E402

log = logging.getLogger("atelier")

DEFAULT_MODEL = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors", "about 4 GB")


def offer_download(paths: Paths) -> None:
    """Ask before downloading the default SD1.5 checkpoint; never download unasked or offline."""
    if not sys.stdin.isatty():
        return
    repo, filename, size = DEFAULT_MODEL
    answer = input(f"Download {filename} ({size}) from Hugging Face into {paths.ckpt_dir}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        return
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo, filename, local_dir=str(paths.ckpt_dir))  # shows a progress bar
    except Exception as e:  # offline, or the hub refused
        print(f"Download failed ({e}). Put a checkpoint in {paths.ckpt_dir} by hand.")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    args = cmd_args.parse(argv)
    paths = Paths.from_flags(args.data_dir, args.ckpt_dir, args.vae_dir, args.lora_dir, args.embeddings_dir,
                             args.hypernetwork_dir)
    paths.ensure()
    policy = choose_policy(use_cpu="all" in args.use_cpu, precision=args.precision, no_half=args.no_half,
                           no_half_vae=args.no_half_vae, medvram=args.medvram, lowvram=args.lowvram)
    from modules.engine import Engine

    engine = Engine(paths, policy)
    engine.exit_wait = args.exit_wait
    from modules.extensions import load_extensions, unload_extensions

    engine.extensions = load_extensions(engine, args)
    for failure in engine.extensions.failures:
        log.warning("extension failed to load: %s", failure)
    if args.ckpt:
        engine.models.checkpoints.add_file(args.ckpt)
        engine.settings.set("sd_model_checkpoint", engine.models.checkpoints.items[0].name, save=False)
    for warning in engine.settings.warnings:
        log.warning(warning)
    if not engine.models.checkpoints.items:
        print(f"No checkpoint found. Put a .safetensors checkpoint in {paths.ckpt_dir}")
        if not args.no_download_prompt and not args.exit:
            offer_download(paths)
            engine.models.refresh()
    workers = None
    if args.workers == "ray":  # the only place Ray is imported (docs/scale.md)
        try:
            from modules.ray_workers import start_ray_workers
        except ImportError as e:
            raise SystemExit(f"--workers ray needs Ray ({e}): .venv/bin/pip install -r requirements-ray.txt")
        workers = start_ray_workers(engine, args)
    log.info("device: %s; %d checkpoint(s); ready in %.1f s", policy.name, len(engine.models.checkpoints.items),
             time.monotonic() - started)
    from modules import clean_exit

    clean_exit.exit_on_sigterm()  # so the finally below (and its wait for a running job) runs on SIGTERM too
    try:
        if not args.exit:
            from modules.api.server import serve

            serve(engine, args)
    except KeyboardInterrupt:  # Ctrl+C: uvicorn stops serving, then raises it again here
        log.info("interrupted: stopping")
    finally:
        engine.shutdown()  # first: the running job stops at a step before extensions are unloaded under it
        unload_extensions(engine)
        if workers is not None:
            workers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
