"""The platform table: what ovbot adds around the engines, measured through the HTTP API.

- **HTTP turn overhead**: ``POST /chat`` one turn at a time (tiny models): the client's
  end-to-end time minus the LLM engine's time for that turn (from the chat service's
  ``stream()`` call to the engine's last token), split into before the engine (HTTP,
  auth, validation, limits, job row, queue dispatch, history and prompt) and after it
  (turn and job stored in one transaction, event to the waiting request, response).
- **200 concurrent sessions**: every session a distinct user sending several turns one
  after another, all sessions at once; each turn ends completed, rejected with a reason
  (an error body with a kind) or lost (anything else: a 500, a dropped connection, a
  completed turn whose messages are not in the database). Run with the default settings
  and with the queue capped, so the rejection path runs under load too.
- **Start-to-ready**: ``ovbot serve`` as a user starts it, until ``GET /ready`` says 200;
  without the compiled-model cache (the default), with an empty cache (it is filled) and
  with the filled cache.
- **Peak RSS** of the bot and its engine worker with both real-shape models loaded, while
  one chat and one image run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import Target, fmt, percentile, table
from bench.models import BenchModels

from ovbot.core.domain import ChatRef, JobKind, JobState
from ovbot.core.engines.types import ChatMessage, GenerationOptions

HTTP_OVERHEAD_P99_MS = 5.0
API_KEY = "bench-key-0123456789abcdef"
_SERVING = re.compile(r"serving on (http://\S+)")


@dataclass(frozen=True)
class PlatformConfig:
    overhead_turns: int = 200
    overhead_warmup: int = 10
    #: distinct users of the overhead run (each gets overhead_turns / users turns of history)
    overhead_users: int = 20
    sessions: int = 200
    turns_per_session: int = 3
    #: the second load run caps OVBOT_MAX_QUEUED_TOTAL here, so rejections happen
    capped_queue: int = 50
    max_new_tokens: int = 64
    #: real-shape start-to-ready and RSS (False in smoke mode: tiny models only)
    real_shape: bool = True
    image_steps: int = 2
    ready_timeout_s: float = 600.0


def smoke_platform_config() -> PlatformConfig:
    return PlatformConfig(
        overhead_turns=12, overhead_warmup=2, overhead_users=4, sessions=24, turns_per_session=2,
        capped_queue=4, max_new_tokens=16, real_shape=False, image_steps=1,
    )


# --------------------------------------------------------------------------- engine time


@dataclass
class EngineSpans:
    """(start, end) perf_counter times of every LLM engine call, in call order."""

    spans: list[tuple[float, float]] = field(default_factory=list)


class _TimedStream:
    def __init__(self, inner: Any, began: float, spans: EngineSpans) -> None:
        self._inner = inner
        self._began = began
        self._spans = spans
        self._recorded = False

    def __aiter__(self) -> "_TimedStream":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except (StopAsyncIteration, Exception):  # the end, or the engine's error: its call is over
            self._record()
            raise

    async def result(self) -> Any:
        try:
            return await self._inner.result()
        finally:
            self._record()

    def _record(self) -> None:
        if not self._recorded:
            self._recorded = True
            self._spans.spans.append((self._began, time.perf_counter()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TimedLLM:
    def __init__(self, inner: Any, spans: EngineSpans) -> None:
        self._inner = inner
        self._spans = spans

    async def stream(self, messages: Sequence[ChatMessage], options: GenerationOptions = GenerationOptions()) -> Any:
        began = time.perf_counter()
        return _TimedStream(await self._inner.stream(messages, options), began, self._spans)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedEngines:
    """The real engines, with the LLM's time per call recorded (the bench's only addition)."""

    def __init__(self, inner: Any, spans: EngineSpans) -> None:
        self._inner = inner
        self.llm = _TimedLLM(inner.llm, spans)
        self.image = inner.image

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()


# --------------------------------------------------------------------------- in-process server


def app_settings(llm: Path, image: Path | None, data_dir: Path, max_new_tokens: int, **overrides: Any) -> Any:
    """Settings for an in-process App of the bench: local model dirs (nothing is
    downloaded), a fresh data dir, no ``.env``, quiet logs; ``overrides`` win."""
    from ovbot.core.config import Settings

    values: dict[str, Any] = dict(
        _env_file=None,
        llm_model_dir=llm,
        image_model_dir=image,
        auto_download=False,
        max_new_tokens=max_new_tokens,
        data_dir=data_dir,
        log_level="WARNING",
    )
    values.update(overrides)
    return Settings(**values)


def tiny_settings(llm: Path, image: Path, data_dir: Path, cfg: PlatformConfig, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        image_sizes=["64x64"], image_default_size="64x64", image_default_steps=2, kv_cache_gb=1, api_keys=[API_KEY]
    )
    values.update(overrides)
    return app_settings(llm, image, data_dir, cfg.max_new_tokens, **values)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """The App started and served by uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    from ovbot.adapters.http import create_app

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that name it, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    await app.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(app.bot, app.settings, app.metrics, base_url=base_url), lifespan="off", log_config=None, access_log=False,
            log_level="warning", backlog=4096,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.01)
        yield base_url
    finally:
        server.should_exit = True
        await task
        await app.shutdown()
        sock.close()


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


#: what curl, requests and browsers do; httpx does not, and its request body would then
#: wait for the server's delayed ACK, a client-side delay that is not ovbot's
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


# --------------------------------------------------------------------------- HTTP overhead


@dataclass
class OverheadResult:
    total_ms: list[float]
    before_ms: list[float]
    after_ms: list[float]
    engine_ms: list[float]
    end_to_end_ms: list[float]


async def http_overhead(llm: Path, image: Path, cfg: PlatformConfig, log: Callable[[str], None]) -> OverheadResult:
    """Turns one at a time from a client in another thread (its own work stays off the
    server's event loop), each paired with the single engine call it caused."""
    from ovbot.core.app import App
    from ovbot.core.engines.factory import build_engines

    spans = EngineSpans()
    with tempfile.TemporaryDirectory(prefix="ovbot-bench-http-") as tmp:
        settings = tiny_settings(llm, image, Path(tmp), cfg)
        engines = TimedEngines(build_engines(settings, llm, image), spans)
        async with serving(App(settings, engines=engines, stop_grace_s=5)) as base_url:
            transport = httpx.HTTPTransport(socket_options=_NODELAY)
            with httpx.Client(base_url=base_url, headers=_headers(), timeout=120, transport=transport) as client:

                def turn(index: int) -> tuple[float, float]:
                    body = {"user_id": f"user{index % cfg.overhead_users}", "message": f"Turn {index}: what should I cook tonight?"}
                    began = time.perf_counter()
                    response = client.post("/chat", json=body)
                    ended = time.perf_counter()
                    if response.status_code != 200:
                        raise RuntimeError(f"POST /chat answered {response.status_code}: {response.text[:200]}")
                    return began, ended

                for index in range(cfg.overhead_warmup):
                    await asyncio.to_thread(turn, 10_000 + index)
                measured: list[tuple[float, float]] = []
                first_span = len(spans.spans)
                for index in range(cfg.overhead_turns):
                    measured.append(await asyncio.to_thread(turn, index))
    engine_spans = spans.spans[first_span:]
    if len(engine_spans) != len(measured):
        raise RuntimeError(f"{len(measured)} turns made {len(engine_spans)} engine calls; cannot pair them")
    result = OverheadResult([], [], [], [], [])
    for (began, ended), (engine_began, engine_ended) in zip(measured, engine_spans):
        if not began <= engine_began <= engine_ended <= ended:
            raise RuntimeError("an engine call falls outside its HTTP request")
        result.before_ms.append(1000 * (engine_began - began))
        result.after_ms.append(1000 * (ended - engine_ended))
        result.engine_ms.append(1000 * (engine_ended - engine_began))
        result.end_to_end_ms.append(1000 * (ended - began))
        result.total_ms.append(result.before_ms[-1] + result.after_ms[-1])
    log(f"  HTTP overhead: p50 {percentile(result.total_ms, 0.5):.2f} ms, p99 {percentile(result.total_ms, 0.99):.2f} ms")
    return result


# --------------------------------------------------------------------------- concurrent sessions


@dataclass
class LoadResult:
    label: str
    sessions: int
    turns: int
    completed: int
    rejected: Counter[str]
    lost: int
    lost_detail: Counter[str]
    latencies_s: list[float]
    wall_s: float
    #: image jobs the answers asked for, still running when the last answer came
    image_follow_ups: int = 0


async def _sessions(base_url: str, cfg: PlatformConfig) -> tuple[list[tuple[str, str, float]], float]:
    """Every session's turns: (user_id, outcome, seconds). Outcome is "ok:<job id>",
    "rejected:<kind>" or "lost:<what happened>"."""
    limits = httpx.Limits(max_connections=cfg.sessions + 16, max_keepalive_connections=cfg.sessions + 16)
    outcomes: list[tuple[str, str, float]] = []
    transport = httpx.AsyncHTTPTransport(socket_options=_NODELAY, limits=limits)
    async with httpx.AsyncClient(base_url=base_url, headers=_headers(), timeout=600, transport=transport) as client:

        async def session(number: int) -> None:
            user = f"session{number}"
            for turn in range(cfg.turns_per_session):
                body = {"user_id": user, "message": f"Session {number}, turn {turn}: suggest a book about rivers."}
                began = time.perf_counter()
                try:
                    response = await client.post("/chat", json=body)
                except httpx.HTTPError as exc:
                    outcomes.append((user, f"lost:{type(exc).__name__}", time.perf_counter() - began))
                    continue
                seconds = time.perf_counter() - began
                outcomes.append((user, _classify(response), seconds))

        started = time.perf_counter()
        await asyncio.gather(*(session(n) for n in range(cfg.sessions)))
        return outcomes, time.perf_counter() - started


def _classify(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"lost:{response.status_code} without a JSON body"
    if response.status_code == 200 and isinstance(body, dict) and body.get("job_id"):
        return f"ok:{body['job_id']}"
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code < 500 or response.status_code == 503:
        if isinstance(error, dict) and error.get("kind") and error.get("message"):
            return f"rejected:{error['kind']}"
    return f"lost:{response.status_code} {str(error)[:80]}"


async def concurrent_sessions(
    llm: Path, image: Path, cfg: PlatformConfig, label: str, log: Callable[[str], None], **overrides: Any
) -> LoadResult:
    from ovbot.adapters.http.auth import key_id
    from ovbot.core.app import App

    with tempfile.TemporaryDirectory(prefix="ovbot-bench-load-") as tmp:
        settings = tiny_settings(llm, image, Path(tmp), cfg, **overrides)
        app = App(settings, stop_grace_s=30)
        async with serving(app) as base_url:
            # the client in its own thread and loop: the server's loop serves only requests
            outcomes, wall = await asyncio.to_thread(asyncio.run, _sessions(base_url, cfg))
            # chat jobs only: a turn whose answer asked for a picture queues an image job,
            # which may still be running now (it is not the turn, and not lost)
            pending = await app.store.jobs_in_states([JobState.QUEUED, JobState.RUNNING])
            unfinished = [job for job in pending if job.kind is JobKind.CHAT]
            follow_ups = len(pending) - len(unfinished)
            stored: dict[str, int] = {}
            for number in range(cfg.sessions):
                user = f"session{number}"
                conversation = await app.store.active_conversation(ChatRef("http", f"{key_id(API_KEY)}:{user}"))
                stored[user] = len(await app.store.recent_turns(conversation, 10 * cfg.turns_per_session + 10))
    completed: dict[str, int] = Counter()
    rejected: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    latencies: list[float] = []
    for user, outcome, seconds in outcomes:
        kind, _, detail = outcome.partition(":")
        if kind == "ok":
            completed[user] += 1
            latencies.append(seconds)
        elif kind == "rejected":
            rejected[detail] += 1
        else:
            lost[detail] += 1
    for user, turns in stored.items():
        if turns != 2 * completed[user]:  # a user message and an answer per completed turn
            lost[f"{user}: {turns} stored messages for {completed[user]} completed turns"] += 1
    if unfinished:
        lost[f"{len(unfinished)} chat jobs still queued or running after every answer"] += len(unfinished)
    turns = cfg.sessions * cfg.turns_per_session
    if len(outcomes) != turns:
        lost[f"{turns - len(outcomes)} turns without any outcome"] += turns - len(outcomes)
    result = LoadResult(
        label, cfg.sessions, turns, sum(completed.values()), rejected, sum(lost.values()), lost, latencies, wall,
        follow_ups,
    )
    log(f"  {label}: {result.completed}/{turns} completed, {sum(rejected.values())} rejected, {result.lost} lost")
    return result


# --------------------------------------------------------------------------- start-to-ready and RSS


@dataclass
class StartResult:
    label: str
    ready_s: float
    rss_ready_mb: float = 0.0
    rss_peak_mb: float = 0.0
    hwm_mb: float = 0.0
    processes: int = 0
    workload_s: float = 0.0


class _RssSampler:
    """Sum of RSS over a process and its descendants, sampled until stopped."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._every = every_s
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self.last_mb = 0.0
        self.hwm_mb: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> float:
        import psutil

        total = 0
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return self.last_mb
        for process in processes:
            try:
                total += process.memory_info().rss
                self.hwm_mb[process.pid] = max(self.hwm_mb.get(process.pid, 0.0), _vm_hwm_mb(process.pid))
            except psutil.Error:
                pass
        self.last_mb = total / 1e6
        self.peak_mb = max(self.peak_mb, self.last_mb)
        return self.last_mb

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()


def _vm_hwm_mb(pid: int) -> float:
    """The kernel's peak RSS of one process (catches peaks between two samples); Linux only."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        pass
    return 0.0


def _serve_env(llm: Path, image: Path, data_dir: Path, cache_dir: Path | None, tiny: bool, cfg: PlatformConfig) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OVBOT_")}
    env.update(
        OVBOT_LLM_MODEL_DIR=str(llm),
        OVBOT_IMAGE_MODEL_DIR=str(image),
        OVBOT_DATA_DIR=str(data_dir),
        OVBOT_AUTO_DOWNLOAD="false",
        OVBOT_MAX_NEW_TOKENS=str(cfg.max_new_tokens),
        OVBOT_LOG_LEVEL="INFO",
        OVBOT_API_KEYS=API_KEY,
    )
    if tiny:
        env.update(OVBOT_KV_CACHE_GB="1", OVBOT_IMAGE_SIZES="64x64", OVBOT_IMAGE_DEFAULT_SIZE="64x64")
    if cache_dir is not None:
        env["OVBOT_COMPILE_CACHE_DIR"] = str(cache_dir)
    return env


async def start_to_ready(
    label: str, llm: Path, image: Path, cache_dir: Path | None, tiny: bool, cfg: PlatformConfig,
    log: Callable[[str], None], workload: bool = False,
) -> StartResult:
    """Start ``ovbot serve`` (a fresh database each time) and time it until ``/ready``
    answers 200; with ``workload``, then run one chat and one image and record RSS."""
    with tempfile.TemporaryDirectory(prefix="ovbot-bench-start-") as tmp:
        env = _serve_env(llm, image, Path(tmp) / "data", cache_dir, tiny, cfg)
        began = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "ovbot.bots.cli", "serve", "--port", "0"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        lines: list[str] = []
        url: dict[str, str] = {}
        found = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line.rstrip())
                match = _SERVING.search(line)
                if match and not found.is_set():
                    url["base"] = match.group(1)
                    found.set()
            found.set()

        reader = threading.Thread(target=read, name="serve-log", daemon=True)
        reader.start()
        try:
            with _RssSampler(process.pid) as rss:
                ready_s = await _wait_ready(process, began, found, url, cfg.ready_timeout_s, lines)
                result = StartResult(label, ready_s, rss_ready_mb=rss.sample())
                if workload:
                    result.workload_s = await _chat_and_image(url["base"], cfg, tiny)
                    rss.sample()
                result.rss_peak_mb = rss.peak_mb
                result.hwm_mb = sum(rss.hwm_mb.values())
                result.processes = len(rss.hwm_mb)
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
            reader.join(5)
    log(f"  start-to-ready {label}: {result.ready_s:.1f} s" + (f", peak RSS {result.rss_peak_mb:.0f} MB" if workload else ""))
    return result


async def _wait_ready(
    process: subprocess.Popen[str], began: float, found: threading.Event, url: dict[str, str],
    timeout_s: float, lines: list[str],
) -> float:
    deadline = began + timeout_s
    while not found.is_set():
        if process.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError("ovbot serve did not start: " + " | ".join(lines[-5:]))
        await asyncio.sleep(0.02)
    if "base" not in url:
        raise RuntimeError("ovbot serve exited: " + " | ".join(lines[-5:]))
    async with httpx.AsyncClient(base_url=url["base"], timeout=5) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/ready")).status_code == 200:
                    return time.perf_counter() - began
            if process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("ovbot serve never became ready: " + " | ".join(lines[-5:]))
            await asyncio.sleep(0.02)


async def _chat_and_image(base_url: str, cfg: PlatformConfig, tiny: bool) -> float:
    """One chat turn and one image at the same time, as two users would."""
    size = 64 if tiny else 512
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, headers=_headers(), timeout=1800) as client:
        queued = await client.post(
            "/images", json={"user_id": "rss-image", "prompt": "a lighthouse at dusk", "steps": cfg.image_steps,
                             "width": size, "height": size},
        )
        if queued.status_code != 202:
            raise RuntimeError(f"POST /images answered {queued.status_code}: {queued.text[:200]}")
        chat = await client.post("/chat", json={"user_id": "rss-chat", "message": "Tell me about lighthouses."})
        if chat.status_code != 200:
            raise RuntimeError(f"POST /chat answered {chat.status_code}: {chat.text[:200]}")
        job_id = queued.json()["job_id"]
        while True:
            job = (await client.get(f"/jobs/{job_id}", headers=_headers())).json()
            if job["state"] in ("done", "failed", "cancelled"):
                if job["state"] != "done":
                    raise RuntimeError(f"image job ended {job['state']}: {job.get('error')}")
                break
            await asyncio.sleep(0.1)
    return time.perf_counter() - began


# --------------------------------------------------------------------------- section


async def platform_section(
    models: BenchModels, tiny_llm: Path, tiny_image: Path, cfg: PlatformConfig, log: Callable[[str], None]
) -> tuple[str, list[Target]]:
    log("platform table: HTTP turn overhead")
    overhead = await http_overhead(tiny_llm, tiny_image, cfg, log)
    log("platform table: concurrent sessions")
    loads = [
        await concurrent_sessions(tiny_llm, tiny_image, cfg, "default settings", log),
        await concurrent_sessions(
            tiny_llm, tiny_image, cfg, f"queue capped at {cfg.capped_queue}", log, max_queued_total=cfg.capped_queue
        ),
    ]
    log("platform table: start-to-ready")
    starts: list[StartResult] = []
    shapes = [("tiny", tiny_llm, tiny_image, True)]
    if cfg.real_shape and models.main_image is not None:
        shapes.append(("real-shape", models.main_llm, models.main_image, False))
    for shape, llm, image, tiny in shapes:
        with tempfile.TemporaryDirectory(prefix="ovbot-bench-compile-cache-") as cache:
            starts.append(await start_to_ready(f"{shape}, no compile cache (default)", llm, image, None, tiny, cfg, log))
            starts.append(await start_to_ready(f"{shape}, empty compile cache (cold)", llm, image, Path(cache), tiny, cfg, log))
            starts.append(await start_to_ready(f"{shape}, filled compile cache (warm)", llm, image, Path(cache), tiny, cfg, log))
    rss_llm, rss_image, rss_tiny = (
        (models.main_llm, models.main_image, False) if cfg.real_shape and models.main_image is not None
        else (tiny_llm, tiny_image, True)
    )
    log("platform table: peak RSS")
    rss = await start_to_ready(
        "real-shape" if not rss_tiny else "tiny", rss_llm, rss_image, None, rss_tiny, cfg, log, workload=True
    )
    return render(overhead, loads, starts, rss, cfg)


def render(
    overhead: OverheadResult, loads: list[LoadResult], starts: list[StartResult], rss: StartResult, cfg: PlatformConfig
) -> tuple[str, list[Target]]:
    p99 = percentile(overhead.total_ms, 0.99)
    overhead_rows = [
        [name, fmt(percentile(values, 0.5), 2), fmt(percentile(values, 0.99), 2), fmt(max(values), 2)]
        for name, values in (
            ("overhead (end-to-end minus engine)", overhead.total_ms),
            ("  before the engine", overhead.before_ms),
            ("  after the engine", overhead.after_ms),
            ("engine (LLM call)", overhead.engine_ms),
            ("end-to-end (client)", overhead.end_to_end_ms),
        )
    ]
    load_rows = []
    for load in loads:
        reasons = ", ".join(f"{count} {kind}" for kind, count in load.rejected.most_common()) or "-"
        load_rows.append([
            load.label, str(load.sessions), str(load.turns), str(load.completed), str(sum(load.rejected.values())),
            str(load.lost),
            fmt(percentile(load.latencies_s, 0.5), 2) if load.latencies_s else "n/a",
            fmt(percentile(load.latencies_s, 0.95), 2) if load.latencies_s else "n/a",
            fmt(load.completed / load.wall_s, 1), str(load.image_follow_ups), reasons,
        ])
    start_rows = [[start.label, fmt(start.ready_s, 1)] for start in starts]
    lost = sum(load.lost for load in loads)
    details = [f"{detail} ({count})" for load in loads for detail, count in load.lost_detail.items()]
    rss_shape = "tiny models (smoke)" if not cfg.real_shape else "both real-shape models (INT4 LLM, fp16 SD1.5 IR)"
    parts = [
        "### Platform table",
        f"Tiny models, `max_new_tokens` {cfg.max_new_tokens}, the real App (SQLite, durable queue, engine "
        "worker process) behind uvicorn on 127.0.0.1; clients use httpx from another thread.",
        "#### HTTP turn overhead",
        f"`POST /chat`, one turn at a time, {cfg.overhead_turns} turns of {cfg.overhead_users} users (after "
        f"{cfg.overhead_warmup} warm-up turns). Engine = from the chat service's call into the LLM engine to its "
        "last token (includes the hop to the worker process); before = HTTP, auth, validation, limits, job row, "
        "dispatch, history and prompt; after = turn and job stored, answer handed to the request, response.",
        table(["ms per turn", "p50", "p99", "max"], overhead_rows, "lrrr"),
        "#### Concurrent sessions",
        f"{cfg.sessions} sessions at once, each a distinct user sending {cfg.turns_per_session} turns one after "
        "another (`POST /chat`, waiting for the answer). Rejected = an error body with a reason, the turn not "
        "stored; lost = anything else (counted from the responses and from the database: every completed turn "
        "must have its question and answer stored, no chat job may be left queued or running). Images "
        "pending = picture jobs that answers asked for, still running after the last answer.",
        table(
            ["run", "sessions", "turns", "completed", "rejected", "lost", "latency p50 s",
             "latency p95 s", "turns/s", "images pending", "rejection reasons"],
            load_rows, "lrrrrrrrrrl",
        ),
        "#### Start-to-ready",
        "`ovbot serve` in a new process with a fresh database until `GET /ready` answers 200 (Python start, "
        "settings, model check, engine worker loading and compiling both models, queue). The models' files are in "
        "the OS page cache (a first start after a reboot also reads them from disk).",
        table(["start", "seconds"], start_rows, "lr"),
        "#### Memory",
        f"Peak RSS of the bot and its engine worker ({rss.processes} processes) with {rss_shape} loaded, while "
        f"one chat and one {cfg.image_steps}-step image ran ({rss.workload_s:.1f} s): sampled every 0.1 s, and the "
        "sum of each process's own peak (VmHWM).",
        table(
            ["RSS", "MB"],
            [["after start (ready)", fmt(rss.rss_ready_mb, 0)], ["peak, sampled sum", fmt(rss.rss_peak_mb, 0)],
             ["sum of per-process peaks", fmt(rss.hwm_mb, 0)]],
            "lr",
        ),
    ]
    if details:
        parts.append("Lost turns: " + "; ".join(details[:10]) + ".")
    targets = [
        Target("HTTP overhead p99", f"<= {HTTP_OVERHEAD_P99_MS:g} ms", f"{p99:.2f} ms", p99 <= HTTP_OVERHEAD_P99_MS),
        Target(f"lost turns at {cfg.sessions} HTTP sessions", "0", str(lost), lost == 0),
    ]
    return "\n\n".join(parts), targets
