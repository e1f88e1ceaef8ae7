"""The bot-process side of the local engines: spawns and supervises the worker process,
turns requests into protocol messages and worker messages into stream events.

A reader thread blocks on the pipe (releasing the GIL) and hands each message to the
event loop with ``call_soon_threadsafe``; the loop itself never blocks on the worker.
If the worker dies, every request in flight fails with ``EngineInterrupted`` (the job
queue runs those jobs again), health says "restarting" until the worker is back (with
backoff), and "down" only once ``max_restarts`` is spent: the queue waits while it says
"restarting" and gives up on waiting jobs only at "down".

The worker and the image process ignore SIGINT and SIGTERM: Ctrl-C in a terminal and
systemd's stop signal every process of the group, and the bot must be the one to decide
(finish or re-queue the running job, then stop its children over the pipe).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ovbot.core.engines.local.protocol import (
    Cancel,
    ChatDeltas,
    ChatDone,
    ChatStarted,
    Fatal,
    ImageDone,
    ImageStep,
    Ready,
    RequestFailed,
    Shutdown,
    Stats,
    StatsQuery,
    SubmitChat,
    SubmitImage,
    WorkerConfig,
)
from ovbot.core.engines.local.worker import stop_child, worker_main
from ovbot.core.engines.schema import check_json_schema
from ovbot.core.engines.streams import ImageJob, LLMStream
from ovbot.core.engines.types import (
    ChatMessage,
    EngineHealth,
    GenerationOptions,
    HealthState,
    ImageLimits,
    ImageRequest,
    ImageResult,
    LLMMetrics,
)
from ovbot.core.errors import (
    BadParameter,
    Cancelled,
    EngineError,
    EngineInterrupted,
    EngineUnavailable,
)

log = logging.getLogger("ovbot.engine")

WORKER_DIED = "The local engine stopped unexpectedly and is restarting; please try again in a moment."


@dataclass(slots=True)
class _ChatState:
    stream: LLMStream
    submitted_at: float
    prompt_tokens: int = 0
    ttft_s: float | None = None


@dataclass(slots=True)
class _ImageState:
    job: ImageJob


def _error_from(message: RequestFailed) -> EngineError:
    if message.kind == "bad_parameter":
        return BadParameter(message.field or "request", message.message)
    if message.kind == "cancelled":
        return Cancelled(message.message)
    return EngineUnavailable(message.message)


class _WorkerProcess:
    """One incarnation of the worker: process, pipe and reader thread."""

    def __init__(self, config: WorkerConfig, on_message: Any, on_exit: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=worker_main, args=(child_conn, config), name="ovbot-engine-worker", daemon=True
        )
        self.process.start()
        child_conn.close()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read, args=(on_message, on_exit), name="ovbot-engine-reader", daemon=True
        )
        self._reader.start()

    def _read(self, on_message: Any, on_exit: Any) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            on_message(message)
        on_exit(self)

    def send(self, message: object) -> bool:
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except (OSError, ValueError, BrokenPipeError):
            return False

    def stop(self, timeout: float) -> None:
        stop_child(self.process, lambda: self.send(Shutdown()), timeout)
        self._conn.close()


class LocalEngines:
    """Both OpenVINO engines behind one supervised worker process."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        start_timeout_s: float = 300.0,
        max_restarts: int = 5,
        llm_timeout_s: float | None = 600.0,
        image_timeout_s: float | None = 1800.0,
    ) -> None:
        self.config = config
        self._start_timeout_s = start_timeout_s
        self._max_restarts = max_restarts
        self._llm_timeout_s = llm_timeout_s
        self._image_timeout_s = image_timeout_s
        self._ids = itertools.count(1)
        self._chats: dict[int, _ChatState] = {}
        self._images: dict[int, _ImageState] = {}
        self._stats_waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._worker: _WorkerProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[tuple[str, ...]] | None = None
        self._state: HealthState = "stopped"
        self._detail = ""
        self._loaded: tuple[str, ...] = ()
        self._restarts = 0
        self._closing = False
        self._restart_task: asyncio.Task[None] | None = None
        self.llm = LocalLLMEngine(self)
        self.image = LocalImageEngine(self, config.image_limits)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "LocalEngines":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the worker and wait until both models are loaded (or raise)."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        await self._spawn("starting")

    async def _spawn(self, state: HealthState) -> None:
        assert self._loop is not None
        self._state, self._detail = state, "loading models"
        self._ready = self._loop.create_future()
        started = time.monotonic()
        self._worker = _WorkerProcess(self.config, self._from_thread, self._exited_from_thread)
        try:
            self._loaded = await asyncio.wait_for(asyncio.shield(self._ready), self._start_timeout_s)
        except asyncio.TimeoutError:
            await self._stop_worker()
            self._state, self._detail = "down", "the engine worker did not start in time"
            raise EngineUnavailable(f"The local engine did not start within {self._start_timeout_s:g} s.") from None
        except EngineUnavailable as exc:
            await self._stop_worker()
            self._state, self._detail = "down", exc.user_message
            raise
        self._state, self._detail = "ready", ""
        log.info(
            "engine worker pid %s ready in %.1f s (loaded: %s)",
            self._worker.process.pid,
            time.monotonic() - started,
            ", ".join(self._loaded) or "nothing",
        )

    async def close(self) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        await self._stop_worker()
        self._fail_all(EngineUnavailable("The engine is shutting down."))
        self._state, self._detail = "stopped", ""

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.stop, 10.0)

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, self._restarts, self._detail, self._loaded)

    @property
    def worker_pid(self) -> int | None:
        return self._worker.process.pid if self._worker else None

    async def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Live counters from inside the worker (active chats, image queue...)."""
        assert self._loop is not None
        query_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._stats_waiters[query_id] = future
        try:
            self._send(StatsQuery(query_id))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._stats_waiters.pop(query_id, None)

    # ------------------------------------------------------------------ requests
    def _require_ready(self) -> None:
        if self._state != "ready" or self._worker is None:
            detail = f" ({self._detail})" if self._detail else ""
            raise EngineUnavailable(f"The local engine is not ready: {self._state}{detail}.")

    def _send(self, message: object) -> None:
        if self._worker is None or not self._worker.send(message):
            raise EngineInterrupted(WORKER_DIED)

    def submit_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> LLMStream:
        self._require_ready()
        if "llm" not in self._loaded:
            raise EngineUnavailable("No chat model is loaded.")
        if not messages:
            raise BadParameter("messages", "at least one message is needed")
        if options.json_schema is not None:
            check_json_schema(options.json_schema)
        max_new = options.max_new_tokens or self.config.default_max_new_tokens
        if max_new < 1:
            raise BadParameter("max_new_tokens", "must be at least 1")
        request_id = next(self._ids)
        timeout = options.timeout_s if options.timeout_s is not None else self._llm_timeout_s
        stream = LLMStream(
            request_id=str(request_id),
            on_cancel=lambda: self._cancel(request_id, "chat"),
            starts_in_reasoning=False,  # corrected by ChatStarted before any text arrives
            expects_json=options.json_schema is not None,
            timeout_s=timeout,
        )
        self._chats[request_id] = _ChatState(stream, time.monotonic())
        message = SubmitChat(
            request_id=request_id,
            messages=tuple((m.role, m.content) for m in messages),
            max_new_tokens=max_new,
            temperature=options.temperature,
            top_p=options.top_p,
            json_schema=None if options.json_schema is None else json.dumps(options.json_schema),
            think=options.think,
            max_reasoning_chars=options.max_reasoning_chars,
            ignore_eos=options.ignore_eos,
            seed=options.seed,
        )
        try:
            self._send(message)
        except EngineUnavailable:
            self._chats.pop(request_id, None)
            raise
        return stream

    def submit_image(self, request: ImageRequest) -> ImageJob:
        resolved = request.resolve(self.image.limits)
        self._require_ready()
        if "image" not in self._loaded:
            raise EngineUnavailable("No image model is loaded.")
        request_id = next(self._ids)
        timeout = request.timeout_s if request.timeout_s is not None else self._image_timeout_s
        job = ImageJob(
            request=resolved, on_cancel=lambda: self._cancel(request_id, "image"), timeout_s=timeout
        )
        self._images[request_id] = _ImageState(job)
        try:
            self._send(SubmitImage(request_id, resolved))
        except EngineUnavailable:
            self._images.pop(request_id, None)
            raise
        return job

    def _cancel(self, request_id: int, kind: str) -> None:
        self._chats.pop(request_id, None)
        self._images.pop(request_id, None)
        if self._worker is not None:
            self._worker.send(Cancel(request_id, kind))

    # ------------------------------------------------------------------ worker messages
    def _from_thread(self, message: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, message)

    def _exited_from_thread(self, worker: _WorkerProcess) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_worker_exit, worker)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, ChatDeltas):
            now = time.monotonic()
            for request_id, _worker_ttft in message.first_token_times:
                state = self._chats.get(request_id)
                if state is not None:
                    # measured from the bot's submit, so it includes the pipe hop
                    state.ttft_s = now - state.submitted_at
            for request_id, text in message.deltas:
                state = self._chats.get(request_id)
                if state is not None:
                    state.stream.feed(text)
        elif isinstance(message, ChatStarted):
            state = self._chats.get(message.request_id)
            if state is not None:
                state.prompt_tokens = message.prompt_tokens
                state.stream.set_starts_in_reasoning(message.starts_in_reasoning)
        elif isinstance(message, ChatDone):
            state = self._chats.pop(message.request_id, None)
            if state is not None:
                state.stream.finish(
                    LLMMetrics(
                        prompt_tokens=state.prompt_tokens,
                        generated_tokens=message.generated_tokens,
                        ttft_s=state.ttft_s,
                        duration_s=time.monotonic() - state.submitted_at,
                        finish_reason=message.finish_reason,  # type: ignore[arg-type]
                    )
                )
        elif isinstance(message, ImageStep):
            image = self._images.get(message.request_id)
            if image is not None:
                image.job.progress(message.step, message.total)
        elif isinstance(message, ImageDone):
            image = self._images.pop(message.request_id, None)
            if image is not None:
                image.job.finish(ImageResult(message.png, image.job.request, message.duration_s))
        elif isinstance(message, RequestFailed):
            self._fail_one(message.request_id, _error_from(message))
        elif isinstance(message, Stats):
            waiter = self._stats_waiters.get(message.query_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(message.values)
        elif isinstance(message, Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message.loaded)
        elif isinstance(message, Fatal):
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(EngineUnavailable(f"The local engine failed to start: {message.message}"))

    def _fail_one(self, request_id: int, error: EngineError) -> None:
        chat = self._chats.pop(request_id, None)
        if chat is not None:
            chat.stream.fail(error)
        image = self._images.pop(request_id, None)
        if image is not None:
            image.job.fail(error)

    def _fail_all(self, error: EngineError) -> None:
        for request_id in list(self._chats) + list(self._images):
            self._fail_one(request_id, error)
        for waiter in self._stats_waiters.values():
            if not waiter.done():
                waiter.set_exception(error)

    def _on_worker_exit(self, worker: _WorkerProcess) -> None:
        if worker is not self._worker:
            return  # an old incarnation we stopped on purpose
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineUnavailable("The engine worker exited while loading models."))
            return
        if self._closing:
            return
        exit_code = worker.process.exitcode
        log.error("engine worker pid %s exited unexpectedly (exit code %s)", worker.process.pid, exit_code)
        self._worker = None
        self._fail_all(EngineInterrupted(WORKER_DIED))
        self._state, self._detail = "restarting", f"worker exited with code {exit_code}"
        self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        while not self._closing:
            if self._restarts >= self._max_restarts:
                self._state = "down"
                self._detail = (
                    f"the engine worker stopped and {self._restarts} restarts did not keep it up; restart ovbot"
                    if self._max_restarts
                    else "the engine worker stopped and OVBOT_WORKER_MAX_RESTARTS=0; restart ovbot"
                )
                log.error("engine worker not restarted: %s", self._detail)
                return
            self._restarts += 1
            await asyncio.sleep(min(2 ** (self._restarts - 1) * 0.5, 30))
            try:
                await self._spawn("restarting")
                return
            except EngineUnavailable as exc:
                log.error("engine worker restart %d failed: %s", self._restarts, exc.user_message)
                # _spawn said "down"; it is not, while restarts are left (the queue
                # fails every waiting job at "down")
                self._state, self._detail = "restarting", f"restart {self._restarts} failed"


class LocalLLMEngine:
    def __init__(self, owner: LocalEngines) -> None:
        self._owner = owner

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions = GenerationOptions()
    ) -> LLMStream:
        return self._owner.submit_chat(messages, options)

    def health(self) -> EngineHealth:
        return self._owner.health()


class LocalImageEngine:
    def __init__(self, owner: LocalEngines, limits: ImageLimits) -> None:
        self._owner = owner
        self.limits = limits

    async def generate(self, request: ImageRequest) -> ImageJob:
        return self._owner.submit_image(request)

    def health(self) -> EngineHealth:
        return self._owner.health()
