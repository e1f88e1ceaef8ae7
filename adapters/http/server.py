"""The HTTP API as an adapter: uvicorn serving ``create_app`` in this event loop on a
socket bound by the entry point (so a taken port fails before the models load)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from ovbot.adapters.base import AdapterBase
from ovbot.adapters.http.api import create_app, default_base_url
from ovbot.adapters.http.server_limits import uvicorn_limits
from ovbot.core.app import Check
from ovbot.core.bot import Bot
from ovbot.core.config import Settings
from ovbot.core.metrics import Metrics

log = logging.getLogger("ovbot.http")

#: uvicorn's own backstop for requests that still hang on when it stops
_STOP_GRACE_S = 10.0
_WILDCARDS = ("0.0.0.0", "::", "")


class HttpAdapter(AdapterBase):
    name = "http"

    def __init__(
        self,
        bot: Bot,
        settings: Settings,
        metrics: Metrics,
        sock: socket.socket,
        *,
        keepalive_s: float = 15.0,
        stop_grace_s: float = _STOP_GRACE_S,
    ) -> None:
        self._sock = sock
        port = sock.getsockname()[1]
        self.url = default_base_url(settings.http_host, port)
        base_url = settings.public_base_url or self.url
        if settings.http_host in _WILDCARDS and not settings.public_base_url:
            log.warning("image URLs will name %s; set OVBOT_PUBLIC_BASE_URL to the address clients use", base_url)
        config = uvicorn.Config(
            create_app(bot, settings, metrics, base_url=base_url, keepalive_s=keepalive_s),
            host=settings.http_host,
            port=port,
            lifespan="off",
            log_config=None,  # keep ovbot's handlers (and their secret redaction)
            access_log=False,  # the API logs one line per request itself, without queries
            server_header=False,
            timeout_graceful_shutdown=stop_grace_s,
            **uvicorn_limits(settings),
        )
        self._server = _Server(config, f"serving on {self.url} (API docs at {base_url}/docs)")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="ovbot-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raise what stopped it
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None

    def force_stop(self) -> None:
        """Stop waiting for open connections (a second Ctrl-C)."""
        self._server.force_exit = True

    def health(self) -> Check:
        running = self._task is not None and not self._task.done() and self._server.started
        return Check(running, "serving" if running else "stopped")


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: ``ovbot serve`` owns the signals
    for the whole process lifetime (model loading included), and uvicorn would re-raise
    the signal after its shutdown, killing the process before the database is closed.
    Logs ``listening`` once connections are accepted (scripts wait for that line)."""

    def __init__(self, config: uvicorn.Config, listening: str) -> None:
        super().__init__(config)
        self._listening = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            log.info("%s", self._listening)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
