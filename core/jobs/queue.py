"""The in-process, durable, fair job queue.

Durability comes from the store: a job is committed as ``queued`` before ``submit``
returns, runs under a renewed lease, and ends with one ``finish_job`` transaction. After
a crash, jobs whose lease expired go back to ``queued`` and run again (at-least-once);
delivery idempotency is the adapters' business, via ``store.record_delivery``.

Fairness comes from tagging each waiting job with a virtual start time (start-time fair
queueing): a user's next job is tagged one step after their previous one, but never
before the tag of the job that started last. So a user who queues ten jobs gets every
other turn at most, and a newcomer's first job goes right after the one now starting —
without the queue having to remember anything about users who are not waiting.

Chat and image jobs wait in separate lanes: chat runs up to ``max_running_chat`` at once
(the engine batches them), images one at a time by default, and a new image does not
start while chat jobs wait for a slot (both share the device) unless it has waited
``image_max_wait_s``, so a busy chat cannot starve images forever.

Engine restarts (``ovbot.core.jobs.gate``): a kind whose engine is restarting starts
nothing (its jobs wait, new ones are still accepted); a job whose run the engine lost
(``EngineInterrupted``: the worker died mid-job) goes back to the front of its lane and
runs again, at most ``max_attempts`` starts in all, so a job that kills the engine every
time cannot keep it restarting forever. The same bound applies to jobs found running
after a crash of the whole bot: at start, leases of dead processes of this host are void
(``ovbot.core.jobs.leases``) and their jobs go first in line without waiting for expiry.

Usage limits are charged in the transaction that inserts the job (``submit(usage=...)``)
after the bounds check, so a refused request costs nothing. A job that ends without ever
having started (cancelled while waiting, or failed because its engine is gone) gets its
charge back: the bot did no work for it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ovbot.core.domain import Job, JobKind, JobState, ReplyEvent, Turn, UserRef
from ovbot.core.errors import (
    EngineInterrupted,
    EngineUnavailable,
    Forbidden,
    NotFound,
    OvbotError,
    QueueFull,
)
from ovbot.core.jobs.base import EventSink, JobHandler, JobOutcome, QueuePosition
from ovbot.core.jobs.estimates import DEFAULT_DURATIONS_S, JobDurations
from ovbot.core.jobs.events import EventHub
from ovbot.core.jobs.gate import OPEN, EngineGate, GateStatus
from ovbot.core.jobs.lanes import Lane, Running, StopReason, Waiting
from ovbot.core.jobs.leases import hold, lease_is_void, new_owner_id
from ovbot.core.store.base import Store

log = logging.getLogger(__name__)

GENERIC_FAILURE = "Something went wrong while handling your request. Please try again."
STORE_FAILURE = "Your request could not be saved. Please try again in a moment."
RESTART_NOTICE = "The bot is restarting; your request will run again when it is back."
RETRY_NOTICE = "The engine stopped while working on your request; it will run again shortly."
GAVE_UP = (
    "The engine stopped {attempts} times while working on your request, so it was not "
    "tried again. Please try something else or try later."
)
_CLOSED_RETRY_S = 30.0
__all__ = ["DEFAULT_DURATIONS_S", "JobOutcome", "LocalJobQueue", "QueueClosed"]



class QueueClosed(QueueFull):
    """The queue does not take work right now (starting or shutting down). A QueueFull,
    so callers that handle "busy, try later" handle this too."""

    kind = "queue_closed"


Phase = Literal["new", "running", "stopping", "stopped"]


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a run ended, before it is written to the store; state QUEUED means it was
    interrupted (by shutdown, or by the engine when ``interrupted``) and goes back in line."""

    state: JobState
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    turns: Sequence[Turn] = ()
    interrupted: bool = False


class LocalJobQueue:
    """JobQueue for one process (see the module docstring for the guarantees)."""

    def __init__(
        self,
        store: Store,
        *,
        max_running_chat: int,
        max_running_image: int = 1,
        max_queued_per_user: int,
        max_queued_total: int,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        owner_id: str | None = None,
        image_max_wait_s: float = 60.0,
        status_interval_s: float = 1.0,
        cancel_wait_s: float = 5.0,
        events: EventHub | None = None,
        default_durations_s: Mapping[JobKind, float] | None = None,
        max_attempts: int = 3,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._store = store
        self._lanes = {
            JobKind.CHAT: Lane(JobKind.CHAT, max_running_chat),
            JobKind.IMAGE: Lane(JobKind.IMAGE, max_running_image),
        }
        self._max_per_user = max_queued_per_user
        self._max_total = max_queued_total
        self._lease_s = lease_s
        self._clock = clock
        self._owner = owner_id or new_owner_id()
        hold(self._owner, self)  # no other queue of this process takes our leases for void
        self._image_max_wait_s = image_max_wait_s
        self._status_interval_s = status_interval_s
        self._cancel_wait_s = cancel_wait_s
        self._events = events or EventHub(store, clock=clock)
        self._handlers: dict[JobKind, JobHandler] = {}
        self._durations = JobDurations(default_durations_s)
        self._max_attempts = max_attempts
        self._gates: dict[JobKind, EngineGate] = {}
        self._gate_watchers: dict[JobKind, asyncio.Task[None]] = {}
        self._chores: set[asyncio.Task[None]] = set()  # failing the jobs of a lane that is down
        self._reserved: dict[str, int] = {}  # submits between bound check and insert
        self._published: dict[str, int] = {}  # last position told to each waiting job
        self._phase: Phase = "new"
        self._status_dirty = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ setup
    @property
    def owner_id(self) -> str:
        return self._owner

    @property
    def events(self) -> EventHub:
        return self._events

    def register(self, kind: JobKind, handler: JobHandler) -> None:
        self._handlers[kind] = handler

    def set_gate(self, kind: JobKind, gate: EngineGate | None) -> None:
        """Jobs of ``kind`` start only while ``gate`` is open (None: always open)."""
        if gate is None:
            self._gates.pop(kind, None)
        else:
            self._gates[kind] = gate

    async def start(self) -> None:
        """Recover: re-queue jobs whose lease expired or whose owner died, load queued
        jobs (the recovered ones first), start workers."""
        if self._phase in ("running", "stopping"):
            return
        for lane in self._lanes.values():
            lane.waiting.clear()
        recovered = set(await self._requeue_lost())
        first: list[Job] = []
        for job in await self._store.jobs_in_states([JobState.QUEUED]):  # oldest first
            if job.id not in recovered:
                self._enqueue(job)
            elif job.attempts >= self._max_attempts:
                await self._give_up(job)
            else:
                first.append(job)
        self._enqueue_first(first)
        self._phase = "running"
        self._background = [
            asyncio.create_task(self._status_loop(), name="ovbot-queue-status"),
            asyncio.create_task(self._reaper_loop(), name="ovbot-queue-reaper"),
        ]
        log.info("job queue %s started with %d waiting jobs", self._owner, self._waiting_total())
        self._dispatch()

    async def recover(self) -> int:
        """Put jobs whose lease expired or whose owner died (another process of this
        host, or a crash shortly before this start) back in line, first, as they were
        running. Returns how many."""
        ids = await self._requeue_lost()
        first: list[Job] = []
        for job_id in ids:
            job = await self._store.get_job(job_id)
            if job is None or job.state is not JobState.QUEUED or self._is_known(job_id):
                continue
            self._events.reopen(job_id)  # its last end was never recorded
            if job.attempts >= self._max_attempts:
                await self._give_up(job)
            else:
                first.append(job)
        if first:
            log.warning("re-queued %d jobs whose lease expired or whose process died", len(first))
            self._enqueue_first(first)
            self._dispatch()
        return len(first)

    async def _requeue_lost(self) -> list[str]:
        """Back to queued in the store: jobs held by a process of this host that is gone
        (void leases, see ``leases``), then jobs whose lease expired. Ids, oldest first."""
        owners = [o for o in await self._store.lease_owners() if lease_is_void(o, self._owner)]
        void = await self._store.requeue_owned(owners) if owners else []
        if void:
            log.warning("reclaimed %d jobs from dead processes (owners %s)", len(void), ", ".join(owners))
        return void + await self._store.requeue_expired(self._clock())

    def _enqueue_first(self, jobs: Sequence[Job]) -> None:
        now = self._clock()
        for kind, lane in self._lanes.items():
            mine = sorted((j for j in jobs if j.kind is kind), key=lambda j: j.created_at)
            if mine:
                lane.add_front(mine, now)
                for job in mine:
                    self._events.open(job.id)

    async def _give_up(self, job: Job) -> None:
        """A job that was running whenever the engine or the bot died, ``max_attempts``
        times: most likely it is what kills them. It fails instead of running again."""
        log.error("job %s failed after %d interrupted attempts", job.id, job.attempts)
        message = GAVE_UP.format(attempts=job.attempts)
        await self._end_unstarted(job, JobState.FAILED, {"kind": "engine_unavailable", "message": message})

    async def stop(self, grace_s: float) -> None:
        """Stop intake, let running jobs finish for up to ``grace_s``, then release them
        (they stay durable and run again after the next start)."""
        if self._phase != "running":
            return
        self._phase = "stopping"  # no intake, nothing new starts
        runners = self._runner_tasks()
        if runners:
            await asyncio.wait(runners, timeout=grace_s)
        for running in self._all_running():
            running.stop_reason = "shutdown"
            if running.handler_task is not None:
                running.handler_task.cancel()
        await self._finish_runners()
        if self._chores:  # jobs being failed because their engine is gone: let them finish
            await asyncio.wait(set(self._chores), timeout=self._cancel_wait_s)
        for task in [*self._background, *self._gate_watchers.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *self._gate_watchers.values(), return_exceptions=True)
        self._background = []
        self._gate_watchers.clear()
        for lane in self._lanes.values():
            lane.waiting.clear()
        self._published.clear()
        self._phase = "stopped"
        log.info("job queue %s stopped", self._owner)

    async def _finish_runners(self) -> None:
        """Give released runners a moment to write their jobs back; a handler that
        ignores cancellation is abandoned, and its lease expiry re-queues the job."""
        runners = self._runner_tasks()
        if not runners:
            return
        _, pending = await asyncio.wait(runners, timeout=self._cancel_wait_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ intake
    async def submit(self, job: Job, usage: Sequence[str] = ()) -> Job:
        """Persist (committed) then schedule. Raises QueueFull when bounded out, and
        EngineUnavailable when the kind's engine is down for good. ``usage``: the limit
        kinds to charge the user, recorded in the job's insert transaction, so only an
        accepted request is charged (checking the limits is the caller's, before)."""
        self._check_open(job)
        counted = not _is_follow_up(job)
        if counted:
            self._check_bounds(job.user)
        job.state = JobState.QUEUED
        user = job.user.key
        if counted:
            self._reserved[user] = self._reserved.get(user, 0) + 1
        try:
            await self._store.insert_job(job, usage)
        finally:
            if counted:
                self._release_reservation(user)
        self._events.open(job.id)
        if self._phase != "running":  # stopped while we were writing: runs after restart
            self._events.publish(job.id, "status", RESTART_NOTICE)
            return job
        if not self._is_known(job.id):  # a restart in between may have loaded it
            self._enqueue(job)
        estimate = self._estimate(job.id)
        position, eta = estimate if estimate else (1, 0.0)
        self._published[job.id] = position
        self._events.publish(job.id, "queued", data={"position": position, "eta_s": round(eta, 1)})
        self._dispatch()
        return job

    def _check_open(self, job: Job) -> None:
        if self._phase != "running":
            message = (
                "The bot is not ready yet. Please try again in a minute."
                if self._phase == "new"
                else "The bot is restarting. Please try again in a minute."
            )
            raise QueueClosed(message, _CLOSED_RETRY_S)
        if job.kind not in self._handlers:
            raise EngineUnavailable(f"This bot does not handle {job.kind.value} requests right now.")
        gate = self._gate_status(job.kind)
        if gate.state == "down":
            raise EngineUnavailable(gate.reason)

    def _check_bounds(self, user: UserRef) -> None:
        """A picture a chat answer asked for (a follow-up) is neither checked nor counted
        against its user: the chat that queued it was accepted, and it must not cost the
        user their next message. Follow-ups do count in the total others are checked
        against (they are waiting work) but are never refused by it: each running chat
        queues at most one, so the total overshoots by at most ``max_running_chat``."""
        mine = self._waiting_of(user.key) + self._reserved.get(user.key, 0)
        if mine >= self._max_per_user:
            retry = self._retry_after(user.key)
            raise QueueFull(
                f"You already have {mine} requests waiting. "
                f"Please try again in ~{_seconds(retry)} s.",
                retry,
            )
        total = self._waiting_total() + sum(self._reserved.values())
        if total >= self._max_total:
            retry = self._retry_after(None)
            raise QueueFull(f"The bot is busy. Please try again in ~{_seconds(retry)} s.", retry)

    def _release_reservation(self, user: str) -> None:
        left = self._reserved.get(user, 1) - 1
        if left > 0:
            self._reserved[user] = left
        else:
            self._reserved.pop(user, None)

    def _retry_after(self, user_key: str | None) -> float:
        """Seconds until a waiting slot frees: when the next job (of this user, or of
        anybody) is expected to start."""
        etas: list[float] = []
        for lane in self._lanes.values():
            estimates = self._lane_estimates(lane)
            etas += [
                estimates[entry.job.id][1]
                for entry in lane.waiting
                if user_key is None or (entry.job.user.key == user_key and not _is_follow_up(entry.job))
            ]
        return float(max(1, math.ceil(min(etas)))) if etas else 1.0

    def _enqueue(self, job: Job) -> None:
        self._lanes[job.kind].add(job, self._clock())
        self._events.open(job.id)

    # ------------------------------------------------------------------ scheduling
    def _dispatch(self) -> None:
        """Start every job that may start now: chat first, then images; none of a kind
        whose engine is not ready (see the module docstring)."""
        if self._phase != "running":
            return
        for lane in self._lanes.values():  # dict order: chat, then image
            if not lane.waiting:
                continue
            gate = self._gate_status(lane.kind)
            if gate.state == "down":
                self._fail_waiting(lane, gate.reason)
                continue
            if gate.state == "wait":
                self._watch_gate(lane.kind)
                continue
            while lane.waiting and lane.has_room and self._may_start(lane):
                self._launch(lane, lane.pop())
        self._status_dirty.set()

    def _gate_status(self, kind: JobKind) -> GateStatus:
        gate = self._gates.get(kind)
        if gate is None:
            return OPEN
        try:
            return gate.status()
        except Exception:  # a broken gate must not stop the queue: behave as without one
            log.exception("the %s engine gate failed; treating it as open", kind.value)
            return OPEN

    def _watch_gate(self, kind: JobKind) -> None:
        """Dispatch again once the gate of ``kind`` is no longer "wait" (one watcher per kind)."""
        if kind in self._gate_watchers:
            return

        async def watch() -> None:
            try:
                while self._phase == "running" and self._gate_status(kind).state == "wait":
                    await self._gates[kind].changed()
            finally:
                self._gate_watchers.pop(kind, None)
            self._dispatch()

        self._gate_watchers[kind] = asyncio.create_task(watch(), name=f"ovbot-queue-gate-{kind.value}")

    def _fail_waiting(self, lane: Lane, reason: str) -> None:
        """The lane's engine will not come back: every waiting job fails, saying so."""
        jobs = lane.take_all()
        if not jobs:
            return
        log.error("%s engine is down: failing %d waiting jobs", lane.kind.value, len(jobs))

        async def fail_all() -> None:
            for job in jobs:
                try:
                    await self._end_unstarted(job, JobState.FAILED, {"kind": "engine_unavailable", "message": reason})
                except Exception:  # the store is down too: the job stays queued for the next start
                    log.exception("could not fail job %s", job.id)

        task = asyncio.create_task(fail_all(), name=f"ovbot-queue-fail-{lane.kind.value}")
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _may_start(self, lane: Lane) -> bool:
        if lane.kind is not JobKind.IMAGE:
            return True
        if not self._lanes[JobKind.CHAT].waiting:
            return True
        waited = self._clock() - lane.waiting[0].enqueued_at
        return waited >= self._image_max_wait_s

    def _launch(self, lane: Lane, entry: Waiting) -> None:
        job = entry.job
        running = Running(job=job, started_at=self._clock(), entry=entry)
        lane.running[job.id] = running
        self._published.pop(job.id, None)
        running.runner = asyncio.create_task(self._run(lane, running), name=f"ovbot-job-{job.id}")

    async def _run(self, lane: Lane, running: Running) -> None:
        """One job from claim to its durable end; never raises into the event loop."""
        job_id = running.job.id
        try:
            await self._claim_and_run(lane, running)
        except asyncio.CancelledError:
            log.warning("job %s abandoned during shutdown; its lease will re-queue it", job_id)
        except Exception:
            log.exception("job %s could not be recorded in the store", job_id)
            self._events.publish(job_id, "error", STORE_FAILURE, {"kind": "store"})
        finally:
            lane.running.pop(job_id, None)
            self._dispatch()

    async def _claim_and_run(self, lane: Lane, running: Running) -> None:
        now = self._clock()
        claimed = await self._store.claim_job(running.job.id, self._owner, now + self._lease_s, now)
        if claimed is None:
            log.info("job %s was no longer queued when its turn came", running.job.id)
            return
        running.job = claimed
        running.started_at = self._clock()
        if running.stop_reason is None:
            eta = round(self._durations.expected(claimed), 1)
            self._events.publish(claimed.id, "status", "running", {"position": 0, "eta_s": eta})
            ending = await self._execute(running)
        else:
            ending = _stopped(running.stop_reason)
        if ending.interrupted:
            await self._retry(lane, running)
        elif ending.state is JobState.QUEUED:
            await self._release(running.job)
        else:
            await self._finish(running, ending)

    async def _retry(self, lane: Lane, running: Running) -> None:
        """The engine lost this run: back to the front of the line (it waits there while
        the engine restarts), unless it already had ``max_attempts`` starts."""
        job = running.job
        if job.attempts >= self._max_attempts:
            log.error("job %s interrupted by the engine %d times: giving up", job.id, job.attempts)
            error = {"kind": "engine_unavailable", "message": GAVE_UP.format(attempts=job.attempts)}
            await self._finish(running, _Ending(JobState.FAILED, error=error))
            return
        log.warning(
            "job %s interrupted by the engine (attempt %d of %d); re-queued", job.id, job.attempts, self._max_attempts
        )
        await self._release(job, RETRY_NOTICE, {"retry": True, "attempt": job.attempts})
        # what it streamed is void: a late subscriber must only see the run that counts
        self._events.discard_deltas(job.id)
        if self._phase == "running" and running.entry is not None:
            running.entry.job = await self._fresh(job)
            lane.put_back(running.entry)

    async def _execute(self, running: Running) -> _Ending:
        job = running.job
        handler = self._handlers.get(job.kind)
        if handler is None:
            message = f"This bot does not handle {job.kind.value} requests right now."
            return _Ending(JobState.FAILED, error={"kind": "engine_unavailable", "message": message})
        task = asyncio.create_task(_call(handler, job, self._events.sink(job.id)))
        running.handler_task = task
        renewer = asyncio.create_task(self._renew_lease(job.id))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            renewer.cancel()
        return self._ending_of(task, running.stop_reason, job)

    def _ending_of(self, task: asyncio.Task[Any], stop_reason: StopReason | None, job: Job) -> _Ending:
        """A handler that returned wins over a late cancel (the work is done); one that
        was cancelled, or raised while being stopped, ends as the stop asked. An engine
        that lost the run (it died, or is not ready since) is the engine's failure, not
        the job's: the job runs again."""
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or (error is not None and stop_reason is not None):
            return _stopped(stop_reason)
        if isinstance(error, EngineInterrupted) or (
            isinstance(error, EngineUnavailable) and not self._gate_status(job.kind).open
        ):
            return _Ending(JobState.QUEUED, interrupted=True)
        if isinstance(error, OvbotError):
            return _Ending(JobState.FAILED, error={"kind": error.kind, "message": error.user_message})
        if error is not None:
            log.error("job %s (%s) failed", job.id, job.kind.value, exc_info=error)
            return _Ending(JobState.FAILED, error={"kind": "internal", "message": GENERIC_FAILURE})
        value = task.result()
        if isinstance(value, JobOutcome):
            return _Ending(JobState.DONE, result=dict(value.result), turns=tuple(value.turns))
        if isinstance(value, dict):
            return _Ending(JobState.DONE, result=dict(value))
        log.error("job %s: handler returned %s, not a dict or JobOutcome", job.id, type(value).__name__)
        return _Ending(JobState.FAILED, error={"kind": "internal", "message": GENERIC_FAILURE})

    async def _renew_lease(self, job_id: str) -> None:
        """Keep the lease alive while the handler runs. A failed renewal is retried at
        the next tick; if renewals keep failing, the lease lapses and the job may run
        again, which is the at-least-once contract, not a loss."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                renewed = await self._store.renew_lease(job_id, self._owner, self._clock() + self._lease_s)
            except Exception:
                log.warning("could not renew the lease of job %s; retrying", job_id, exc_info=True)
                continue
            if not renewed:
                log.warning("job %s lost its lease; it may run again elsewhere", job_id)

    async def _finish(self, running: Running, ending: _Ending) -> None:
        """Write the end in one transaction, then tell subscribers: a "done" event always
        means the result is durable."""
        job = await self._fresh(running.job)
        now = self._clock()
        job.state = ending.state
        job.result = ending.result
        job.error = ending.error
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
        await self._store.finish_job(job, ending.turns)
        if ending.state is JobState.DONE:
            self._durations.learn(job, now - running.started_at)
        log.info(
            "job %s kind=%s user=%s state=%s attempts=%d waited_s=%.3f ran_s=%.3f%s",
            job.id,
            job.kind.value,
            job.user.key,
            job.state.value,
            job.attempts,
            max(running.started_at - job.created_at, 0.0),
            now - running.started_at,
            f" error={job.error.get('kind')}" if job.error else "",
        )
        self._emit_end(job)

    async def _release(
        self, claimed: Job, notice: str = RESTART_NOTICE, data: dict[str, Any] | None = None
    ) -> None:
        """Give an interrupted job back to the store as queued (attempts kept)."""
        job = await self._fresh(claimed)
        job.state = JobState.QUEUED
        job.lease_owner = None
        job.lease_expires_at = None
        job.started_at = None
        await self._store.update_job(job)
        self._events.publish(job.id, "status", notice, data)

    async def _fresh(self, job: Job) -> Job:
        """The stored copy, so fields others wrote meanwhile (delivery) survive our write."""
        return await self._store.get_job(job.id) or job

    def _emit_end(self, job: Job) -> None:
        if job.state is JobState.DONE:
            self._events.publish(job.id, "done", data=job.result)
        elif job.state is JobState.FAILED:
            error = job.error or {}
            message = str(error.get("message") or GENERIC_FAILURE)
            self._events.publish(job.id, "error", message, {"kind": error.get("kind", "error")})
        else:
            self._events.publish(job.id, "cancelled")

    # ------------------------------------------------------------------ cancel
    async def cancel(self, job_id: str, requester: UserRef, is_admin: bool = False) -> Job:
        """Cancel a queued or running job (owner or admin). NotFound / Forbidden."""
        live = self._live_job(job_id)
        job = live or await self._store.get_job(job_id)
        if job is None:
            raise NotFound("No such request.")
        if job.user.key != requester.key and not is_admin:
            raise Forbidden("You can only cancel your own requests.")
        if job.state.terminal:
            return job
        lane = self._lanes[job.kind]
        if job_id in lane.running:
            return await self._cancel_running(lane.running[job_id])
        waiting = lane.remove(job_id)
        if waiting is not None:
            self._status_dirty.set()
        # waiting here, or queued in the store without being loaded (before start)
        return await self._cancel_stored(waiting or job)

    async def _cancel_running(self, running: Running) -> Job:
        running.stop_reason = "cancel"
        if running.handler_task is not None:
            running.handler_task.cancel()
        if running.runner is not None:
            await asyncio.wait({running.runner}, timeout=self._cancel_wait_s)
        return await self._store.get_job(running.job.id) or running.job

    async def _cancel_stored(self, job: Job) -> Job:
        return await self._end_unstarted(job, JobState.CANCELLED)

    async def _end_unstarted(self, job: Job, state: JobState, error: dict[str, Any] | None = None) -> Job:
        """End a job that is not running. One that never started at all gets its usage
        charge back in the same transaction: the bot did nothing for it."""
        job = await self._fresh(job)
        job.state = state
        job.error = error
        job.finished_at = self._clock()
        job.lease_owner = None
        job.lease_expires_at = None
        await self._store.finish_job(job, refund_usage=job.attempts == 0)
        self._published.pop(job.id, None)
        self._emit_end(job)
        return job

    # ------------------------------------------------------------------ observing
    def position(self, job_id: str) -> QueuePosition | None:
        """Live position and ETA of a queued or running job; None when not live."""
        for lane in self._lanes.values():
            running = lane.running.get(job_id)
            if running is not None:
                elapsed = self._clock() - running.started_at
                return QueuePosition(0, max(self._durations.expected(running.job) - elapsed, 0.0))
        estimate = self._estimate(job_id)
        if estimate is None:
            return None
        return QueuePosition(*estimate)

    def subscribe(self, job_id: str) -> AsyncIterator[ReplyEvent]:
        """Events of a job from its first one (replayed) until a terminal event."""
        return self._events.subscribe(job_id)

    def live_jobs_of(self, user_key: str) -> list[Job]:
        """The user's running jobs, then their waiting ones in the order they will run."""
        running = [r.job for lane in self._lanes.values() for r in lane.running.values()]
        waiting = [e.job for lane in self._lanes.values() for e in lane.waiting]
        return [job for job in running + waiting if job.user.key == user_key]

    def depth(self) -> dict[str, int]:
        chat, image = self._lanes[JobKind.CHAT], self._lanes[JobKind.IMAGE]
        return {
            "chat_queued": len(chat.waiting),
            "chat_running": len(chat.running),
            "image_queued": len(image.waiting),
            "image_running": len(image.running),
        }

    def _estimate(self, job_id: str) -> tuple[int, float] | None:
        for lane in self._lanes.values():
            estimate = self._lane_estimates(lane).get(job_id)
            if estimate is not None:
                return estimate
        return None

    def _lane_estimates(self, lane: Lane) -> dict[str, tuple[int, float]]:
        """Position and expected start of every waiting job: replay the lane's slots,
        each freeing when its job is expected to end (see ``estimates``)."""
        expected = self._durations.expected
        now = self._clock()
        slots = [max(expected(r.job) - (now - r.started_at), 0.0) for r in lane.running.values()]
        slots += [0.0] * max(lane.concurrency - len(slots), 0)
        heapq.heapify(slots)
        estimates: dict[str, tuple[int, float]] = {}
        for position, entry in enumerate(lane.waiting, start=1):
            start = heapq.heappop(slots)
            estimates[entry.job.id] = (position, start)
            heapq.heappush(slots, start + expected(entry.job))
        return estimates

    async def _status_loop(self) -> None:
        """Tell waiting jobs when their place in line moved, at most once per interval
        (a burst of submits and starts becomes one update)."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            try:
                self._publish_positions()
            except Exception:  # keep the loop: a missed update is healed by the next one
                log.exception("could not publish queue positions")
            await asyncio.sleep(self._status_interval_s)

    def _publish_positions(self) -> None:
        waiting_ids: set[str] = set()
        for lane in self._lanes.values():
            for job_id, (position, eta) in self._lane_estimates(lane).items():
                waiting_ids.add(job_id)
                if self._published.get(job_id) != position:
                    self._published[job_id] = position
                    data = {"position": position, "eta_s": round(eta, 1)}
                    self._events.publish(job_id, "status", "queued", data)
        for job_id in set(self._published) - waiting_ids:
            del self._published[job_id]

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s)
            try:
                await self.recover()
            except Exception:  # the store is down: the next round retries
                log.warning("could not re-queue expired jobs; retrying", exc_info=True)

    # ------------------------------------------------------------------ helpers
    def _all_running(self) -> list[Running]:
        return [r for lane in self._lanes.values() for r in lane.running.values()]

    def _runner_tasks(self) -> list[asyncio.Task[None]]:
        return [r.runner for r in self._all_running() if r.runner is not None and not r.runner.done()]

    def _live_job(self, job_id: str) -> Job | None:
        for lane in self._lanes.values():
            if job_id in lane.running:
                return lane.running[job_id].job
            job = lane.find_waiting(job_id)
            if job is not None:
                return job
        return None

    def _is_known(self, job_id: str) -> bool:
        return self._live_job(job_id) is not None

    def _waiting_of(self, user_key: str) -> int:
        """Waiting jobs counted against the user's bound (follow-up pictures are not)."""
        return sum(
            1
            for lane in self._lanes.values()
            for e in lane.waiting
            if e.job.user.key == user_key and not _is_follow_up(e.job)
        )

    def _waiting_total(self) -> int:
        return sum(len(lane.waiting) for lane in self._lanes.values())


async def _call(handler: JobHandler, job: Job, sink: EventSink) -> Any:
    """Run the handler inside its task, so that even a handler that raises before its
    first await (or is not a coroutine function) ends as a failed job."""
    return await handler(job, sink)


def _is_follow_up(job: Job) -> bool:
    """A picture a chat answer asked for (queued by the chat job, which names itself)."""
    return isinstance(job.payload, dict) and bool(job.payload.get("parent_job_id"))


def _stopped(reason: StopReason | None) -> _Ending:
    return _Ending(JobState.QUEUED) if reason == "shutdown" else _Ending(JobState.CANCELLED)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))
