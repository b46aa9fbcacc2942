"""The HTTP API: A1111-compatible /sdapi/v1 and our job API /atelier/v1 (filled in by the API issue)."""
from __future__ import annotations


def mount_api(app, engine, args) -> None:
    """Add the API routes to `app`."""
