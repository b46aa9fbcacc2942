"""Routes are added to the app itself, not through include_router: FastAPI 0.16x keeps an included router as one
opaque entry, and `app.routes` should list every API path (the auth tests enumerate it)."""
from __future__ import annotations

from typing import Any, Callable


class Routes:
    """`app.get/post/delete/add_api_route` with a path prefix and tags, like an APIRouter that adds as it goes."""

    def __init__(self, app: Any, prefix: str, tags: list[str]):
        self.app, self.prefix, self.tags = app, prefix, tags

    def get(self, path: str, **kwargs: Any) -> Callable:
        return self.app.get(self.prefix + path, tags=self.tags, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable:
        return self.app.post(self.prefix + path, tags=self.tags, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable:
        return self.app.delete(self.prefix + path, tags=self.tags, **kwargs)

    def add_api_route(self, path: str, endpoint: Callable, **kwargs: Any) -> None:
        self.app.add_api_route(self.prefix + path, endpoint, tags=self.tags, **kwargs)
