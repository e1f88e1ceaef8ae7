"""The one place where errors become HTTP responses.

Every error body has the same shape, ``{"error": {"kind", "message", "field"?}}``, and
the status follows from the kind alone, so a core error raised in a route, the stored
error of a failed job and a malformed request are all answered alike. Messages are the
core's user-safe texts; nothing a client sent (bodies, keys) is echoed back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ovbot.adapters.http.schemas import PATTERN_HELP
from ovbot.core.errors import OvbotError
from ovbot.core.metrics import Metrics

log = logging.getLogger("ovbot.http")

#: HTTP status of each error kind (core kinds plus the adapter's own); others are 500
STATUS_BY_KIND: dict[str, int] = {
    "invalid_input": 400,
    "malformed_json": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "cancelled": 409,
    "payload_too_large": 413,
    "bad_parameter": 422,
    "validation": 422,
    "rate_limited": 429,
    "queue_full": 429,
    "too_many_streams": 429,
    "engine": 502,
    "invalid_output": 502,
    "engine_unavailable": 503,
    "model_unavailable": 503,
    "shutting_down": 503,
    "queue_closed": 503,
    "server_busy": 503,
    "store": 503,
    "timeout": 504,
}
_KIND_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
#: the detail of FastAPI's own 400 when it cannot parse a body at all (fastapi/routing.py)
FASTAPI_PARSE_FAILURE = "There was an error parsing the body"
#: FastAPI's 400 for a body ``json.loads`` could not even attempt (not UTF-8, nested too
#: deep, an integer too long to convert): the same mistake as any other malformed JSON
UNREADABLE_BODY = (
    "The request body could not be read as JSON: send UTF-8 JSON, not nested deeper than "
    "a few hundred levels, numbers of at most a few thousand digits."
)
#: how much of a client-chosen name (a field, a path) an error message may quote
SHOWN_CHARS = 60
INTERNAL_MESSAGE = "Something went wrong on the server. Try again; if it keeps happening, report the request id."


class ApiError(Exception):
    """An error the adapter itself raises (bad key, failed job, image not ready)."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        field: str | None = None,
        job_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field
        self.job_id = job_id
        self.retry_after_s = retry_after_s

    @classmethod
    def from_core(cls, exc: OvbotError) -> "ApiError":
        return cls(
            exc.kind,
            exc.user_message,
            field=getattr(exc, "field", None),
            retry_after_s=getattr(exc, "retry_after_s", None),
        )

    @classmethod
    def from_job_error(cls, job_id: str, error: dict[str, Any] | None) -> "ApiError":
        """A failed or cancelled job's stored error, answered like a raised one."""
        error = error or {}
        return cls(
            str(error.get("kind") or "internal"),
            str(error.get("message") or INTERNAL_MESSAGE),
            field=error.get("field"),
            job_id=job_id,
        )


def error_response(error: ApiError, request_id: str | None = None) -> JSONResponse:
    status = STATUS_BY_KIND.get(error.kind, 500)
    body: dict[str, Any] = {"kind": error.kind, "message": error.message}
    if error.field:
        body["field"] = error.field
    if error.job_id:
        body["job_id"] = error.job_id
    if request_id:
        body["request_id"] = request_id
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def internal_error_response(request_id: str) -> JSONResponse:
    return error_response(ApiError("internal", INTERNAL_MESSAGE), request_id)


def validation_error(errors: Sequence[Any]) -> ApiError:
    """Pydantic's errors as one plain sentence per problem: ``message: field required``."""
    problems: list[tuple[str, str]] = []
    for error in errors:
        kind = error.get("type", "")
        where = [_shown(str(part)) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            detail = f" ({reason})" if reason else ""
            return ApiError("malformed_json", f"The request body is not valid JSON{detail}.")
        if not where and kind in ("missing", "model_attributes_type", "model_type", "dict_type"):
            return ApiError(
                "malformed_json",
                "The request body must be a JSON object, sent with 'Content-Type: application/json'.",
            )
        problems.append((".".join(where) or "body", _plain(kind, error.get("msg", "is invalid"), error.get("ctx"))))
    message = "; ".join(f"{field}: {text}" for field, text in problems) or "The request is invalid."
    return ApiError("validation", message, field=problems[0][0] if problems else None)


def _shown(name: str) -> str:
    """A name the client chose (an unknown field, a path), quoted back bounded: an
    error must not echo a megabyte the client sent."""
    return name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS] + "…"


def _plain(kind: str, message: str, context: dict[str, Any] | None = None) -> str:
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see /docs)"
    if kind == "string_pattern_mismatch":
        pattern = str((context or {}).get("pattern", ""))
        return PATTERN_HELP.get(pattern, "contains characters that are not allowed")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    return message[:1].lower() + message[1:]


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Core errors, adapter errors, validation errors and Starlette's own HTTP errors.
    Unexpected exceptions are answered by the request middleware, which knows the
    request id to log them with."""

    def respond(request: Request, error: ApiError) -> JSONResponse:
        metrics.observe_error(error.kind, "http")
        return error_response(error, getattr(request.state, "request_id", None))

    async def on_core(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OvbotError)
        return respond(request, ApiError.from_core(exc))

    async def on_api(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return respond(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(request, validation_error(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == FASTAPI_PARSE_FAILURE:
            kind = "malformed_json"
        else:
            kind = _KIND_BY_STATUS.get(exc.status_code, "http_error")
        path = _shown(request.url.path)
        if kind == "not_found":
            message = f"There is no {request.method} {path} endpoint (see /docs)."
        elif kind == "method_not_allowed":
            message = f"{request.method} is not allowed on {path} (see /docs)."
        elif kind == "malformed_json":
            message = UNREADABLE_BODY
        else:
            message = str(exc.detail)
        response = respond(request, ApiError(kind, message))
        if kind == "http_error":
            response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    app.add_exception_handler(OvbotError, on_core)
    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
