"""One job kind's waiting line and running set, served in fair order (start-time fair
queueing; see ``ovbot.core.jobs.queue`` for why)."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ovbot.core.domain import Job, JobKind

StopReason = Literal["cancel", "shutdown"]


@dataclass(order=True, slots=True)
class Waiting:
    tag: int
    seq: int
    job: Job = field(compare=False)
    enqueued_at: float = field(compare=False, default=0.0)


@dataclass(slots=True)
class Running:
    job: Job
    started_at: float
    #: its place in line when it started, to give it back if the run is interrupted
    entry: Waiting | None = None
    runner: asyncio.Task[None] | None = None
    handler_task: asyncio.Task[Any] | None = None
    stop_reason: StopReason | None = None


class Lane:
    """Waiting line and running set of one job kind, served in fair order."""

    def __init__(self, kind: JobKind, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"{kind.value} concurrency must be at least 1")
        self.kind = kind
        self.concurrency = concurrency
        self.waiting: list[Waiting] = []  # kept sorted: the order the lane serves
        self.running: dict[str, Running] = {}
        self._virtual = 0  # tag of the job that started last
        self._last_tag: dict[str, int] = {}  # per user, only while it matters
        self._seq = 0
        self._front_seq = 0  # decreasing: jobs put at the front sort before everyone

    def add(self, job: Job, now: float) -> None:
        user = job.user.key
        tag = max(self._virtual, self._last_tag.get(user, -1) + 1)
        self._last_tag[user] = tag
        self._seq += 1
        bisect.insort(self.waiting, Waiting(tag, self._seq, job, now))

    def add_front(self, jobs: Sequence[Job], now: float) -> None:
        """Jobs that were running when their run was lost (a crashed process): they go
        before everything waiting, in the order given (oldest first)."""
        self._front_seq -= len(jobs)
        for index, job in enumerate(jobs):
            bisect.insort(self.waiting, Waiting(self._virtual, self._front_seq + index, job, now))

    def put_back(self, entry: Waiting) -> None:
        """A job whose run was interrupted goes back where it was when it started: its
        tag is not after anything waiting now, so it is next (before its user's others)."""
        bisect.insort(self.waiting, entry)

    def pop(self) -> Waiting:
        entry = self.waiting.pop(0)
        self._virtual = max(self._virtual, entry.tag)
        # a tag below the virtual time no longer changes max(); forget it
        self._last_tag = {u: t for u, t in self._last_tag.items() if t >= self._virtual}
        return entry

    def remove(self, job_id: str) -> Job | None:
        for index, entry in enumerate(self.waiting):
            if entry.job.id == job_id:
                del self.waiting[index]
                return entry.job
        return None

    def take_all(self) -> list[Job]:
        """Empty the line (the engine of this kind is gone for good)."""
        jobs = [entry.job for entry in self.waiting]
        self.waiting.clear()
        return jobs

    def find_waiting(self, job_id: str) -> Job | None:
        return next((e.job for e in self.waiting if e.job.id == job_id), None)

    @property
    def has_room(self) -> bool:
        return len(self.running) < self.concurrency
