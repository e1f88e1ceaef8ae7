"""Admission: what a request costs and what may refuse it, on the real SQLite store,
the real queue and limits (and the chat service on the tiny models).

* a request the queue refuses (full) is not charged: the charge is recorded in the
  transaction that inserts the job, after the queue's bound check;
* a job cancelled before it ever started is refunded;
* a picture a chat answer asked for does not count against its user's bound of
  waiting jobs, so it cannot refuse that user's next message;
* old usage rows are pruned now and then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ovbot.core.access import AccessControl
from ovbot.core.domain import Job, JobKind, UserRef
from ovbot.core.errors import QueueFull, RateLimited
from ovbot.core.jobs.queue import LocalJobQueue
from ovbot.core.limits import DAY_S, PRUNE_EVERY_S, RateLimits
from ovbot.core.store.sqlite import SQLiteStore
from tests.test_chat_service import ALICE as CHAT_ALICE, ROOM, engines, make_harness  # noqa: F401  (fixtures)
from tests.test_queue import ALICE, BOB, FakeClock, Worker, make_job, until


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "ovbot.db", tmp_path / "data")
    await opened.initialize()
    yield opened
    await opened.close()


@pytest.fixture
async def queue(store: SQLiteStore) -> AsyncIterator[tuple[LocalJobQueue, Worker]]:
    worker = Worker()
    opened = LocalJobQueue(
        store, max_running_chat=1, max_queued_per_user=2, max_queued_total=4, lease_s=30.0, status_interval_s=0.001
    )
    opened.register(JobKind.CHAT, worker.handle)
    opened.register(JobKind.IMAGE, worker.handle)
    await opened.start()
    yield opened, worker
    worker.release_all()
    await opened.stop(grace_s=1.0)


def limits_for(store: SQLiteStore, clock: Any = None, chat_turns: int = 30) -> RateLimits:
    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    return RateLimits(
        store,
        chat_turns_per_window=chat_turns,
        chat_window_s=3600.0,
        images_per_day=20,
        access=AccessControl(store),
        **options,
    )


async def used(limits: RateLimits, user: UserRef, kind: str = "chat") -> int:
    return int((await limits.usage(user))[kind]["used"])


async def submit(limits: RateLimits, queue: LocalJobQueue, job: Job, kind: str = "chat") -> Job:
    """What the chat service does: check the limit, then queue and charge in one step."""
    async with limits.admit(job.user, kind) as usage:  # type: ignore[arg-type]
        return await queue.submit(job, usage=usage)


# ---------------------------------------------------------------------- charging
async def test_a_request_the_queue_refuses_is_not_charged(store, queue) -> None:
    jobs, worker = queue
    limits = limits_for(store)
    accepted, refused = 0, 0
    for i in range(10):
        try:
            await submit(limits, jobs, make_job(ALICE, f"A{i}"))
            accepted += 1
        except QueueFull:
            refused += 1
    assert (accepted, refused) == (3, 7)  # one running, two waiting
    assert await used(limits, ALICE) == 3


async def test_the_last_slot_goes_to_one_of_two_racing_requests(store, queue) -> None:
    jobs, _ = queue
    limits = limits_for(store, chat_turns=1)
    results = await asyncio.gather(
        *(submit(limits, jobs, make_job(ALICE, f"A{i}")) for i in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, Job) for r in results) == 1
    assert all(isinstance(r, RateLimited) for r in results if not isinstance(r, Job))
    assert await used(limits, ALICE) == 1


async def test_a_job_cancelled_before_it_started_is_refunded(store, queue) -> None:
    jobs, worker = queue
    limits = limits_for(store)
    running = await submit(limits, jobs, make_job(ALICE, "A1"))
    waiting = await submit(limits, jobs, make_job(ALICE, "A2"))
    await until(lambda: worker.started == ["A1"])
    assert await used(limits, ALICE) == 2

    await jobs.cancel(waiting.id, ALICE)
    assert await used(limits, ALICE) == 1  # it never ran: its charge is back
    await jobs.cancel(running.id, ALICE)
    assert await used(limits, ALICE) == 1  # it ran: the work was done, the charge stays


async def test_chat_service_charges_only_what_it_queued(make_harness) -> None:
    harness = await make_harness(chat_turns=30)
    limits = harness.service._limits
    results = await asyncio.gather(
        *(harness.service.submit_chat(CHAT_ALICE, ROOM, f"message {i}") for i in range(14)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, Job)]
    assert all(isinstance(r, QueueFull) for r in results if not isinstance(r, Job))
    assert 0 < len(accepted) < 14
    assert await used(limits, CHAT_ALICE) == len(accepted)
    for job in accepted:
        await harness.events(job)


# ---------------------------------------------------------------------- follow-up pictures
async def test_pictures_a_chat_asked_for_do_not_count_against_their_user(store, queue) -> None:
    jobs, worker = queue
    await jobs.submit(make_job(BOB, "B1"))  # keeps the one chat slot busy
    await until(lambda: worker.started == ["B1"])
    for i in range(3):  # follow-ups: queued by a chat job of Alice's, naming it
        picture = make_job(ALICE, f"P{i}", JobKind.IMAGE)
        picture.payload["parent_job_id"] = f"chat-{i}"
        await jobs.submit(picture)

    # two waiting jobs of her own are still allowed, as if no picture waited
    await jobs.submit(make_job(ALICE, "A1"))
    await jobs.submit(make_job(ALICE, "A2"))
    with pytest.raises(QueueFull) as mine:
        await jobs.submit(make_job(ALICE, "A3"))
    assert "You already have 2 requests waiting" in mine.value.user_message
    # they do count in the total others see (3 pictures + 2 chats >= 4)
    with pytest.raises(QueueFull) as everyone:
        await jobs.submit(make_job(BOB, "B2"))
    assert "busy" in everyone.value.user_message
    # and a follow-up is never refused: the chat that asked for it was accepted
    late = make_job(ALICE, "P9", JobKind.IMAGE)
    late.payload["parent_job_id"] = "chat-9"
    await jobs.submit(late)


# ---------------------------------------------------------------------- pruning
async def test_usage_older_than_the_longest_window_is_pruned_now_and_then(store) -> None:
    clock = FakeClock(10 * DAY_S)
    limits = limits_for(store, clock)
    old, recent = clock.now - DAY_S - 1, clock.now - DAY_S + 3600
    await store.record_usage(ALICE.key, "image", old)
    await store.record_usage(ALICE.key, "image", recent)

    await limits.check(ALICE, "chat")
    assert await store.usage_times(ALICE.key, "image", 0) == [recent]

    await store.record_usage(BOB.key, "chat", old)
    clock.advance(PRUNE_EVERY_S / 2)
    await limits.check(BOB, "chat")  # not every request pays for a prune
    assert await store.usage_times(BOB.key, "chat", 0) == [old]
    clock.advance(PRUNE_EVERY_S / 2)
    await limits.check(BOB, "chat")
    assert await store.usage_times(BOB.key, "chat", 0) == []
    assert await store.usage_times(ALICE.key, "image", 0) == [recent]  # still inside the day
