"""Per-request plumbing as plain ASGI (streams pass through untouched): a request id,
a cap on the body size, one access-log line, HTTP metrics, and the last-resort answer
to an unexpected exception.

The log line carries method, path, status, duration, request id and the caller's key
id — never bodies, query strings (they hold user ids) or keys.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ovbot.adapters.http.errors import ApiError, error_response, internal_error_response
from ovbot.core.metrics import Metrics

log = logging.getLogger("ovbot.http")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.monotonic()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await error_response(_too_large(self.max_body_bytes), request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, self._capped(receive), send_with_id)
        except Exception:
            log.exception("unhandled error request_id=%s", request_id)
            self.metrics.observe_error("internal", "http")
            if not response_started:
                await internal_error_response(request_id)(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_http(scope["method"], template, status, seconds)
            log.info(
                "http method=%s path=%s status=%d duration_ms=%.1f request_id=%s key=%s",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                request_id,
                state.get("key_id", "-"),
            )

    def _capped(self, receive: Receive) -> Receive:
        """Counts body bytes as they arrive: a chunked upload without Content-Length
        is cut off at the cap too, before it is buffered whole."""
        received = 0
        limit = self.max_body_bytes

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # an HTTPException passes FastAPI's body reader unchanged
                    raise StarletteHTTPException(413, _too_large(limit).message)
            return message

        return capped


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> ApiError:
    return ApiError("payload_too_large", f"The request body is larger than {limit // 1024} KiB.")
