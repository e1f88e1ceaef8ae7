"""The durable fair job queue, on the real SQLite store: fairness, lanes, bounds,
durability, cancellation, failures, recovery after a crash or a stop, events, ETAs."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ovbot.core.domain import ChatRef, Job, JobKind, JobState, ReplyEvent, Turn, UserRef
from ovbot.core.errors import Forbidden, InvalidInput, NotFound, QueueFull
from ovbot.core.jobs.base import EventSink, QueuePosition
from ovbot.core.jobs.events import EventHub
from ovbot.core.jobs.queue import GENERIC_FAILURE, JobOutcome, LocalJobQueue, QueueClosed
from ovbot.core.store.sqlite import SQLiteStore

ALICE = UserRef("test", "alice")
BOB = UserRef("test", "bob")
CAROL = UserRef("test", "carol")
ADMIN = UserRef("test", "admin")


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Worker:
    """Handlers for the test: each job waits for its gate (named by payload["name"])
    unless ``auto`` is set, and every call, start and cancellation is recorded."""

    def __init__(self) -> None:
        self.auto = False
        self.started: list[str] = []
        self.calls: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def release_all(self) -> None:
        self.auto = True
        for gate in self.gates.values():
            gate.set()

    async def handle(self, job: Job, sink: EventSink) -> dict[str, Any]:
        name = job.payload["name"]
        self.started.append(name)
        self.calls[name] += 1
        sink.emit("status", "working")
        try:
            if not self.auto:
                await self.gate(name).wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        sink.emit("text", "Hel")
        sink.emit("text", "lo")
        return {"text": f"answer {name}"}


def make_job(user: UserRef, name: str, kind: JobKind = JobKind.CHAT, conversation_id: str | None = None) -> Job:
    return Job(
        kind=kind,
        user=user,
        chat=ChatRef("test", user.user_id),
        conversation_id=conversation_id or f"conv-{user.user_id}",
        payload={"name": name},
    )


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), timeout)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def state_of(store: SQLiteStore, job_id: str) -> JobState:
    job = await store.get_job(job_id)
    assert job is not None
    return job.state


async def collect(events: AsyncIterator[ReplyEvent], timeout: float = 3.0) -> list[ReplyEvent]:
    async def run() -> list[ReplyEvent]:
        return [event async for event in events]

    return await asyncio.wait_for(run(), timeout)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ovbot.db"


@pytest.fixture
async def open_store(tmp_path: Path, db_path: Path) -> AsyncIterator[Callable[[], Awaitable[SQLiteStore]]]:
    """Opens store instances on one database file, as separate processes would."""
    stores: list[SQLiteStore] = []

    async def opener() -> SQLiteStore:
        store = SQLiteStore(db_path, tmp_path / "data")
        await store.initialize()
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[SQLiteStore]]) -> SQLiteStore:
    return await open_store()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def worker() -> Worker:
    return Worker()


@pytest.fixture
async def make_queue(clock: FakeClock, worker: Worker) -> AsyncIterator[Callable[..., Awaitable[LocalJobQueue]]]:
    queues: list[LocalJobQueue] = []

    async def factory(store: SQLiteStore, start: bool = True, **overrides: Any) -> LocalJobQueue:
        options: dict[str, Any] = dict(
            max_running_chat=1,
            max_queued_per_user=20,
            max_queued_total=100,
            lease_s=30.0,
            clock=clock,
            status_interval_s=0.001,
            cancel_wait_s=1.0,
        )
        options.update(overrides)
        queue = LocalJobQueue(store, **options)
        queue.register(JobKind.CHAT, worker.handle)
        queue.register(JobKind.IMAGE, worker.handle)
        queues.append(queue)
        if start:
            await queue.start()
        return queue

    yield factory
    worker.release_all()
    for queue in queues:
        await queue.stop(grace_s=1.0)


# ---------------------------------------------------------------------- fairness, lanes
async def test_a_newcomer_goes_right_after_the_running_job(store, make_queue, worker) -> None:
    queue = await make_queue(store)
    alice_jobs = [await queue.submit(make_job(ALICE, f"A{i}")) for i in range(1, 11)]
    bob_job = await queue.submit(make_job(BOB, "B1"))
    await until(lambda: worker.started == ["A1"])

    assert queue.position(bob_job.id).position == 1
    assert queue.position(alice_jobs[1].id).position == 2
    assert queue.depth() == {"chat_queued": 10, "chat_running": 1, "image_queued": 0, "image_running": 0}

    worker.release_all()
    await until(lambda: len(worker.started) == 11)
    assert worker.started[:3] == ["A1", "B1", "A2"]
    assert worker.started.index("B1") < worker.started.index("A3")
    # and within one user, first come first served
    assert [n for n in worker.started if n.startswith("A")] == [f"A{i}" for i in range(1, 11)]


async def test_users_take_turns_while_both_have_work(store, make_queue, worker) -> None:
    queue = await make_queue(store)
    for i in range(1, 4):
        await queue.submit(make_job(ALICE, f"A{i}"))
    for i in range(1, 4):
        await queue.submit(make_job(BOB, f"B{i}"))
    await queue.submit(make_job(CAROL, "C1"))
    worker.release_all()
    await until(lambda: len(worker.started) == 7)
    assert worker.started == ["A1", "B1", "C1", "A2", "B2", "A3", "B3"]


async def test_chat_overtakes_queued_images(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store, image_max_wait_s=60.0)
    await queue.submit(make_job(ALICE, "I1", JobKind.IMAGE))
    image_2 = await queue.submit(make_job(ALICE, "I2", JobKind.IMAGE))
    await queue.submit(make_job(BOB, "C1"))
    await until(lambda: sorted(worker.started) == ["C1", "I1"])  # chat did not wait for images

    chat_2 = await queue.submit(make_job(CAROL, "C2"))  # waits for the one chat slot
    worker.release("I1")
    await until(lambda: queue.depth()["image_running"] == 0)
    await asyncio.sleep(0.02)
    assert "I2" not in worker.started, "an image must not start while chat waits for a slot"
    assert queue.position(image_2.id).position == 1

    worker.release("C1")
    await until(lambda: sorted(worker.started[-2:]) == ["C2", "I2"])
    assert queue.position(chat_2.id).position == 0


async def test_an_image_waiting_too_long_starts_despite_chat_backlog(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store, image_max_wait_s=60.0)
    await queue.submit(make_job(ALICE, "C1"))
    await queue.submit(make_job(BOB, "C2"))
    await queue.submit(make_job(CAROL, "C3"))
    await queue.submit(make_job(CAROL, "I1", JobKind.IMAGE))
    await until(lambda: worker.started == ["C1"])

    clock.advance(61)
    worker.release("C1")  # the next dispatch sees the image waited long enough
    await until(lambda: len(worker.started) == 3)
    assert sorted(worker.started[1:]) == ["C2", "I1"]  # C3 still waits, the image does not


# ---------------------------------------------------------------------- bounds, durability
async def test_per_user_and_global_bounds(store, make_queue, worker) -> None:
    queue = await make_queue(
        store, max_queued_per_user=2, max_queued_total=3, default_durations_s={JobKind.CHAT: 12.0}
    )
    await queue.submit(make_job(ALICE, "A1"))  # runs
    await queue.submit(make_job(ALICE, "A2"))
    await queue.submit(make_job(ALICE, "A3"))
    await until(lambda: worker.started == ["A1"])

    with pytest.raises(QueueFull) as mine:
        await queue.submit(make_job(ALICE, "A4"))
    assert mine.value.retry_after_s == 12.0  # A2 starts when A1 (12 s on average) ends
    assert "try again in ~12 s" in mine.value.user_message

    await queue.submit(make_job(BOB, "B1"))  # Bob is not bounded by Alice's jobs
    with pytest.raises(QueueFull) as everyone:
        await queue.submit(make_job(CAROL, "C1"))
    assert everyone.value.retry_after_s == 12.0
    assert "busy" in everyone.value.user_message
    assert queue.depth()["chat_queued"] == 3
    assert len(await store.jobs_in_states([JobState.QUEUED])) == 3  # refused jobs never stored


async def test_bounds_hold_when_submits_race(store, make_queue, worker) -> None:
    queue = await make_queue(store, max_queued_per_user=2)
    results = await asyncio.gather(
        *(queue.submit(make_job(ALICE, f"A{i}")) for i in range(6)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, Job)]
    assert len(accepted) == 2  # both checked in before either was written
    assert all(isinstance(r, QueueFull) for r in results if not isinstance(r, Job))
    assert len(await store.jobs_in_states([JobState.QUEUED, JobState.RUNNING])) == 2


async def test_a_job_is_committed_before_submit_returns(store, open_store, make_queue, worker) -> None:
    queue = await make_queue(store)
    job = await queue.submit(make_job(ALICE, "A1"))

    other = await open_store()  # a second connection, as another process would see it
    seen = await other.get_job(job.id)
    assert seen is not None
    assert seen.state in (JobState.QUEUED, JobState.RUNNING)
    assert seen.payload == {"name": "A1"} and seen.user == ALICE
    assert [e.type for e in queue.events.history(job.id)][0] == "queued"


async def test_submit_refused_before_start(store, make_queue) -> None:
    queue = await make_queue(store, start=False)
    with pytest.raises(QueueClosed) as refused:
        await queue.submit(make_job(ALICE, "A1"))
    assert isinstance(refused.value, QueueFull) and refused.value.retry_after_s > 0
    assert await store.jobs_in_states([JobState.QUEUED]) == []


# ---------------------------------------------------------------------- cancellation
async def test_cancel_a_queued_job(store, make_queue, worker) -> None:
    queue = await make_queue(store)
    await queue.submit(make_job(ALICE, "A1"))
    waiting = await queue.submit(make_job(ALICE, "A2"))
    await until(lambda: worker.started == ["A1"])

    cancelled = await queue.cancel(waiting.id, ALICE)
    assert cancelled.state is JobState.CANCELLED
    assert await state_of(store, waiting.id) is JobState.CANCELLED
    assert queue.depth()["chat_queued"] == 0 and queue.position(waiting.id) is None
    events = await collect(queue.subscribe(waiting.id))
    assert events[-1].type == "cancelled"

    worker.release_all()
    await until(lambda: queue.depth()["chat_running"] == 0)
    assert worker.calls["A2"] == 0


async def test_cancel_a_running_job(store, make_queue, worker) -> None:
    queue = await make_queue(store)
    running = await queue.submit(make_job(ALICE, "A1"))
    await queue.submit(make_job(BOB, "B1"))
    await until(lambda: worker.started == ["A1"])

    cancelled = await queue.cancel(running.id, ALICE)
    assert cancelled.state is JobState.CANCELLED
    assert worker.cancelled == ["A1"]  # the handler saw CancelledError
    assert await state_of(store, running.id) is JobState.CANCELLED
    assert (await collect(queue.subscribe(running.id)))[-1].type == "cancelled"
    await until(lambda: worker.started == ["A1", "B1"])  # and the lane went on


async def test_cancel_permissions_and_unknown_ids(store, make_queue, worker) -> None:
    queue = await make_queue(store)
    await queue.submit(make_job(ALICE, "A1"))
    waiting = await queue.submit(make_job(ALICE, "A2"))

    with pytest.raises(Forbidden):
        await queue.cancel(waiting.id, BOB)
    assert await state_of(store, waiting.id) is JobState.QUEUED
    assert (await queue.cancel(waiting.id, ADMIN, is_admin=True)).state is JobState.CANCELLED
    with pytest.raises(NotFound):
        await queue.cancel("no-such-job", ALICE)


async def test_cancel_a_finished_job_changes_nothing(store, make_queue, worker) -> None:
    worker.auto = True
    queue = await make_queue(store)
    job = await queue.submit(make_job(ALICE, "A1"))
    await collect(queue.subscribe(job.id))

    again = await queue.cancel(job.id, ALICE)
    assert again.state is JobState.DONE and again.result == {"text": "answer A1"}
    assert await state_of(store, job.id) is JobState.DONE


# ---------------------------------------------------------------------- failures
async def test_handler_errors_fail_the_job_and_the_lane_goes_on(store, make_queue, worker, caplog) -> None:
    async def flaky(job: Job, sink: EventSink) -> dict[str, Any]:
        if job.payload["name"] == "typed":
            raise InvalidInput("prompt", "too long")
        if job.payload["name"] == "bug":
            raise RuntimeError("secret detail /home/me/.env")
        return await worker.handle(job, sink)

    worker.auto = True
    queue = await make_queue(store)
    queue.register(JobKind.CHAT, flaky)
    typed = await queue.submit(make_job(ALICE, "typed"))
    bug = await queue.submit(make_job(BOB, "bug"))
    fine = await queue.submit(make_job(CAROL, "fine"))
    with caplog.at_level(logging.ERROR):
        events = await collect(queue.subscribe(bug.id))
        await collect(queue.subscribe(fine.id))

    failed = await store.get_job(typed.id)
    assert failed.state is JobState.FAILED
    assert failed.error == {"kind": "invalid_input", "message": "prompt: too long"}
    crashed = await store.get_job(bug.id)
    assert crashed.state is JobState.FAILED
    assert crashed.error == {"kind": "internal", "message": GENERIC_FAILURE}
    assert events[-1].type == "error" and "secret" not in events[-1].text
    assert "secret detail" in caplog.text  # the traceback is logged, not shown
    assert await state_of(store, fine.id) is JobState.DONE


async def test_a_result_the_store_could_not_save_runs_again(store, make_queue, worker, clock, monkeypatch) -> None:
    real_finish = store.finish_job
    failures = [sqlite3.OperationalError("disk I/O error")]

    async def finish_once_broken(job: Job, turns=()) -> None:
        if failures:
            raise failures.pop()
        await real_finish(job, turns)

    monkeypatch.setattr(store, "finish_job", finish_once_broken)
    worker.auto = True
    queue = await make_queue(store)
    lost = await queue.submit(make_job(ALICE, "A1"))
    assert (await collect(queue.subscribe(lost.id)))[-1].data == {"kind": "store"}
    after = await queue.submit(make_job(BOB, "B1"))
    assert (await collect(queue.subscribe(after.id)))[-1].type == "done"  # the lane goes on
    assert await state_of(store, lost.id) is JobState.RUNNING  # left to its lease

    clock.advance(31)
    assert await queue.recover() == 1
    assert (await collect(queue.subscribe(lost.id)))[-1].type == "done"
    assert worker.calls["A1"] == 2 and await state_of(store, lost.id) is JobState.DONE


async def test_handler_may_persist_turns_with_the_result(store, make_queue, caplog) -> None:
    caplog.set_level("INFO", logger="ovbot")
    chat = ChatRef("test", "alice")
    conversation = await store.active_conversation(chat)

    async def answer(job: Job, sink: EventSink) -> JobOutcome:
        turns = [
            Turn(job.conversation_id, "user", "hi", job.id),
            Turn(job.conversation_id, "assistant", "hello", job.id),
        ]
        return JobOutcome({"text": "hello"}, turns)

    queue = await make_queue(store)
    queue.register(JobKind.CHAT, answer)
    job = await queue.submit(make_job(ALICE, "A1", conversation_id=conversation))
    events = await collect(queue.subscribe(job.id))

    assert events[-1].type == "done" and events[-1].data == {"text": "hello"}
    assert [(t.role, t.content) for t in await store.recent_turns(conversation, 10)] == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]
    # one structured line per job, with ids and timings, never the content
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {job.id} ")]
    assert len(lines) == 1 and "state=done" in lines[0] and "ran_s=" in lines[0]
    assert "hello" not in lines[0]


# ---------------------------------------------------------------------- recovery, stop
async def test_start_recovers_expired_leases_and_runs_everything_once(
    store, open_store, make_queue, worker, clock
) -> None:
    crashed = make_job(ALICE, "R1")
    crashed.state, crashed.attempts = JobState.RUNNING, 1
    crashed.lease_owner, crashed.lease_expires_at = "dead-process", clock.now - 1
    await store.insert_job(crashed)
    for name in ("Q1", "Q2"):
        await store.insert_job(make_job(BOB, name))
    alive = make_job(CAROL, "L1")  # leased by a process that may still be alive
    alive.state, alive.lease_owner, alive.lease_expires_at = JobState.RUNNING, "other", clock.now + 20
    await store.insert_job(alive)

    worker.auto = True
    queue = await make_queue(await open_store(), max_running_chat=2)
    await until_async(lambda: _all_in(store, JobState.DONE, ["R1", "Q1", "Q2"], worker))
    assert worker.calls == Counter({"R1": 1, "Q1": 1, "Q2": 1})
    assert (await store.get_job(crashed.id)).attempts == 2  # at-least-once, counted
    assert await state_of(store, alive.id) is JobState.RUNNING

    clock.advance(21)  # its lease lapses without renewal
    assert await queue.recover() == 1
    await until(lambda: worker.calls["L1"] == 1)
    await until_async(lambda: _is(store, alive.id, JobState.DONE))
    assert sum(worker.calls.values()) == 4


async def _all_in(store: SQLiteStore, state: JobState, names: list[str], worker: Worker) -> bool:
    jobs = await store.jobs_in_states([state])
    return sorted(j.payload["name"] for j in jobs) == sorted(names)


async def _is(store: SQLiteStore, job_id: str, state: JobState) -> bool:
    return await state_of(store, job_id) is state


async def test_stop_requeues_running_jobs_that_outlast_the_grace(store, open_store, make_queue, worker) -> None:
    queue = await make_queue(store, max_running_chat=2)
    quick = await queue.submit(make_job(ALICE, "quick"))
    slow = await queue.submit(make_job(BOB, "slow"))
    waiting = await queue.submit(make_job(CAROL, "waiting"))
    await until(lambda: sorted(worker.started) == ["quick", "slow"])

    stopping = asyncio.create_task(queue.stop(grace_s=0.2))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):  # intake is closed while stopping
        await queue.submit(make_job(ALICE, "late"))
    worker.release("quick")  # finishes within the grace
    await stopping

    assert await state_of(store, quick.id) is JobState.DONE
    released = await store.get_job(slow.id)
    assert released.state is JobState.QUEUED and released.attempts == 1
    assert released.lease_owner is None and worker.cancelled == ["slow"]
    assert await state_of(store, waiting.id) is JobState.QUEUED
    assert "restarting" in queue.events.history(slow.id)[-1].text

    worker.release_all()
    await make_queue(await open_store())  # the next run of the bot
    await until_async(lambda: _is(store, waiting.id, JobState.DONE))
    await until_async(lambda: _is(store, slow.id, JobState.DONE))
    assert (await store.get_job(slow.id)).attempts == 2
    assert worker.calls == Counter({"quick": 1, "slow": 2, "waiting": 1})


async def test_the_lease_is_renewed_while_a_job_runs(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store, lease_s=0.06)
    job = await queue.submit(make_job(ALICE, "A1"))
    await until(lambda: worker.started == ["A1"])
    first = (await store.get_job(job.id)).lease_expires_at

    clock.advance(100)
    await until_async(lambda: _lease_after(store, job.id, first + 100))
    worker.release("A1")
    await until_async(lambda: _is(store, job.id, JobState.DONE))


async def _lease_after(store: SQLiteStore, job_id: str, at: float) -> bool:
    job = await store.get_job(job_id)
    return job.lease_expires_at is not None and job.lease_expires_at >= at


# ---------------------------------------------------------------------- events, positions
async def test_subscribe_replays_then_follows_until_the_end(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store)
    job = await queue.submit(make_job(ALICE, "A1"))
    await until(lambda: worker.started == ["A1"])
    live = asyncio.create_task(collect(queue.subscribe(job.id)))
    await asyncio.sleep(0.01)
    worker.release("A1")
    followed = await live
    replayed = await collect(queue.subscribe(job.id))

    assert followed == replayed
    assert [e.type for e in replayed] == ["queued", "status", "status", "text", "text", "done"]
    assert [e.seq for e in replayed] == sorted({e.seq for e in replayed})
    assert replayed[-1].data == {"text": "answer A1"}
    assert "".join(e.text for e in replayed if e.type == "text") == "Hello"

    clock.advance(3600)  # long after: the log is dropped, the store still knows
    await queue.submit(make_job(BOB, "B1"))  # any activity evicts old logs
    assert queue.events.history(job.id) == []
    rebuilt = await collect(queue.subscribe(job.id))
    assert [(e.type, e.data) for e in rebuilt] == [("done", {"text": "answer A1"})]
    with pytest.raises(NotFound):
        await collect(queue.subscribe("no-such-job"))


async def test_positions_and_eta_move_as_jobs_complete(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store, default_durations_s={JobKind.CHAT: 10.0})
    first = await queue.submit(make_job(ALICE, "A1"))
    second = await queue.submit(make_job(BOB, "B1"))
    third = await queue.submit(make_job(CAROL, "C1"))
    await until(lambda: worker.started == ["A1"])

    assert queue.position(first.id) == QueuePosition(0, 10.0)
    assert queue.position(second.id) == QueuePosition(1, 10.0)
    assert queue.position(third.id) == QueuePosition(2, 20.0)
    clock.advance(4)
    assert queue.position(second.id).eta_s == pytest.approx(6.0)

    clock.advance(16)  # A1 took 20 s: the average moves from 10 toward 20
    worker.release("A1")
    await until(lambda: worker.started == ["A1", "B1"])
    assert queue.position(first.id) is None
    assert queue.position(second.id).position == 0
    assert queue.position(third.id) == QueuePosition(1, pytest.approx(13.0))
    await until(lambda: _positions_told(queue, third.id) == [2, 1])

    worker.release_all()
    await collect(queue.subscribe(third.id))
    assert queue.position(third.id) is None
    assert queue.depth() == {"chat_queued": 0, "chat_running": 0, "image_queued": 0, "image_running": 0}


def _positions_told(queue: LocalJobQueue, job_id: str) -> list[int]:
    return [
        e.data["position"]
        for e in queue.events.history(job_id)
        if e.type in ("queued", "status") and e.data.get("position", 0) > 0
    ]


def test_a_full_log_coalesces_deltas_instead_of_losing_text() -> None:
    hub = EventHub(history_limit=4)
    hub.publish("j", "queued", data={"position": 1})
    for _ in range(3):
        hub.publish("j", "status", "working")
    for word in ["a", "b", "c", "d", "e", "f"]:
        hub.publish("j", "text", word)
    hub.publish("j", "done", data={"text": "abcdef"})

    history = hub.history("j")
    assert len(history) <= 5
    assert "".join(e.text for e in history if e.type == "text") == "abcdef"
    assert history[0].type == "queued" and history[-1].type == "done"
    assert [e.seq for e in history] == sorted(e.seq for e in history)


def test_handlers_cannot_end_a_job_themselves() -> None:
    sink = EventHub().sink("j")
    with pytest.raises(ValueError):
        sink.emit("done")
