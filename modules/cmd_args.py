"""Command-line flags, named as in A1111 where they mean the same thing."""
from __future__ import annotations

import argparse


def api_auth_list(value: str) -> str:
    """`user:pass[,user2:pass2]`; the password may hold colons, the user may not be empty."""
    for pair in value.split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise argparse.ArgumentTypeError("expected user:password[,user2:password2]")
    return value


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
    server.add_argument("--api-auth", type=api_auth_list, default=None,
                        help="HTTP Basic credentials for every API route: user:password[,user2:password2]")
    server.add_argument("--gradio-auth", type=api_auth_list, default=None,
                        help="HTTP Basic credentials for the web UI and its routes: user:password[,user2:password2]")
    server.add_argument("--auth-file", default=None,
                        help="a file of user:password lines; they may sign in to both the UI and the API")
    server.add_argument("--api-log", action="store_true", help="log every API request")
    server.add_argument("--cors-allow-origins", default=None,
                        help="comma-separated origins allowed by CORS (no CORS headers unless given)")
    server.add_argument("--cors-allow-origins-regex", default=None, help="regex of origins allowed by CORS")
    server.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="allow installing extensions from the UI even with --listen")
    server.add_argument("--max-upload-size", type=float, default=50.0, metavar="MB",
                        help="largest request body in MB (base64 images in JSON, uploads); 0 = no limit")
    server.add_argument("--max-pixels", type=int, default=8192 * 8192, metavar="N",
                        help="most pixels in a decoded input image, and in a request's width x height x batch_size "
                             "(default 8192x8192); 0 = no limit")
    server.add_argument("--webhook-allow", default=None, metavar="HOSTS",
                        help="comma-separated host names, IPs or CIDRs that job webhooks may call even when the policy "
                             "would refuse them (link-local always, and with --listen loopback and private "
                             "addresses), e.g. localhost,10.0.0.0/8,bot.example.com")
    server.add_argument("--max-queued-per-client", type=int, default=0, metavar="N",
                        help="most generation jobs one API client (user with a password, else IP) may have waiting "
                             "or running; more is a 429 (0 = no limit; 20 suits a shared server)")
    server.add_argument("--api-rate-limit", type=int, default=0, metavar="N",
                        help="most generation requests one API client may send a minute; more is a 429 (0 = off)")
    server.add_argument("--exit-wait", type=float, default=30.0, metavar="SECONDS",
                        help="at exit, how long to wait for a running job to stop at its next step (default 30)")
    extensions = p.add_argument_group("extensions")
    extensions.add_argument("--disable-all-extensions", action="store_true",
                            help="load no extension, built-in or installed (the disabled list is kept)")
    extensions.add_argument("--disable-extra-extensions", action="store_true",
                            help="load only the built-in extensions")
    compute = p.add_argument_group("compute")
    compute.add_argument("--use-cpu", nargs="*", default=[], help="'all' to run everything on the CPU")
    compute.add_argument("--precision", choices=("full", "autocast", "half"), default="autocast",
                         help="'full' forces fp32")
    compute.add_argument("--no-half", action="store_true", help="keep models in fp32")
    compute.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    workers = p.add_argument_group("workers (docs/scale.md)")
    workers.add_argument("--workers", choices=("local", "ray"), default="local",
                         help="'ray' runs jobs on Ray actors, one per GPU (pip install -r requirements-ray.txt)")
    workers.add_argument("--ray-address", default=None,
                         help="'auto' or ray://host:port of a running Ray cluster; without it a local Ray starts")
    workers.add_argument("--ray-actors", type=int, default=None, metavar="N",
                         help="actors to start (default: one per GPU in the cluster, or 1 without GPUs)")
    workers.add_argument("--ray-retries", type=int, default=1, metavar="N",
                         help="times a job is retried on another actor when its actor dies (0: it fails)")
    compute.add_argument("--medvram", action="store_true",
                         help="keep only the part in use (text encoder, UNet or VAE) on the GPU; no effect on the CPU")
    compute.add_argument("--lowvram", action="store_true",
                         help="as --medvram, and move the UNet's blocks to the GPU one at a time (slow); "
                              "no effect on the CPU")
    p.add_argument("--exit", action="store_true", help="set up, then exit without starting the server")
    p.add_argument("--no-download-prompt", action="store_true",
                   help="never offer to download a checkpoint when none is found")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
