"""One HTTP server for the UI and the API: FastAPI app, Gradio mounted at /, served by uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys

from fastapi import FastAPI

from modules import extension_callbacks
from modules.engine import Engine

log = logging.getLogger(__name__)


def create_app(engine: Engine, args: argparse.Namespace) -> FastAPI:
    app = FastAPI(title="Atelier", docs_url="/docs", redoc_url=None)
    from modules.api.limits import CheckedJsonRoute

    app.router.route_class = CheckedJsonRoute  # before any route is added: every JSON body is checked text
    if args.api or args.nowebui:
        from modules.api import mount_api

        mount_api(app, engine, args)
    from modules.api.auth import install_cors, install_origin_check, install_ui_auth
    from modules.api.limits import install_body_limit

    install_body_limit(app, args)  # nothing reads a body before this middleware has bounded it
    install_ui_auth(app, args)
    install_origin_check(app, args)
    install_cors(app, args)  # after the API's auth middleware, so it wraps it and answers preflights
    blocks = None
    if not args.nowebui:
        from modules.ui import build_ui

        blocks = build_ui(engine, args)
    # Extension routes go in before Gradio takes "/": routes added after that mount are never reached.
    extension_callbacks.run_app_started(app, blocks)
    if blocks is not None:
        import gradio as gr

        app = gr.mount_gradio_app(app, blocks, path="/")
    return app


def host_and_port(args: argparse.Namespace) -> tuple[str, int]:
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    return host, args.port or (7861 if args.nowebui else 7860)


def serve(engine: Engine, args: argparse.Namespace) -> None:
    import uvicorn

    from modules.api.auth import listen_warning

    host, port = host_and_port(args)
    app = create_app(engine, args)
    warning = listen_warning(args)
    if warning:
        banner = "!" * 100
        log.warning("%s", warning)
        print(f"\n{banner}\n{warning}\n{banner}\n", file=sys.stderr, flush=True)
    log.info("serving on http://%s:%d", host, port)
    # Event streams (SSE) never end by themselves: give open connections a few seconds at shutdown, then close.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
