"""Every failure becomes JSON in A1111's HTTPException shape ({"error", "detail", ...}) plus the `field` at fault.

Bad input is 422 and names the field; unknown ids are 404; a job that failed in the worker is 500 with its
message. No route answers with a traceback.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modules.errors import AtelierError, CheckpointError, ValidationError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by routes for a response other than 200: status, message, and the field at fault if any."""

    def __init__(self, status: int, detail: str, field: Optional[str] = None, error: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.field, self.extra = status, detail, field, extra
        self.headers = headers  # e.g. Retry-After on a 429
        self.error = error or _REASONS.get(status, "Error")


_REASONS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict",
            413: "TooLarge", 422: "ValidationError", 429: "TooManyRequests", 500: "ServerError", 503: "Unavailable"}


def body(error: str, detail: str, field: Optional[str] = None, **extra: Any) -> dict:
    out = {"error": error, "detail": detail}
    if field is not None:
        out["field"] = field
    out.update(extra)
    return out


def field_from_loc(loc: tuple) -> str:
    """('body', 'init_images', 0) -> 'init_images.0'; a malformed body is 'body'."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path") and len(parts) > 1:
        parts = parts[1:]
    if not parts or (parts[0] == "body" and len(parts) == 1):
        return "body"
    return ".".join(parts)


def validation_response(errors: list[dict]) -> JSONResponse:
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    # JSON parse errors put the character offset in loc; the field is the body itself.
    field = "body" if first.get("type") == "json_invalid" else field_from_loc(tuple(first.get("loc", ())))
    brief = [{"field": "body" if e.get("type") == "json_invalid" else field_from_loc(tuple(e.get("loc", ()))),
              "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors[:20]]
    return JSONResponse(status_code=422, content=body("ValidationError", f"{field}: {first.get('msg', '')}", field,
                                                      errors=brief))


def install(app: FastAPI) -> None:
    """Exception handlers for the whole app (FastAPI's are app-wide; the UI gets the same clean JSON)."""

    async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    async def on_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=body("ValidationError", str(exc), exc.field))

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=body(exc.error, exc.detail, exc.field, **exc.extra),
                            headers=exc.headers)

    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(status_code=exc.status_code, headers=getattr(exc, "headers", None),
                            content=body(_REASONS.get(exc.status_code, "HTTPException"), detail,
                                         getattr(exc, "field", None)))  # BodyTooLarge names the body

    async def on_checkpoint(request: Request, exc: CheckpointError) -> JSONResponse:
        return JSONResponse(status_code=500, content=body(type(exc).__name__, str(exc), "sd_model_checkpoint"))

    async def on_atelier(request: Request, exc: AtelierError) -> JSONResponse:
        return JSONResponse(status_code=500, content=body(type(exc).__name__, str(exc)))

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API error: %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content=body(type(exc).__name__, str(exc) or "internal error"))

    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(CheckpointError, on_checkpoint)
    app.add_exception_handler(AtelierError, on_atelier)
    app.add_exception_handler(Exception, on_any)
