"""Command-line flags, named as in A1111 where they mean the same thing."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webui.py", description="Atelier: a Stable Diffusion web UI")
    paths = p.add_argument_group("paths")
    paths.add_argument("--data-dir", help="root for models/, embeddings/, outputs/ and config.json")
    paths.add_argument("--ckpt", help="checkpoint to load at start (also added to the list)")
    paths.add_argument("--ckpt-dir", help="folder of Stable Diffusion checkpoints")
    paths.add_argument("--vae-dir", help="folder of VAE files")
    paths.add_argument("--lora-dir", help="folder of LoRA files")
    paths.add_argument("--embeddings-dir", help="folder of textual-inversion embeddings")
    paths.add_argument("--hypernetwork-dir", help="folder of hypernetworks")
    server = p.add_argument_group("server")
    server.add_argument("--port", type=int, help="port (default 7860; 7861 with --nowebui)")
    server.add_argument("--listen", action="store_true", help="listen on all interfaces instead of 127.0.0.1")
    server.add_argument("--api", action="store_true", help="serve the HTTP API beside the UI")
    server.add_argument("--nowebui", action="store_true", help="serve only the HTTP API")
    compute = p.add_argument_group("compute")
    compute.add_argument("--use-cpu", nargs="*", default=[], help="'all' to run everything on the CPU")
    compute.add_argument("--precision", choices=("full", "autocast", "half"), default="autocast",
                         help="'full' forces fp32")
    compute.add_argument("--no-half", action="store_true", help="keep models in fp32")
    compute.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    p.add_argument("--exit", action="store_true", help="set up, then exit without starting the server")
    p.add_argument("--no-download-prompt", action="store_true",
                   help="never offer to download a checkpoint when none is found")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
