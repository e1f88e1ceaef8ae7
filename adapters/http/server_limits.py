"""How uvicorn treats slow and numerous clients: the options ``ovbot serve`` passes to
``uvicorn.Config``.

uvicorn's h11 server (0.54) has no request-header timeout: its keep-alive timer runs only
between two requests and the first byte a client sends cancels it, so a client that
opens a connection and sends a header line now and then (slowloris) is held for as long
as it likes; a hundred of them hold a hundred sockets and buffers. ``H11HeaderTimeout``
gives every request's headers a deadline from the moment the connection opens, or the
previous response ended, and closes the connection when it passes.

What is open at once is bounded too (``OVBOT_HTTP_MAX_CONNECTIONS``). uvicorn's own
``limit_concurrency`` answers beyond it with a bare ``text/plain`` "Service Unavailable",
which tells a client neither why nor when to come back; ``H11Bounded`` applies the same
rule (open connections, or requests in flight, at the limit) and answers with the API's
JSON error, ``Retry-After`` and ``Connection: close``, so the refused client frees its
socket at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ovbot.adapters.http.errors import ApiError, error_response
from ovbot.core.config import Settings

log = logging.getLogger("ovbot.http")


class H11HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    h11 reports the peer as ``IDLE`` until a request line and all its headers have
    arrived; the timer closes the connection if it is still ``IDLE`` when it fires, so a
    request being answered (a long SSE stream included) is never cut."""

    #: set on the subclass ``bounded_protocol`` builds
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # headers complete (or the peer is gone)
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection gets the same deadline for its headers
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.debug("closed a connection that sent no complete request headers in %g s", self.header_timeout_s)
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


class RefusalLog:
    """One warning per interval however many connections are refused: a flood of
    clients, the very thing the bound is for, must not become a flood of log lines."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = float("-inf")
        self._unlogged = 0

    def note(self, open_connections: int, limit: int) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        log.warning(
            "refused %d request(s) since the last note: %d connections open (the limit is %d)",
            self._unlogged, open_connections, limit,
        )
        self._last = now
        self._unlogged = 0


class H11Bounded(H11HeaderTimeout):
    """The header deadline plus the connection bound, refused with a JSON 503.

    uvicorn's rule, kept: refuse when the open connections (this one included) or the
    requests in flight (this one excluded) reach the limit. The check runs as the
    request's ASGI task starts, when that task is already counted in ``tasks``."""

    #: set on the subclass ``bounded_protocol`` builds
    max_connections: int = 512
    #: what a refused client is told to wait: idle kept-alive connections close by then
    busy_retry_s: float = 5.0
    refusals: RefusalLog

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served_app: ASGIApp = self.app
        self.app = self._app_unless_busy

    async def _app_unless_busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_connections
        if len(self.connections) >= limit or len(self.tasks) - 1 >= limit:
            self.refusals.note(len(self.connections), limit)
            refusal = error_response(
                ApiError(
                    "server_busy",
                    f"The server has too many open connections (the limit is {limit}). "
                    f"Try again in ~{self.busy_retry_s:g} s.",
                    retry_after_s=self.busy_retry_s,
                )
            )
            refusal.headers["Connection"] = "close"
            await refusal(scope, receive, send)
            return
        await self._served_app(scope, receive, send)


def bounded_protocol(header_timeout_s: float, max_connections: int, busy_retry_s: float) -> type[H11Bounded]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn instantiates the class
    itself, so the bounds travel as class attributes."""
    return type(
        "H11Bounded",
        (H11Bounded,),
        {
            "header_timeout_s": float(header_timeout_s),
            "max_connections": int(max_connections),
            "busy_retry_s": float(busy_retry_s),
            "refusals": RefusalLog(),  # one per server: uvicorn makes a protocol per connection
        },
    )


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments that bound slow and numerous clients
    (uvicorn's own ``limit_concurrency`` stays off: ``H11Bounded`` answers instead)."""
    return {
        "http": bounded_protocol(
            settings.http_header_timeout_s, settings.http_max_connections, float(settings.http_keep_alive_s)
        ),
        "timeout_keep_alive": settings.http_keep_alive_s,
    }
