"""The HTTP API: A1111-compatible /sdapi/v1 and our job API /atelier/v1 (docs/api.md).

A thin adapter: bodies become GenerationRequests, which go through the engine's one job queue.

    models.py      request/response bodies (A1111 field names and API defaults)
    generation.py  body -> GenerationRequest (with every check the worker would make), job -> A1111 response
    service.py     submit/wait on the queue, per-job API metadata, webhooks, preview encoding
    sdapi.py       /sdapi/v1 routes            jobs_api.py  /atelier/v1 routes and SSE events
    files.py       saved images, only from the output folders   routes.py  prefix helper
    auth.py        --api-auth, --api-log, CORS  errors.py   every error as JSON naming the field
    images.py      base64 <-> PIL               lists.py    lists that features fill in later (LoRA, ...)
    extensions_api.py  /atelier/v1/extensions: install, enable/disable, update, uninstall
    merge_api.py   /atelier/v1/merge: the checkpoint merger
    server.py      the one app for UI + API (auth, CSRF, CORS middleware), served by uvicorn
    limits.py      --max-upload-size (413 before a body is read); JSON bodies that are text (CheckedJsonRoute)
    client_limits.py   --max-queued-per-client, --api-rate-limit (429 with Retry-After)
    webhook_policy.py  where webhooks may point (--webhook-allow), and the pinned call
"""
from __future__ import annotations

from typing import Any


def mount_api(app, engine, args) -> Any:
    """Add the API routes, error handlers and (with --api-auth) HTTP Basic to `app`; returns the ApiService."""
    from . import auth, errors, extensions_api, files, jobs_api, lists, merge_api, sdapi
    from .service import ApiService

    lists.register("script-info", lambda e: e.scripts.script_info())
    lists.register("extensions", lambda e: [x.to_dict() for x in e.extensions.manager.list()] if e.extensions else [])

    service = ApiService(engine, args)
    errors.install(app)
    sdapi.register(app, service)
    jobs_api.register(app, service)
    extensions_api.register(app, engine)
    merge_api.register(app, engine)
    files.register(app, engine)
    auth.install(app, args)
    app.state.api = service
    return service
