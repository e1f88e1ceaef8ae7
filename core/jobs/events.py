"""Per-job event logs with fan-out.

A job's events are kept in memory so that a subscriber arriving late (an SSE client that
reconnects, an adapter that starts watching after ``submit`` returned) still sees the
whole reply. Logs are bounded twice: per job (``history_limit``; beyond it consecutive
deltas are coalesced instead of dropped, so a late reader still gets the full text) and
in time (a finished job's log is kept ``keep_s`` seconds, then dropped). Once a log is
gone, the store still knows how the job ended, and ``subscribe`` rebuilds the terminal
event from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from ovbot.core.domain import Job, JobState, ReplyEvent
from ovbot.core.errors import NotFound
from ovbot.core.store.base import Store

log = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset({"done", "error", "cancelled"})
#: Deltas whose text can be concatenated when a log is full.
_CONCATENATED = frozenset({"text", "reasoning"})
#: Snapshots where only the latest value matters when a log is full.
_REPLACEABLE = frozenset({"status", "image_progress"})
#: What a run produces as it goes (void when the run is lost and the job runs again).
_DELTAS = frozenset({"text", "reasoning", "image_progress"})


def terminal_event_from_job(job: Job) -> ReplyEvent | None:
    """The event a subscriber would have seen last, rebuilt from the durable record."""
    if job.state is JobState.DONE:
        return ReplyEvent(job.id, "done", data=dict(job.result or {}), seq=1)
    if job.state is JobState.FAILED:
        error = job.error or {}
        message = str(error.get("message") or "The request failed.")
        return ReplyEvent(job.id, "error", text=message, data={"kind": error.get("kind", "error")}, seq=1)
    if job.state is JobState.CANCELLED:
        return ReplyEvent(job.id, "cancelled", seq=1)
    return None


class _JobLog:
    """History and live subscribers of one job."""

    __slots__ = ("events", "subscribers", "next_seq", "finished_at")

    def __init__(self) -> None:
        self.events: list[ReplyEvent] = []
        self.subscribers: list[asyncio.Queue[ReplyEvent]] = []
        self.next_seq = 1
        self.finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


class JobSink:
    """The EventSink a handler gets: bound to one job, and unable to end it, because a
    terminal event must only go out after the queue has persisted the outcome."""

    def __init__(self, hub: "EventHub", job_id: str) -> None:
        self._hub = hub
        self._job_id = job_id

    def emit(self, type: str, text: str = "", **data: Any) -> None:
        if type in TERMINAL_TYPES:
            raise ValueError(f"handlers may not emit {type!r}: the queue ends the job")
        self._hub.publish(self._job_id, type, text, data)


class EventHub:
    """All live job logs of one queue (no module state: one hub per queue instance)."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        history_limit: int = 512,
        keep_s: float = 600.0,
        max_finished: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history_limit < 2:
            raise ValueError("history_limit must leave room for at least one event and the end")
        self._store = store
        self._history_limit = history_limit
        self._keep_s = keep_s
        self._max_finished = max_finished
        self._clock = clock
        self._logs: dict[str, _JobLog] = {}
        #: finished job ids in the order they finished, for time/size based eviction
        self._finished: OrderedDict[str, float] = OrderedDict()

    # ------------------------------------------------------------------ writing
    def open(self, job_id: str) -> None:
        """Make sure a log exists, so subscribers wait for live events instead of
        asking the store about a job that simply has not said anything yet."""
        self._evict()
        self._logs.setdefault(job_id, _JobLog())

    def reopen(self, job_id: str) -> None:
        """Start a fresh log for a job that runs again after its end was not recorded
        (live subscribers of an unfinished log keep theirs)."""
        job_log = self._logs.get(job_id)
        if job_log is not None and job_log.finished:
            del self._logs[job_id]
            self._finished.pop(job_id, None)

    def discard_deltas(self, job_id: str) -> None:
        """Forget the text, reasoning and progress of a run that was lost (the job runs
        again): a subscriber arriving later replays only the run that counts. Live
        subscribers already got them, and the queue's "retry" status tells them to drop them."""
        job_log = self._logs.get(job_id)
        if job_log is not None and not job_log.finished:
            job_log.events = [e for e in job_log.events if e.type not in _DELTAS]

    def sink(self, job_id: str) -> JobSink:
        return JobSink(self, job_id)

    def publish(
        self, job_id: str, type: str, text: str = "", data: dict[str, Any] | None = None
    ) -> ReplyEvent | None:
        """Append and fan out; returns the event, or None when the job already ended
        (a stray delta from a handler that was cancelled must not follow the end).
        ``data`` is a dict, not keywords, so a result with a "text" key fits as is."""
        self._evict()
        job_log = self._logs.setdefault(job_id, _JobLog())
        if job_log.finished:
            log.debug("dropped %s event for finished job %s", type, job_id)
            return None
        event = ReplyEvent(job_id, type, text=text, data=dict(data or {}), seq=job_log.next_seq)  # type: ignore[arg-type]
        job_log.next_seq += 1
        self._append(job_log, event)
        for queue in job_log.subscribers:
            queue.put_nowait(event)
        if event.terminal:
            job_log.finished_at = self._clock()
            self._finished[job_id] = job_log.finished_at
        return event

    def _append(self, job_log: _JobLog, event: ReplyEvent) -> None:
        events = job_log.events
        if len(events) < self._history_limit or event.terminal:
            events.append(event)
            return
        last = events[-1]
        if last.type == event.type and event.type in _CONCATENATED:
            events[-1] = replace(event, text=last.text + event.text)
        elif last.type == event.type and event.type in _REPLACEABLE:
            events[-1] = event
        else:
            events.pop(self._oldest_droppable(events))
            events.append(event)

    @staticmethod
    def _oldest_droppable(events: list[ReplyEvent]) -> int:
        """Progress snapshots go first; answer text only when nothing else is left."""
        for index, event in enumerate(events):
            if event.type in _REPLACEABLE:
                return index
        for index in range(len(events) - 1):
            if events[index].type == events[index + 1].type and events[index].type in _CONCATENATED:
                merged = replace(events[index + 1], text=events[index].text + events[index + 1].text)
                events[index + 1] = merged
                return index
        return 0

    # ------------------------------------------------------------------ reading
    def is_live(self, job_id: str) -> bool:
        job_log = self._logs.get(job_id)
        return job_log is not None and not job_log.finished

    def history(self, job_id: str) -> list[ReplyEvent]:
        job_log = self._logs.get(job_id)
        return list(job_log.events) if job_log else []

    async def subscribe(self, job_id: str) -> AsyncIterator[ReplyEvent]:
        """Past events, then live ones, ending after the terminal event."""
        self._evict()
        job_log = self._logs.get(job_id)
        if job_log is None:
            job_log = await self._log_from_store(job_id)
        if job_log.finished:
            for event in list(job_log.events):
                yield event
            return
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        past = list(job_log.events)  # snapshot and registration happen without a yield
        job_log.subscribers.append(queue)
        try:
            for event in past:
                yield event
            while True:
                event = await queue.get()
                yield event
                if event.terminal:
                    return
        finally:
            if queue in job_log.subscribers:
                job_log.subscribers.remove(queue)

    async def _log_from_store(self, job_id: str) -> _JobLog:
        """For a job this hub has no log of (evicted, or from before a restart): a
        throw-away finished log holding the end rebuilt from the store, or, when the job
        has not ended yet, a registered log to wait on."""
        if self._store is None:
            raise NotFound("No such request.")
        job = await self._store.get_job(job_id)
        if job is None:
            raise NotFound("No such request.")
        existing = self._logs.get(job_id)  # someone may have emitted while we awaited
        if existing is not None:
            return existing
        job_log = _JobLog()
        terminal = terminal_event_from_job(job)
        if terminal is not None:
            job_log.events.append(terminal)
            job_log.finished_at = self._clock()
            # not registered in _finished: nothing new is kept, it is rebuilt on demand
            return job_log
        self._logs[job_id] = job_log
        return job_log

    # ------------------------------------------------------------------ eviction
    def _evict(self) -> None:
        now = self._clock()
        while self._finished:
            job_id, finished_at = next(iter(self._finished.items()))
            expired = now - finished_at >= self._keep_s
            if not expired and len(self._finished) <= self._max_finished:
                break
            self._finished.popitem(last=False)
            job_log = self._logs.get(job_id)
            if job_log is not None and job_log.finished_at == finished_at:
                del self._logs[job_id]

    def __len__(self) -> int:
        return len(self._logs)
