"""Webhook mode: a small HTTP server Telegram posts updates to.

python-telegram-bot's own webhook server needs tornado; ovbot already ships uvicorn and
Starlette (the HTTP API), so this is the "custom webhook" setup its docs describe: the
server checks the secret token on every request (``X-Telegram-Bot-Api-Secret-Token``,
compared in constant time), bounds the body, and puts the update on the
``Application``'s update queue, which ``Application.start()`` processes exactly like
polled updates. The update is stored (``Inbox.accept``) before the 200 that makes
Telegram forget it (a 500 if it cannot be: Telegram sends it again); a duplicate is
answered 200 and dropped. It listens on ``OVBOT_TELEGRAM_WEBHOOK_HOST:PORT``, behind the
reverse proxy that owns the public https URL, and serves that URL's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import Update

from ovbot.adapters.telegram.build import TelegramApp
from ovbot.adapters.telegram.inbox import Inbox

log = logging.getLogger("ovbot.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: an update is a few kB; anything much bigger is not from Telegram
MAX_BODY = 1 << 20


class WebhookServer:
    def __init__(
        self, application: TelegramApp, inbox: Inbox, *, host: str, port: int, path: str, secret: str
    ) -> None:
        self._application = application
        self._inbox = inbox
        self._secret = secret.encode()
        self._host = host
        self._port = port
        self.path = path
        config = uvicorn.Config(
            Starlette(routes=[Route(path, self._receive, methods=["POST"])]),
            lifespan="off",
            log_config=None,  # ovbot's handlers, and their redaction
            access_log=False,  # the path is public, but keep the log to what ovbot says
            server_header=False,
        )
        self._server = _Server(config)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and self._server.started

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            reason = exc.strerror or exc
            raise OSError(f"cannot listen on {self._host}:{self._port} for the webhook ({reason})") from None
        self._sock = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ovbot-telegram-webhook")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the webhook server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            try:
                await self._task
            finally:
                self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _receive(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            log.warning("webhook: a request without the right secret token was refused")
            return Response(status_code=403)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return Response(status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return Response(status_code=413)
        try:
            update = Update.de_json(json.loads(body), self._application.bot)
        except (ValueError, TypeError, KeyError):
            return Response(status_code=400)
        try:  # durable before the 200 that makes Telegram forget it
            fresh = await self._inbox.accept([update])
        except Exception as exc:
            log.error("webhook: an update could not be stored (%s); Telegram will send it again", type(exc).__name__)
            return Response(status_code=500)
        for accepted in fresh:  # none: a duplicate, handled or waiting for the replay
            await self._application.update_queue.put(accepted)
        return Response(status_code=200)


class _Server(uvicorn.Server):
    """No signal handling of its own: ``ovbot serve`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
