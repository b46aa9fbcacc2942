"""/atelier/v1/extensions: list, install (from a source or an index), enable or disable, check for updates,
update, uninstall.

Installing runs code from elsewhere, so it is refused while listening on a non-loopback address unless
--enable-insecure-extension-access is given (the manager checks; we map its errors to 403 and 400).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from modules.extensions import ExtensionAccessError, ExtensionError, ExtensionNotFound

from .errors import ApiError
from .routes import Routes


class InstallBody(BaseModel):
    source: str = Field(..., description="a git URL, a local folder or a .zip file")
    name: Optional[str] = Field(None, description="folder name under extensions/ (default: from the source)")
    branch: Optional[str] = None


class IndexInstallBody(BaseModel):
    name: str = Field(..., description="an entry's name (or URL) in the index")
    index_url: Optional[str] = Field(None, description="default: the extensions_index_url setting")


class EnableBody(BaseModel):
    enabled: bool


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except ExtensionAccessError as e:
        raise ApiError(403, str(e), error="Forbidden") from None
    except ExtensionNotFound as e:
        raise ApiError(404, str(e), field="name") from None
    except ExtensionError as e:
        raise ApiError(400, str(e)) from None


def register(app, engine) -> None:
    router = Routes(app, "/atelier/v1/extensions", ["extensions"])

    def manager():
        if engine.extensions is None:
            raise ApiError(503, "extensions are not loaded in this process")
        return engine.extensions.manager

    @router.get("")
    async def list_extensions() -> list[dict[str, Any]]:
        return [ext.to_dict() for ext in await _call(manager().list)]

    @router.post("/install")
    async def install(body: InstallBody) -> dict[str, Any]:
        return (await _call(manager().install, body.source, body.name, body.branch)).to_dict()

    def available(index_url: Optional[str]) -> list[dict[str, Any]]:
        manager().check_access()  # reading an index makes the server fetch a URL: the same rule as installing
        return [vars(entry) for entry in manager().available(index_url)]

    @router.get("/available")
    async def list_available(index_url: Optional[str] = None) -> list[dict[str, Any]]:
        return await _call(available, index_url)

    @router.post("/install-from-index")
    async def install_from_index(body: IndexInstallBody) -> dict[str, Any]:
        return (await _call(manager().install_from_index, body.name, body.index_url)).to_dict()

    @router.post("/{name}/enabled")
    async def set_enabled(name: str, body: EnableBody) -> dict[str, Any]:
        await _call(manager().set_enabled, name, body.enabled)
        return (await _call(manager().get, name)).to_dict()

    @router.post("/check-updates")
    async def check_updates() -> list[dict[str, Any]]:
        return [ext.to_dict() for ext in await _call(manager().check_for_updates)]

    @router.post("/{name}/update")
    async def update(name: str) -> dict[str, Any]:
        return (await _call(manager().update, name)).to_dict()

    @router.delete("/{name}")
    async def uninstall(name: str) -> dict[str, str]:
        await _call(manager().uninstall, name)
        return {"uninstalled": name}
