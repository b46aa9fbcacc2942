"""Request bodies before any route sees them: --max-upload-size, and JSON that is text.

--max-upload-size: request bodies (base64 images in JSON, multipart uploads) bounded before they are read.

A pure ASGI middleware on every path, API and UI alike, since both share one port: a declared Content-Length
over the limit is refused at once (413, nothing read); a chunked body is counted as it arrives and refused the
moment it passes the limit, so no route ever buffers more than the limit. (--max-pixels, the other input limit,
is checked where images are decoded, `images.decode_image`, and on requests, `request.check_pixel_budget`.)

JSON text: JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), which Python keeps in a str that can't be encoded:
the tokenizer, the PNG writer, config.json and the response itself would fail later with a 500 (and a settings
key saved that way broke GET /options for good). `CheckedJsonRoute` refuses such a body at once with a 422 naming
the field, as it does bodies nested too deeply or with integers too long to parse.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Optional

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

DEFAULT_MAX_UPLOAD_MB = 50.0
# A refused body is still read (and dropped) up to this much past the limit before answering: a client that
# sends its whole body before reading the answer (most do) would otherwise see a connection reset, not the 413.
DRAIN_SLACK_BYTES = 16_000_000
DRAIN_IDLE_SECONDS = 2.0


class BodyTooLarge(HTTPException):
    """Raised while reading a chunked body past the limit; FastAPI passes HTTPExceptions on unchanged."""

    field = "body"

    def __init__(self, limit: int):
        super().__init__(413, too_large_detail(limit))


def too_large_detail(limit: int) -> str:
    return f"body: the request body is larger than {limit / 1e6:g} MB (--max-upload-size)"


def max_upload_bytes(args: Any) -> int:
    """The flag in bytes; 0 or less turns the limit off."""
    mb = getattr(args, "max_upload_size", None)
    mb = DEFAULT_MAX_UPLOAD_MB if mb is None else float(mb)
    return int(mb * 1_000_000) if mb > 0 else 0


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= self.max_bytes + DRAIN_SLACK_BYTES:
                await _drain(receive, self.max_bytes + DRAIN_SLACK_BYTES)
            await _refuse(send, self.max_bytes)
            return
        seen, started = [0], [False]

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_SLACK_BYTES)
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            # Raised outside FastAPI's handlers (a Gradio route, a streaming read): answer here if we still can.
            if started[0]:
                raise
            await _refuse(send, self.max_bytes)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server itself rejects a malformed length
    return None


async def _drain(receive, budget: int) -> None:
    """Read and drop the rest of a body, up to `budget` bytes and while it keeps arriving."""
    read = 0
    while read <= budget:
        try:
            message = await asyncio.wait_for(receive(), DRAIN_IDLE_SECONDS)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _refuse(send, limit: int) -> None:
    payload = json.dumps({"error": "TooLarge", "detail": too_large_detail(limit), "field": "body"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def install_body_limit(app, args) -> None:
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes(args))


# -- JSON that is text ---------------------------------------------------------------------------------------------
class BadJsonBody(HTTPException):
    """A 422 raised while FastAPI reads the body; HTTPExceptions pass its body reader unchanged."""

    def __init__(self, field: str, reason: str):
        super().__init__(422, f"{field}: {reason}")
        self.field = field


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def find_lone_surrogate(data: Any) -> Optional[tuple[str, str]]:
    """(field, bad text) of the first string, or key, holding a lone surrogate; walked without recursion."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                return path or "body", value
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{_printable(key)}" if path else _printable(key)
                if _has_lone_surrogate(key):
                    return name, key
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


class CheckedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                raise  # FastAPI answers it as a 422 naming the body
            except RecursionError:
                raise BadJsonBody("body", "is nested too deeply") from None
            except ValueError as e:  # an integer longer than Python will parse, bytes that aren't UTF-8
                raise BadJsonBody("body", f"is not valid JSON text ({e})") from None
            found = find_lone_surrogate(data)
            if found is not None:
                field, text = found
                raise BadJsonBody(field, "contains a lone UTF-16 surrogate, which is not text: "
                                         f"'{_printable(text)[:80]}'")
            self._json = data
        return self._json


class CheckedJsonRoute(APIRoute):
    """Every API route reads its JSON through CheckedJsonRequest (set as the app router's route_class)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def checked(request: Request):
            return await handler(CheckedJsonRequest(request.scope, request.receive))

        return checked
