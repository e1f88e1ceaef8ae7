"""The job queue when engines or whole bot processes die, on the real SQLite store:
engine gates (wait while restarting, fail only when down), jobs whose run the engine
lost (back to the front, bounded attempts), leases of dead processes reclaimed at start,
and ETAs of images from measured step times."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from ovbot.core.domain import Job, JobKind, JobState
from ovbot.core.engines.types import EngineHealth, HealthState
from ovbot.core.errors import EngineInterrupted, EngineUnavailable
from ovbot.core.jobs.base import EventSink
from ovbot.core.jobs.gate import HealthGate
from ovbot.core.jobs.leases import lease_is_void, new_owner_id
from ovbot.core.jobs.queue import GAVE_UP, LocalJobQueue
from tests.test_queue import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    CAROL,
    Worker,
    clock,
    collect,
    db_path,
    make_job,
    make_queue,
    open_store,
    state_of,
    store,
    until,
    worker,
)


class Engine:
    """What the gate reads: the engine's health, switched by the test."""

    def __init__(self) -> None:
        self.state: HealthState = "ready"
        self.detail = ""

    def health(self) -> EngineHealth:
        return EngineHealth(self.state, detail=self.detail)


def gated(queue: LocalJobQueue, engine: Engine) -> None:
    for kind in (JobKind.CHAT, JobKind.IMAGE):
        queue.set_gate(kind, HealthGate(engine.health, poll_s=0.005))


def crashing_worker(worker: Worker, engine: Engine, crashes: dict[str, int]) -> Any:
    """A handler whose engine dies under the named jobs ``crashes[name]`` times."""

    async def handle(job: Job, sink: EventSink) -> dict[str, Any]:
        name = job.payload["name"]
        if crashes.get(name, 0) > 0:
            crashes[name] -= 1
            worker.started.append(name)
            sink.emit("text", "half an answer")
            engine.state = "restarting"
            raise EngineInterrupted("The local engine stopped unexpectedly and is restarting.")
        return await worker.handle(job, sink)

    return handle


# ---------------------------------------------------------------------- gates
async def test_nothing_starts_while_the_engine_restarts_and_requests_still_queue(store, make_queue, worker) -> None:
    engine = Engine()
    engine.state = "restarting"
    queue = await make_queue(store)
    gated(queue, engine)
    worker.auto = True
    jobs = [await queue.submit(make_job(user, f"{user.user_id}-1")) for user in (ALICE, BOB)]
    image = await queue.submit(make_job(CAROL, "picture", JobKind.IMAGE))

    await asyncio.sleep(0.1)
    assert worker.started == []  # accepted, committed, waiting
    assert {await state_of(store, j.id) for j in [*jobs, image]} == {JobState.QUEUED}

    engine.state = "ready"
    for job in [*jobs, image]:
        assert (await collect(queue.subscribe(job.id)))[-1].type == "done"
    assert sorted(worker.started) == ["alice-1", "bob-1", "picture"]


async def test_a_job_the_engine_lost_goes_back_first_and_runs_again(store, make_queue, worker) -> None:
    engine = Engine()
    queue = await make_queue(store)
    gated(queue, engine)
    queue.register(JobKind.CHAT, crashing_worker(worker, engine, {"A1": 1}))
    lost = await queue.submit(make_job(ALICE, "A1"))
    await until(lambda: worker.started == ["A1"])
    waiting = [await queue.submit(make_job(u, n)) for u, n in ((BOB, "B1"), (ALICE, "A2"), (CAROL, "C1"))]

    await until(lambda: queue.position(lost.id) is not None and queue.position(lost.id).position == 1)
    assert (await store.get_job(lost.id)).state is JobState.QUEUED
    # nobody overtook it; the others keep their fair order (Alice's second after the rest)
    assert [queue.position(j.id).position for j in waiting] == [2, 4, 3]
    assert worker.started == ["A1"]  # and nothing started against the restarting engine

    engine.state = "ready"
    worker.release_all()
    events = await collect(queue.subscribe(lost.id))
    assert events[-1].type == "done"
    assert worker.started[:2] == ["A1", "A1"]
    assert (await store.get_job(lost.id)).attempts == 2
    retry = [e for e in events if e.data.get("retry")]
    assert len(retry) == 1 and retry[0].type == "status"
    # a late subscriber replays only the run that counts
    assert [e.text for e in events if e.type == "text"] == ["Hel", "lo"]


async def test_an_engine_failure_of_the_job_itself_still_fails_it(store, make_queue, worker) -> None:
    """EngineUnavailable while the engine is fine (a pipeline error) is the job's failure."""

    async def broken(job: Job, sink: EventSink) -> dict[str, Any]:
        raise EngineUnavailable("Image generation failed: bad tensor")

    engine = Engine()
    queue = await make_queue(store)
    gated(queue, engine)
    queue.register(JobKind.IMAGE, broken)
    job = await queue.submit(make_job(ALICE, "I1", JobKind.IMAGE))
    assert (await collect(queue.subscribe(job.id)))[-1].type == "error"
    failed = await store.get_job(job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 1


async def test_a_job_that_keeps_killing_the_engine_fails_after_max_attempts(store, make_queue, worker) -> None:
    engine = Engine()
    queue = await make_queue(store, max_attempts=3)
    gated(queue, engine)
    queue.register(JobKind.CHAT, crashing_worker(worker, engine, {"poison": 99}))
    poison = await queue.submit(make_job(ALICE, "poison"))
    after = await queue.submit(make_job(BOB, "B1"))
    worker.auto = True

    async def restart_engine() -> None:
        while True:
            await asyncio.sleep(0.02)
            engine.state = "ready"

    restarter = asyncio.create_task(restart_engine())
    try:
        events = await collect(queue.subscribe(poison.id))
        assert (await collect(queue.subscribe(after.id)))[-1].type == "done"
    finally:
        restarter.cancel()
    failed = await store.get_job(poison.id)
    assert failed.state is JobState.FAILED and failed.attempts == 3
    assert failed.error == {"kind": "engine_unavailable", "message": GAVE_UP.format(attempts=3)}
    assert events[-1].type == "error" and "3 times" in events[-1].text
    assert worker.started.count("poison") == 3


async def test_when_the_engine_is_down_for_good_waiting_jobs_fail_saying_so(store, make_queue, worker) -> None:
    engine = Engine()
    queue = await make_queue(store)
    gated(queue, engine)
    running = await queue.submit(make_job(ALICE, "A1"))
    await until(lambda: worker.started == ["A1"])
    engine.state = "restarting"
    waiting = [await queue.submit(make_job(u, n)) for u, n in ((BOB, "B1"), (CAROL, "C1"))]
    image = await queue.submit(make_job(CAROL, "I1", JobKind.IMAGE))

    engine.state, engine.detail = "down", "the engine worker crashed 5 times; restart ovbot"
    for job in [*waiting, image]:
        end = (await collect(queue.subscribe(job.id)))[-1]
        assert end.type == "error" and "could not be restarted" in end.text
        assert "crashed 5 times" in end.text
        stored = await store.get_job(job.id)
        assert stored.state is JobState.FAILED and stored.error["kind"] == "engine_unavailable"
    with pytest.raises(EngineUnavailable) as refused:
        await queue.submit(make_job(ALICE, "A2"))
    assert "could not be restarted" in refused.value.user_message
    assert worker.started == ["A1"]
    worker.release("A1")  # a job already running is not failed by the gate
    assert (await collect(queue.subscribe(running.id)))[-1].type == "done"


# ---------------------------------------------------------------------- dead processes
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_which_leases_are_void(store) -> None:
    me = new_owner_id()
    host = socket.gethostname()
    assert not lease_is_void(me, me)
    assert lease_is_void(f"{host}:{dead_pid()}:0123abcd", me)
    assert lease_is_void(f"{host}:{os.getpid()}:0123abcd", me)  # an older queue of this process
    neighbour = LocalJobQueue(store, max_running_chat=1, max_queued_per_user=1, max_queued_total=1, lease_s=5)
    assert not lease_is_void(neighbour.owner_id, me)  # a live queue of this process is not void
    assert not lease_is_void(f"{host}:{os.getppid()}:0123abcd", me)  # alive: maybe another ovbot
    assert not lease_is_void(f"another-host:{dead_pid()}:0123abcd", me)  # not ours to judge
    assert not lease_is_void("dead-process", me)  # not an id a queue wrote


async def test_start_reclaims_jobs_of_dead_processes_first_and_in_their_order(
    store, open_store, make_queue, worker, clock
) -> None:
    host = socket.gethostname()
    waiting = [make_job(u, n) for u, n in ((BOB, "B1"), (CAROL, "C1"))]
    for job in waiting:
        await store.insert_job(job)
    crashed = []
    for name, owner in (("dead-1", f"{host}:{dead_pid()}:aaaa0000"), ("dead-2", f"{host}:{os.getpid()}:bbbb0000")):
        job = make_job(ALICE, name)
        job.state, job.attempts = JobState.RUNNING, 1
        job.lease_owner, job.lease_expires_at = owner, clock.now + 55  # far from expiring
        await store.insert_job(job)
        crashed.append(job)
    elsewhere = make_job(BOB, "elsewhere")  # another host's lease: it may still run there
    elsewhere.state, elsewhere.attempts = JobState.RUNNING, 1
    elsewhere.lease_owner, elsewhere.lease_expires_at = f"other-host:{dead_pid()}:cccc0000", clock.now + 55
    await store.insert_job(elsewhere)

    worker.auto = True
    await make_queue(await open_store())
    await until(lambda: len(worker.started) == 4)
    # the reclaimed ones were running: they go before everything that waited, oldest first
    assert worker.started == ["dead-1", "dead-2", "B1", "C1"]
    for job in crashed:
        assert (await store.get_job(job.id)).attempts == 2
    assert await state_of(store, elsewhere.id) is JobState.RUNNING


async def test_a_reclaimed_job_past_its_attempts_fails_instead_of_running(
    store, open_store, make_queue, worker, clock
) -> None:
    job = make_job(ALICE, "poison")
    job.state, job.attempts = JobState.RUNNING, 3
    job.lease_owner, job.lease_expires_at = f"{socket.gethostname()}:{dead_pid()}:dddd0000", clock.now + 55
    await store.insert_job(job)
    worker.auto = True
    await make_queue(await open_store(), max_attempts=3)
    failed = await store.get_job(job.id)
    assert failed.state is JobState.FAILED and failed.error["message"] == GAVE_UP.format(attempts=3)
    assert worker.started == []


# ---------------------------------------------------------------------- ETAs
def image_job(name: str, steps: int, size: int = 64) -> Job:
    job = make_job(ALICE, name, JobKind.IMAGE)
    job.payload["image"] = {"prompt": "p", "steps": steps, "width": size, "height": size, "cfg": 7.5, "seed": 1}
    return job


async def test_image_eta_is_steps_times_the_measured_step_time_of_its_size(store, make_queue, worker, clock) -> None:
    queue = await make_queue(store)
    first = await queue.submit(image_job("I1", 5))
    await until(lambda: worker.started == ["I1"])
    # before anything was measured: scaled from 2.1 s per step at 512x512, not a minute
    assert queue.position(first.id).eta_s == pytest.approx(5 * 2.1 / 64)

    clock.advance(0.5)  # 5 steps in 0.5 s: 0.1 s per step at 64x64
    worker.release("I1")
    await collect(queue.subscribe(first.id))
    big = await queue.submit(image_job("I2", 50))
    await until(lambda: worker.started == ["I1", "I2"])
    assert queue.position(big.id).eta_s == pytest.approx(5.0)
    after = await queue.submit(image_job("I3", 5))
    assert queue.position(after.id).eta_s == pytest.approx(5.0)  # starts when I2 ends
    running = [e for e in queue.events.history(big.id) if e.data.get("position") == 0]
    assert running[0].data["eta_s"] == 5.0
