"""The runtime that owns every core part: built once at the entry point, then injected.

Modelled on python-telegram-bot's ``Application``: ``initialize()`` builds and opens
everything (models, engines, database), ``start()`` starts processing jobs, ``stop()``
stops intake and drains the queue, ``shutdown()`` releases the engines and the
database. ``async with App(settings) as app`` does initialize/shutdown; an entry point
calls start/stop itself because it decides when serving begins and ends (the HTTP
server must outlive ``stop()`` so that requests waiting on draining jobs still get
their answers, and the database must outlive the HTTP server).

Adapters (HTTP, Telegram, Discord) only ever receive an App; there are no module-level
singletons, so tests can run several Apps side by side and inject prebuilt parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovbot.core.access import AccessControl
from ovbot.core.bot import Bot
from ovbot.core.config import Settings
from ovbot.core.domain import Job, JobKind
from ovbot.core.engines.base import Engines
from ovbot.core.errors import OvbotError
from ovbot.core.jobs.base import EventSink, JobHandler, JobQueue
from ovbot.core.metrics import Metrics
from ovbot.core.store.base import Store

log = logging.getLogger("ovbot.app")

#: how long a readiness probe waits for the database before calling it down
_PING_TIMEOUT_S = 2.0
#: the answer grammar compiles in seconds; more than this means the engine is in trouble
_WARM_UP_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/ready`` reports: each dependency, and the queue's depth."""

    checks: dict[str, Check]
    depth: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks.values())


class _ProgressSink:
    """Passes events through and remembers the job's latest image progress, so
    ``GET /jobs/{id}`` can report it without subscribing to the event stream."""

    def __init__(self, inner: EventSink, job_id: str, progress: dict[str, dict[str, Any]]) -> None:
        self._inner = inner
        self._job_id = job_id
        self._progress = progress

    def emit(self, type: str, text: str = "", **data: Any) -> None:
        if type == "image_progress":
            self._progress[self._job_id] = dict(data)
        self._inner.emit(type, text, **data)


class App:
    """Every dependency of the bot, built from ``Settings`` (or injected for tests).

    Injected parts are owned like built ones: ``initialize()`` opens them and
    ``shutdown()`` closes them, so pass them unstarted.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engines: Engines | None = None,
        store: Store | None = None,
        queue: JobQueue | None = None,
        limits: Any = None,
        prompts: Any = None,
        service: Any = None,
        metrics: Metrics | None = None,
        stop_grace_s: float = 30.0,
        models: tuple[str, ...] = ("llm", "image"),
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_grace_s = stop_grace_s
        #: which models to load ("llm", "image"); the terminal chat needs only the LLM
        self.models = models
        self._engines_in = engines
        self._store_in = store
        self._queue_in = queue
        self._limits_in = limits
        self._prompts_in = prompts
        self._service_in = service
        self._progress: dict[str, dict[str, Any]] = {}
        self._cleanup: contextlib.AsyncExitStack | None = None
        self._initialized = False
        self._running = False
        self._stopped = asyncio.Event()
        self._stopped.set()
        #: start/stop/shutdown one at a time: a signal's stop() and the entry point's
        #: shutdown() may overlap, and shutdown must not close engines mid-drain
        self._lifecycle = asyncio.Lock()
        # set by initialize(); typed Any where the implementation is another module's
        self.engines: Engines
        self.store: Store
        self.queue: JobQueue
        self.limits: Any
        self.prompts: Any
        self.service: Any
        self.access: AccessControl
        #: the facade adapters use (see ovbot.core.bot)
        self.bot: Bot

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> "App":
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``: jobs are accepted and processed."""
        return self._running

    @property
    def stopped(self) -> asyncio.Event:
        """Set while the queue runs no jobs (before ``start()``, and once ``stop()`` has
        drained it): whoever waits on a job's events stops waiting then, because a job
        released at shutdown only runs again after the next start."""
        return self._stopped

    async def initialize(self) -> None:
        """Open the database first (fast, fails early on a bad path), then resolve the
        models and start the engines (slow), then wire queue, limits and chat service.
        A failure half-way closes what was already opened."""
        async with self._lifecycle:
            await self._initialize()

    async def _initialize(self) -> None:
        if self._initialized:
            return
        async with contextlib.AsyncExitStack() as stack:
            self.store = self._store_in or self._build_store()
            stack.push_async_callback(self.store.close)
            await self.store.initialize()

            raw_engines = self._engines_in or await self._build_engines()
            self.engines = self.metrics.wrap_engines(raw_engines)
            # registered before start: a start cancelled half-way must stop the worker too
            stack.push_async_callback(self.engines.close)
            await self.engines.start()

            self.queue = self._queue_in or self._build_queue()
            self.access = AccessControl(
                self.store,
                admins=self.settings.admins,
                allowed_users=self.settings.allowed_users,
                allowed_chats=self.settings.allowed_chats,
                allowed_roles=self.settings.allowed_roles,
            )
            self.limits = self._limits_in or self._build_limits()
            self.prompts = self._prompts_in or self._build_prompts()
            self.service = self._service_in or self._build_service()
            self.queue.register(JobKind.CHAT, self._handler(JobKind.CHAT, self.service.run_chat_job))
            self.queue.register(JobKind.IMAGE, self._handler(JobKind.IMAGE, self.service.run_image_job))
            if self.settings.engine == "local":  # jobs wait out worker restarts (core/jobs/gate.py)
                from ovbot.core.jobs.gate import HealthGate

                self.queue.set_gate(JobKind.CHAT, HealthGate(self.engines.llm.health))
                self.queue.set_gate(JobKind.IMAGE, HealthGate(self.engines.image.health))
            self.metrics.watch_queue(self.queue.depth)
            self.bot = Bot(self, self.access)
            await self._warm_up()
            self._cleanup = stack.pop_all()
        self._initialized = True
        log.info("app initialized (engine=%s, database=%s)", self.settings.engine, self.settings.database_path)

    async def start(self) -> None:
        """Recover jobs left by a previous run and start processing."""
        async with self._lifecycle:
            await self._initialize()
            if self._running:
                return
            await self.queue.start()
            self._running = True
            self._stopped.clear()
        log.info("app started")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop intake; running jobs get ``grace_s`` to finish, the rest are released
        (they stay queued in the database and run after the next start)."""
        async with self._lifecycle:
            await self._stop(grace_s)

    async def _stop(self, grace_s: float | None) -> None:
        if not self._running:
            return
        self._running = False
        grace = self.stop_grace_s if grace_s is None else grace_s
        log.info("stopping: no new jobs, %g s for running ones", grace)
        try:
            await self.queue.stop(grace)
        finally:
            self._progress.clear()
            self._stopped.set()
        log.info("app stopped")

    async def shutdown(self) -> None:
        """Stop if still running, then close the engines and the database."""
        async with self._lifecycle:
            await self._stop(None)
            if self._cleanup is None:
                return
            cleanup, self._cleanup = self._cleanup, None
            self._initialized = False
            await cleanup.aclose()
        log.info("app shut down")

    # ---------------------------------------------------------------- views
    def progress(self, job_id: str) -> dict[str, Any] | None:
        """Latest ``image_progress`` data (step, total) of a running job, if any."""
        return self._progress.get(job_id)

    async def readiness(self) -> Readiness:
        """Engines loaded, database writable, queue processing: what a load balancer
        needs to know before it sends traffic here."""
        checks: dict[str, Check] = {}
        if not self._initialized:
            return Readiness({"app": Check(False, "not initialized")})
        for name in ("llm", "image"):
            health = getattr(self.engines, name).health()
            checks[f"engine_{name}"] = Check(health.ready, health.detail or health.state)
        try:
            db_ok = await asyncio.wait_for(self.store.ping(), _PING_TIMEOUT_S)
            checks["database"] = Check(bool(db_ok), "writable" if db_ok else "not writable")
        except Exception as exc:  # a closed or locked database: report, never raise
            checks["database"] = Check(False, type(exc).__name__)
        checks["queue"] = Check(self._running, "running" if self._running else "stopped")
        return Readiness(checks, dict(self.queue.depth()))

    async def _warm_up(self) -> None:
        """Before ready: the first chat should not pay for one-time engine work. A failed
        warm-up only costs the first user that time, so it is logged, not fatal (a remote
        engine may be down at start and come back later)."""
        warm_up = getattr(self.service, "warm_up", None)
        if warm_up is None:
            return
        started = time.monotonic()
        try:
            await asyncio.wait_for(warm_up(), _WARM_UP_TIMEOUT_S)
        except (OvbotError, asyncio.TimeoutError) as exc:
            log.warning("engine warm-up failed (%s); the first chat will be slower", type(exc).__name__)
            return
        log.info("engines warmed up in %.1f s", time.monotonic() - started)

    # ---------------------------------------------------------------- wiring
    def _handler(self, kind: JobKind, run: JobHandler) -> JobHandler:
        progress = self._progress

        async def handle(job: Job, sink: EventSink) -> dict[str, Any]:
            try:
                return await run(job, _ProgressSink(sink, job.id, progress))
            finally:
                progress.pop(job.id, None)

        return self.metrics.wrap_handler(kind.value, handle)

    def _build_store(self) -> Store:
        from ovbot.core.store.sqlite import SQLiteStore

        return SQLiteStore(self.settings.database_path, self.settings.data_dir)

    async def _build_engines(self) -> Engines:
        from ovbot.core.engines.factory import build_engines, check_devices

        if self.settings.engine == "remote":
            return build_engines(self.settings)
        from ovbot.models.cache import ModelCache

        check_devices(self.settings)  # before a download of gigabytes, not after it

        dirs: Mapping[str, Any] = await ModelCache(self.settings).ensure_ready_async(self.models)
        return build_engines(self.settings, dirs.get("llm"), dirs.get("image"))

    def _build_queue(self) -> JobQueue:
        from ovbot.core.jobs.queue import LocalJobQueue

        settings = self.settings
        return LocalJobQueue(
            self.store,
            max_running_chat=settings.max_running_chat,
            max_queued_per_user=settings.max_queued_per_user,
            max_queued_total=settings.max_queued_total,
            lease_s=settings.job_lease_s,
            max_attempts=settings.job_max_attempts,
        )

    def _build_limits(self) -> Any:
        from ovbot.core.limits import RateLimits

        return RateLimits.from_settings(self.store, self.settings, self.access)

    def _build_prompts(self) -> Any:
        from ovbot.core.prompts import PromptBuilder

        return PromptBuilder.from_settings(self.settings)

    def _build_service(self) -> Any:
        from ovbot.core.chat.service import ChatService

        return ChatService(self.store, self.queue, self.engines, self.limits, self.prompts, self.settings)
