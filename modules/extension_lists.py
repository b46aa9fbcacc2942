"""Lists that extensions serve through the HTTP API (`/sdapi/v1/loras`, `/sdapi/v1/embeddings`, ...).

An extension registers a provider (no arguments, returns the list in A1111's JSON shape) and optionally a
refresh function (what `POST /sdapi/v1/refresh-<name>` does). modules/api reads them from here; this module
knows nothing of HTTP.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

# The names A1111's API serves that features in extensions fill in.
LIST_NAMES = ("loras", "embeddings", "hypernetworks", "face-restorers")

_providers: dict[str, Callable[[], Any]] = {}
_refreshers: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()


def register_api_list(name: str, provider: Callable[[], Any],
                      refresh: Optional[Callable[[], None]] = None) -> None:
    """Serve `provider()` at GET /sdapi/v1/<name>; `refresh()` runs for POST /sdapi/v1/refresh-<name>."""
    if name not in LIST_NAMES:
        raise KeyError(f"no API list named {name!r}; known: {', '.join(LIST_NAMES)}")
    with _lock:
        _providers[name] = provider
        if refresh is not None:
            _refreshers[name] = refresh


def unregister_api_list(name: str, provider: Optional[Callable[[], Any]] = None) -> None:
    with _lock:
        if provider is None or _providers.get(name) is provider:
            _providers.pop(name, None)
            _refreshers.pop(name, None)


def provider(name: str) -> Optional[Callable[[], Any]]:
    return _providers.get(name)


def get_list(name: str) -> Any:
    """The list, or None when no extension serves it."""
    found = _providers.get(name)
    return found() if found is not None else None


def refresh_list(name: str) -> bool:
    """Run the refresh of `name`; False when none is registered."""
    found = _refreshers.get(name)
    if found is None:
        return False
    found()
    return True
