"""ovbot as a bot runs it: LocalEngines (worker process) behind the core's durable job
queue on a SQLite store, with handlers that stream replies as job events. The bench
submits jobs and reads their events like an adapter would."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from ovbot.core.domain import ChatRef, Job, JobKind, UserRef
from ovbot.core.engines.local import LocalEngines, WorkerConfig
from ovbot.core.engines.types import ChatMessage, GenerationOptions, ImageLimits, ImageRequest
from ovbot.core.jobs.base import EventSink
from ovbot.core.jobs.queue import LocalJobQueue
from ovbot.core.store.sqlite import SQLiteStore

from bench.common import Chat


def worker_config(
    llm_dir: Path | None,
    image_dir: Path | None,
    image_size: tuple[int, int] = (512, 512),
    max_num_seqs: int = 16,
    kv_cache_gb: int = 2,
) -> WorkerConfig:
    limits = ImageLimits(sizes=(image_size,), default_size=image_size, default_steps=3, min_steps=1)
    return WorkerConfig(
        llm_dir=str(llm_dir) if llm_dir else None,
        image_dir=str(image_dir) if image_dir else None,
        kv_cache_gb=kv_cache_gb,
        max_num_seqs=max_num_seqs,
        image_limits=limits,
    )


def chat_options(new_tokens: int) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True, seed=1)


class BotHarness:
    """LocalEngines + LocalJobQueue + SQLiteStore, started and stopped together."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engines = LocalEngines(config)
        self._tmp = tempfile.TemporaryDirectory(prefix="ovbot-bench-")
        root = Path(self._tmp.name)
        self.store = SQLiteStore(root / "bench.sqlite3", root / "data")
        self.queue: LocalJobQueue | None = None
        self.load_s = 0.0
        self._users = 0

    async def __aenter__(self) -> "BotHarness":
        started = time.perf_counter()
        await self.store.initialize()
        await self.engines.start()
        self.load_s = time.perf_counter() - started
        self.queue = LocalJobQueue(
            self.store,
            max_running_chat=64,
            max_queued_per_user=1000,
            max_queued_total=10000,
            lease_s=600.0,
        )
        self.queue.register(JobKind.CHAT, self._chat_job)
        self.queue.register(JobKind.IMAGE, self._image_job)
        await self.queue.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self.queue is not None:
                await self.queue.stop(5.0)
            await self.engines.close()
            await self.store.close()
        finally:
            self._tmp.cleanup()

    # ---------------------------------------------------------------- handlers
    async def _chat_job(self, job: Job, sink: EventSink) -> dict[str, Any]:
        payload = job.payload
        messages = [ChatMessage(role, content) for role, content in payload["messages"]]
        stream = await self.engines.llm.stream(messages, chat_options(payload["max_new_tokens"]))
        async for delta in stream:
            sink.emit("text", delta.text)
        result = await stream.result()
        return {
            "tokens": result.metrics.generated_tokens,
            "prompt_tokens": result.metrics.prompt_tokens,
            "engine_ttft_s": result.metrics.ttft_s,
        }

    async def _image_job(self, job: Job, sink: EventSink) -> dict[str, Any]:
        image = await self.engines.image.generate(ImageRequest(**job.payload))
        async for progress in image:
            sink.emit("image_progress", step=progress.step, total=progress.total)
        result = await image.result()
        return {"duration_s": result.duration_s, "png_bytes": len(result.png)}

    # ---------------------------------------------------------------- submitting
    async def submit(self, kind: JobKind, payload: dict[str, Any]) -> Job:
        assert self.queue is not None
        self._users += 1
        user = UserRef("bench", f"user{self._users}")
        chat = ChatRef("bench", f"chat{self._users}")
        await self.store.upsert_user(user)
        conversation = await self.store.active_conversation(chat)
        job = Job(kind=kind, user=user, chat=chat, conversation_id=conversation, payload=payload)
        return await self.queue.submit(job)

    async def chat(
        self, messages: list[tuple[str, str]], new_tokens: int, started: float
    ) -> tuple[float | None, float, dict[str, Any]]:
        """Submit one chat job and follow its events: (TTFT, end) in seconds since
        ``started`` as the user sees them (first "text" event, terminal event)."""
        assert self.queue is not None
        job = await self.submit(JobKind.CHAT, {"messages": messages, "max_new_tokens": new_tokens})
        first: float | None = None
        async for event in self.queue.subscribe(job.id):
            if event.type == "text" and first is None:
                first = time.perf_counter() - started
            if event.terminal:
                if event.type != "done":
                    raise RuntimeError(f"chat job ended with {event.type}: {event.text}")
                return first, time.perf_counter() - started, dict(event.data)
        raise RuntimeError("event stream ended without a terminal event")

    async def chat_of(self, chat: Chat, new_tokens: int, started: float) -> tuple[float | None, float, dict[str, Any]]:
        return await self.chat([("system", chat.system), ("user", chat.user)], new_tokens, started)

    async def image(self, payload: dict[str, Any], on_step: Any = None) -> tuple[float, list[float], dict[str, Any]]:
        """Submit one image job: (wall seconds, time of each progress event, result)."""
        assert self.queue is not None
        started = time.perf_counter()
        job = await self.submit(JobKind.IMAGE, payload)
        steps: list[float] = []
        async for event in self.queue.subscribe(job.id):
            if event.type == "image_progress":
                steps.append(time.perf_counter() - started)
                if on_step is not None:
                    on_step(event.data.get("step", 0), event.data.get("total", 0))
            if event.terminal:
                if event.type != "done":
                    raise RuntimeError(f"image job ended with {event.type}: {event.text}")
                return time.perf_counter() - started, steps, dict(event.data)
        raise RuntimeError("event stream ended without a terminal event")


async def gather_chats(harness: BotHarness, chats: list[Chat], new_tokens: int) -> Any:
    from bench.common import ChatRun

    started = time.perf_counter()
    results = await asyncio.gather(*(harness.chat_of(chat, new_tokens, started) for chat in chats))
    wall = time.perf_counter() - started
    return ChatRun(
        engine="ovbot",
        concurrency=len(chats),
        tokens=sum(int(data["tokens"]) for _, _, data in results),
        wall_s=wall,
        ttfts=[first if first is not None else end for first, end, _ in results],
        prompt_tokens=[int(data["prompt_tokens"]) for _, _, data in results],
        ends=[end for _, end, _ in results],
    )
