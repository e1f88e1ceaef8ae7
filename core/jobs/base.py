"""The queue interface the chat service and adapters depend on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ovbot.core.domain import Job, JobKind, ReplyEvent, Turn, UserRef
from ovbot.core.jobs.gate import EngineGate


class EventSink(Protocol):
    """Where a running job reports progress; the queue fans events out to subscribers
    (SSE clients, platform adapters) and keeps them for late subscribers."""

    def emit(self, type: str, text: str = "", **data: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a handler may return instead of a bare result dict: the result plus the
    conversation turns to store in the same transaction as the job's end, so a reply is
    never stored without its job being done (or the other way round)."""

    result: dict[str, Any]
    turns: Sequence[Turn] = ()


#: Runs one job; returns the job's result (dict or JobOutcome) or raises an OvbotError
#: (job failed) or asyncio.CancelledError (job cancelled).
JobHandler = Callable[[Job, EventSink], Awaitable["dict[str, Any] | JobOutcome"]]


@dataclass(frozen=True, slots=True)
class QueuePosition:
    position: int  # 1 = next to run; 0 = running
    eta_s: float | None


class JobQueue(Protocol):
    def register(self, kind: JobKind, handler: JobHandler) -> None: ...

    def set_gate(self, kind: JobKind, gate: EngineGate | None) -> None:
        """Start jobs of ``kind`` only while ``gate`` is open; None removes it."""

    async def start(self) -> None:
        """Recover: re-queue jobs whose lease expired, load queued jobs, start workers."""

    async def stop(self, grace_s: float) -> None:
        """Stop intake, let running jobs finish for up to ``grace_s``, then release them
        (they stay durable and run again after the next start)."""

    async def submit(self, job: Job, usage: Sequence[str] = ()) -> Job:
        """Persist (committed) then schedule. Raises QueueFull when bounded out.
        ``usage``: limit kinds charged to the user in the job's insert transaction."""

    async def cancel(self, job_id: str, requester: UserRef, is_admin: bool = False) -> Job:
        """Cancel a queued or running job (owner or admin). NotFound / Forbidden."""

    def position(self, job_id: str) -> QueuePosition | None:
        """Live position and ETA of a queued or running job; None when not live."""

    def subscribe(self, job_id: str) -> AsyncIterator[ReplyEvent]:
        """Events of a job from its first one (replayed) until a terminal event."""

    def live_jobs_of(self, user_key: str) -> list[Job]:
        """The user's running and waiting jobs (running first, then in line order)."""

    def depth(self) -> dict[str, int]:
        """Queued and running counts by kind, for /ready and /metrics."""
