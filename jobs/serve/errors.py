"""How the service refuses requests: one JSON error body for every 4xx/5xx, with a readable line per problem.

- `RequestError` is what route code raises; `install_error_handlers` turns it, FastAPI's validation
  errors, Starlette's HTTP errors (404, 405 with its `Allow` header) and unexpected exceptions (500)
  into JSON answers, so no answer of the service is ever plain text.
- `describe_validation_errors` words pydantic's errors for people: "steps is 1000; this server allows
  at most 16" rather than "Input should be less than or equal to 16".
- `PayloadLimitMiddleware` answers 413 to a body over the limit before it is read.

A route may answer in another error shape (the OpenAI-shaped route does): `render` is the one
function that builds an error answer for a path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.serve.schema import ErrorResponse

logger = logging.getLogger(__name__)

SCHEDULE_NAMES = (
    "arccos, cosine, linear, square, root, halton, arccos-v2, jax-cosine, jax-uniform, jax-log, jax-exp, "
    "jax-pow<K>"
)

# (path, status, message, details) -> the answer; the default is ErrorResponse for every path.
Render = Callable[[str, int, str, list[str]], JSONResponse]


class RequestError(Exception):
    """A request the service refuses; becomes an error answer with `status`."""

    def __init__(self, status: int, error: str, details: list[str] | None = None):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []


def error_response(
    status: int, error: str, details: list[str] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=error, details=details or []).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def default_render(path: str, status: int, error: str, details: list[str]) -> JSONResponse:
    return error_response(status, error, details)


def field_path(loc: tuple) -> str:
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(parts) if parts else "body"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bound_line(kind: str, path: str, error: dict[str, Any]) -> str | None:
    """A readable line for a bound that a deployment sets (classes, steps, images), else None."""
    ctx, value = error.get("ctx") or {}, error.get("input")
    field = path.split(".")[0]
    if field in ("class_id", "class_ids") and kind == "less_than":
        count = ctx["lt"]
        return f"class id {_shown(value)} out of range: this model has {count} classes (0–{count - 1})"
    if field in ("class_id", "class_ids") and kind == "greater_than_equal":
        return f"class id {_shown(value)} out of range: class ids start at 0"
    if field == "steps" and kind == "less_than_equal":
        return f"steps is {_shown(value)}; this server allows at most {ctx['le']}"
    if field in ("count", "n") and kind == "less_than_equal":
        return f"{_shown(value)} images requested; this server allows at most {ctx['le']}"
    if field == "class_ids" and kind == "too_long":
        return f"{ctx.get('actual_length')} images requested; this server allows at most {ctx['max_length']}"
    return None


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, list[str], str | None]:
    """Pydantic/FastAPI errors -> (status, one readable line per problem, path of the first problem).

    400 for malformed JSON, else 422. Errors of one union field (the schedule name) become one line.
    """
    status, lines, first, seen_unions = 422, [], None, set()
    for error in errors:
        kind, loc, message = error.get("type", ""), tuple(error.get("loc", ())), error.get("msg", "")
        path = field_path(loc)
        first = first or (path if path != "body" else None)
        if kind == "json_invalid":
            status = 400
            reason = (error.get("ctx") or {}).get("error", message)
            lines.append(f"malformed JSON: {reason}")
        elif kind == "extra_forbidden":
            lines.append(f"unknown field '{path}'")
        elif kind in ("model_attributes_type", "dict_type", "model_type") and path == "body":
            lines.append("the body must be a JSON object (sent with Content-Type: application/json)")
        elif kind == "missing":
            lines.append(f"missing field '{path}'")
        elif path.startswith("schedule"):
            if "schedule" not in seen_unions:
                seen_unions.add("schedule")
                lines.append(
                    f"unknown masking schedule {_shown(error.get('input'))}; expected one of {SCHEDULE_NAMES}"
                )
        else:
            line = _bound_line(kind, path, error)
            if line is None:
                message = message.removeprefix("Value error, ")
                line = message if path == "body" else f"{path}: {message} (got {_shown(error.get('input'))})"
            lines.append(line)
    return status, lines, first


class PayloadLimitMiddleware:
    """Pure ASGI middleware answering 413 to bodies over `max_bytes`: by Content-Length before reading,
    or while streaming a body sent without one."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int, render: Render = default_render):
        self.app, self.max_bytes, self.render = app, max_bytes, render

    def _too_large(self, scope, size: str) -> JSONResponse:
        message = f"request body is {size} bytes; this server accepts at most {self.max_bytes} bytes"
        return self.render(scope.get("path", ""), 413, message, [])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, length.decode())(scope, receive, send)
        received, exceeded, replaced = 0, False, False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._TooLarge
            return message

        async def guarded_send(message):
            # FastAPI turns an error while reading the body into its own 400; answer 413 instead.
            nonlocal replaced
            if not exceeded:
                return await send(message)
            if message["type"] == "http.response.start" and not replaced:
                replaced = True
                await self._too_large(scope, f"more than {self.max_bytes}")(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except self._TooLarge:
            if not replaced:
                replaced = True
                await self._too_large(scope, f"more than {self.max_bytes}")(scope, receive, send)


def install_error_handlers(app: FastAPI, render: Render = default_render) -> None:
    """JSON answers for every refusal and failure of `app` (see the module docstring)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        status, lines, _ = describe_validation_errors(list(error.errors()))
        return render(request.url.path, status, "; ".join(lines), lines)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, error: RequestError) -> JSONResponse:
        return render(request.url.path, error.status, error.error, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = str(error.detail)
        if error.status_code == 404:
            detail = f"no route {request.url.path}; see /docs for the API"
        elif error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "malformed body: not JSON text (UTF-8, sent with Content-Type: application/json)"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        answer = render(request.url.path, error.status_code, detail, [])
        answer.headers.update(error.headers or {})  # 405's Allow
        return answer

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return render(request.url.path, 500, "internal error; see the server log", [])
