"""``ovbot serve``: the HTTP API and the job queue in one process.

Start-up order: bind the port first (a taken port fails in a second, not after the
models loaded), then build the App (database, models, engines), start the queue, and
serve with uvicorn in this event loop. Shutdown on SIGINT/SIGTERM: stop taking jobs
and give running ones the grace period to finish while uvicorn answers the requests
still in flight (those whose jobs were released get a 503 naming their job), then close
the engines and the database and exit 0. A second signal stops waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from ovbot.adapters.http import create_app
from ovbot.adapters.http.api import default_base_url
from ovbot.bots.logging_setup import configure_logging
from ovbot.core.app import App
from ovbot.core.config import Settings, load_settings
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.serve")

DEFAULT_GRACE_S = 30.0
#: uvicorn's own backstop beyond the grace period for requests that still hang on
_HTTP_EXTRA_GRACE_S = 10.0
_WILDCARDS = ("0.0.0.0", "::", "")


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


async def serve(settings: Settings, *, grace_s: float = DEFAULT_GRACE_S) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code (0 after a clean shutdown)."""
    shutdown = _ShutdownRequest()
    with _signal_handlers(shutdown.request):
        sock = _bind(settings.http_host, settings.http_port)
        app = App(settings, stop_grace_s=grace_s)
        draining: asyncio.Task[None] | None = None
        try:
            if not await _unless(shutdown.requested, app.initialize()):
                log.info("stopped during start-up")
                return 0
            await app.start()
            port = sock.getsockname()[1]
            base_url = settings.public_base_url or default_base_url(settings.http_host, port)
            if settings.http_host in _WILDCARDS and not settings.public_base_url:
                log.warning("image URLs will name %s; set OVBOT_PUBLIC_BASE_URL to the address clients use", base_url)
            config = uvicorn.Config(
                create_app(app, base_url=base_url),
                host=settings.http_host,
                port=port,
                lifespan="off",
                log_config=None,  # keep ovbot's handlers (and their secret redaction)
                access_log=False,  # the API logs one line per request itself, without queries
                server_header=False,
                timeout_graceful_shutdown=grace_s + _HTTP_EXTRA_GRACE_S,
            )
            listening = f"serving on {default_base_url(settings.http_host, port)} (API docs at {base_url}/docs)"
            server = _Server(config, listening)
            shutdown.server = server
            server.should_exit = shutdown.requested.is_set()  # a signal during start-up
            # drain the queue while uvicorn finishes the requests in flight
            draining = asyncio.create_task(_stop_when(shutdown.requested, app))
            await server.serve(sockets=[sock])
            shutdown.requested.set()
            await draining
        finally:
            if draining is not None and not draining.done():  # uvicorn failed, no signal came
                draining.cancel()
            await app.shutdown()
            sock.close()
    log.info("bye")
    return 0


class _ShutdownRequest:
    """The first signal asks for a graceful shutdown; the next ones make uvicorn stop
    waiting for open connections."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.server: uvicorn.Server | None = None

    def request(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s again: not waiting for open connections any more", name)
            if self.server is not None:
                self.server.force_exit = True
            return
        log.info("%s: shutting down (running jobs get their grace period)", name)
        self.requested.set()
        if self.server is not None:
            self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: ``serve()`` owns the signals for
    the whole process lifetime (model loading included), and uvicorn would re-raise the
    signal after its shutdown, killing the process before the database is closed.
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


async def _stop_when(requested: asyncio.Event, app: App) -> None:
    await requested.wait()
    await app.stop()
