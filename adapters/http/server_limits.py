"""How uvicorn treats slow and numerous clients: the options ``ovbot serve`` passes to
``uvicorn.Config``.

uvicorn's h11 server (0.54) has no request-header timeout: its keep-alive timer runs only
between two requests and the first byte a client sends cancels it, so a client that
opens a connection and sends a header line now and then (slowloris) is held for as long
as it likes; a hundred of them hold a hundred sockets and buffers. ``H11HeaderTimeout``
gives every request's headers a deadline from the moment the connection opens, or the
previous response ended, and closes the connection when it passes. ``limit_concurrency``
bounds what is open at once: beyond it uvicorn answers 503 instead of taking more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ovbot.core.config import Settings

log = logging.getLogger("ovbot.http")


class H11HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    h11 reports the peer as ``IDLE`` until a request line and all its headers have
    arrived; the timer closes the connection if it is still ``IDLE`` when it fires, so a
    request being answered (a long SSE stream included) is never cut."""

    #: set on the subclass ``header_timeout_protocol`` builds
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


def header_timeout_protocol(header_timeout_s: float) -> type[H11HeaderTimeout]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn instantiates the class
    itself, so the timeout travels as a class attribute."""
    return type("H11HeaderTimeout", (H11HeaderTimeout,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments that bound slow and numerous clients."""
    return {
        "http": header_timeout_protocol(settings.http_header_timeout_s),
        "timeout_keep_alive": settings.http_keep_alive_s,
        "limit_concurrency": settings.http_max_connections,
    }
