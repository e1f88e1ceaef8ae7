"""``ovbot serve``: the job queue and every configured adapter in one process.

Start-up order: bind the HTTP port first (a taken port fails in a second, not after the
models loaded), then build the App (database, models, engines), start the queue, then
start the adapters: HTTP, then each platform whose settings are present. Shutdown on
SIGINT/SIGTERM: stop taking jobs and give running ones the grace period to finish while
the adapters still deliver (requests waiting on a released job get a 503 naming it),
then stop the adapters in reverse order, close the engines and the database, exit 0.
A second signal stops waiting for open connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from ovbot.adapters.base import Adapter
from ovbot.adapters.http.server import HttpAdapter
from ovbot.core.logging_setup import configure_logging
from ovbot.core.app import App
from ovbot.core.bot import Bot
from ovbot.core.config import Settings, load_settings
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.serve")

DEFAULT_GRACE_S = 30.0
#: uvicorn's own backstop beyond the grace period for requests that still hang on
_HTTP_EXTRA_GRACE_S = 10.0


class ServeError(OvbotError):
    kind = "serve"


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API (chat, images, jobs; docs at /docs)",
        description="Serve the HTTP API. OVBOT_HTTP_HOST/OVBOT_HTTP_PORT by default; binding "
        "beyond this computer needs OVBOT_API_KEYS.",
    )
    serve.add_argument("--host", help="address to listen on (default OVBOT_HTTP_HOST)")
    serve.add_argument("--port", type=int, help="port (default OVBOT_HTTP_PORT; 0 picks a free one)")
    serve.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help=f"seconds running jobs get to finish on shutdown (default {DEFAULT_GRACE_S:g})",
    )
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["http_host"] = args.host
    if args.port is not None:
        overrides["http_port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(getattr(args, "log_level", None) or settings.log_level, settings.secrets())
    return asyncio.run(serve(settings, grace_s=args.grace))


#: builds the adapters to run besides HTTP, from the ready facade (tests inject theirs)
AdapterFactory = Callable[[Bot, Settings], Sequence[Adapter]]


def configured_adapters(bot: Bot, settings: Settings) -> list[Adapter]:
    """The platform adapters whose settings are present (besides HTTP)."""
    adapters: list[Adapter] = []
    if settings.discord_token is not None:
        from ovbot.adapters.discord import build_discord_adapter

        adapters.append(build_discord_adapter(bot, settings))
    if settings.telegram_token is not None:
        from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig

        telegram = TelegramConfig.from_settings(settings)
        assert telegram is not None
        adapters.append(TelegramAdapter(bot, telegram))
    return adapters


async def serve(
    settings: Settings,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    adapters: AdapterFactory = configured_adapters,
) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code (0 after a clean shutdown).

    Order: HTTP first, then the platform adapters; stopping drains the queue while every
    adapter still delivers, then stops the adapters in reverse order. An adapter that
    cannot start stops everything with one line naming it (ServeError)."""
    shutdown = _ShutdownRequest()
    with _signal_handlers(shutdown.request):
        sock = _bind(settings.http_host, settings.http_port)
        app = App(settings, stop_grace_s=grace_s)
        running: list[Adapter] = []
        try:
            if not await _unless(shutdown.requested, app.initialize()):
                log.info("stopped during start-up")
                return 0
            await app.start()
            http = HttpAdapter(app.bot, settings, app.metrics, sock, stop_grace_s=_HTTP_EXTRA_GRACE_S)
            shutdown.on_force(http.force_stop)
            for adapter in [http, *adapters(app.bot, settings)]:
                if shutdown.requested.is_set():
                    break
                await _start_adapter(adapter)
                running.append(adapter)
                app.bot.register_adapter(adapter.name, adapter.health)
            await shutdown.requested.wait()
            await app.stop()  # every adapter still delivers what finishes in the grace period
        finally:
            await _stop_adapters(app, running)
            await app.shutdown()
            sock.close()
    log.info("bye")
    return 0


async def _start_adapter(adapter: Adapter) -> None:
    try:
        await adapter.start()
    except OvbotError as exc:
        raise ServeError(f"The {adapter.name} adapter could not start: {exc.user_message}") from None
    except Exception as exc:
        log.debug("the %s adapter failed at start", adapter.name, exc_info=True)
        raise ServeError(f"The {adapter.name} adapter could not start: {type(exc).__name__}: {exc}") from None


async def _stop_adapters(app: App, running: list[Adapter]) -> None:
    """In reverse order; one that fails to stop is logged and the rest still stop."""
    for adapter in reversed(running):
        try:
            await adapter.stop()
        except Exception:
            log.exception("the %s adapter did not stop cleanly", adapter.name)
        if app.initialized:
            app.bot.unregister_adapter(adapter.name)


class _ShutdownRequest:
    """The first signal asks for a graceful shutdown; the next ones stop waiting for
    open connections."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._force: list[Callable[[], None]] = []

    def on_force(self, callback: Callable[[], None]) -> None:
        self._force.append(callback)

    def request(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s again: not waiting for open connections any more", name)
            for callback in self._force:
                callback()
            return
        log.info("%s: shutting down (running jobs get their grace period)", name)
        self.requested.set()


@contextlib.contextmanager
def _signal_handlers(handler: Callable[[int], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handler, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            previous[signum] = signal.signal(
                signum, lambda num, _frame: loop.call_soon_threadsafe(handler, num)
            )
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        for signum, old in previous.items():
            signal.signal(signum, old)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # the protocol named explicitly: asyncio turns on TCP_NODELAY only for sockets whose
    # proto is IPPROTO_TCP (connections inherit it), and without it every response on a
    # kept-alive connection waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}). Is another ovbot running? "
            "Choose another port with --port or OVBOT_HTTP_PORT."
        ) from None
    sock.set_inheritable(True)
    return sock


async def _unless(stop: asyncio.Event, work: Awaitable[None]) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it, letting it clean up):
    False when stopped."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # re-raise a start-up error
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
