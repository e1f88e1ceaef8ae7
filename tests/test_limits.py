"""Per-user rate limits on the real SQLite store: sliding windows, exact retry times,
admins, disabled features, run-time overrides that survive a restart, the usage report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ovbot.core.domain import UserRef
from ovbot.core.errors import Forbidden, InvalidInput, RateLimited
from ovbot.core.access import AccessControl
from ovbot.core.limits import DAY_S, RateLimits
from ovbot.core.store.sqlite import SQLiteStore

ALICE = UserRef("test", "alice")
BOB = UserRef("test", "bob")
ROOT = UserRef("test", "root")  # admin by settings
OPERATOR = UserRef("test", "operator")  # admin by the store


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[SQLiteStore]]]:
    stores: list[SQLiteStore] = []

    async def opener() -> SQLiteStore:
        store = SQLiteStore(tmp_path / "ovbot.db", tmp_path / "data")
        await store.initialize()
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[SQLiteStore]]) -> SQLiteStore:
    store = await open_store()
    await store.add_admin(OPERATOR.key)
    return store


def make_limits(store: SQLiteStore, clock: FakeClock, **overrides: Any) -> RateLimits:
    options: dict[str, Any] = dict(
        chat_turns_per_window=3,
        chat_window_s=60.0,
        images_per_day=2,
        access=AccessControl(store, admins=[ROOT.key]),
        clock=clock,
    )
    options.update(overrides)
    return RateLimits(store, **options)


async def test_the_window_slides_and_retry_after_is_exact(store, clock) -> None:
    limits = make_limits(store, clock)
    start = clock.now
    for offset in (0, 10, 20):
        clock.now = start + offset
        await limits.check_and_record(ALICE, "chat")

    clock.now = start + 30
    with pytest.raises(RateLimited) as over:
        await limits.check_and_record(ALICE, "chat")
    assert over.value.retry_after_s == pytest.approx(30.0)  # the use at +0 expires at +60
    assert over.value.limit_name == "chat_turns_per_window"
    assert "3 chat messages per minute" in over.value.user_message
    assert "30 s" in over.value.user_message

    await limits.check_and_record(BOB, "chat")  # other users are not affected
    await limits.check_and_record(ALICE, "image")  # nor are other limits

    clock.now = start + 60  # exactly one window later the first use no longer counts
    await limits.check_and_record(ALICE, "chat")
    with pytest.raises(RateLimited) as again:
        await limits.check_and_record(ALICE, "chat")
    assert again.value.retry_after_s == pytest.approx(10.0)  # the use at +10 goes next


async def test_images_per_day(store, clock) -> None:
    limits = make_limits(store, clock)
    await limits.check_and_record(ALICE, "image")
    clock.now += 3600
    await limits.check_and_record(ALICE, "image")
    with pytest.raises(RateLimited) as over:
        await limits.check_and_record(ALICE, "image")
    assert over.value.limit_name == "images_per_day"
    assert over.value.retry_after_s == pytest.approx(DAY_S - 3600)
    assert "2 images per day" in over.value.user_message and "23 h" in over.value.user_message


async def test_racing_requests_cannot_both_take_the_last_slot(store, clock) -> None:
    limits = make_limits(store, clock)
    results = await asyncio.gather(
        *(limits.check_and_record(ALICE, "chat") for _ in range(10)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, RateLimited) for r in results if r is not None)


async def test_admins_are_unlimited(store, clock) -> None:
    limits = make_limits(store, clock, images_per_day=0)
    for _ in range(10):
        await limits.check_and_record(ROOT, "chat")
        await limits.check_and_record(OPERATOR, "image")

    report = await limits.usage(ROOT)
    assert report["admin"] is True
    assert report["chat"]["used"] == 10 and report["chat"]["limit"] is None
    assert report["chat"]["remaining"] is None


async def test_a_zero_limit_turns_the_feature_off(store, clock) -> None:
    limits = make_limits(store, clock, images_per_day=0)
    with pytest.raises(Forbidden) as off:
        await limits.check_and_record(ALICE, "image")
    assert off.value.user_message == "Image generation is turned off on this bot."

    await limits.set(ROOT, BOB.key, chat_per_window=0)
    with pytest.raises(Forbidden) as blocked:
        await limits.check_and_record(BOB, "chat")
    assert "turned off for you" in blocked.value.user_message
    assert await store.usage_times(BOB.key, "chat", 0) == []  # refused uses are not counted


async def test_overrides_apply_at_once_and_survive_a_restart(store, open_store, clock) -> None:
    limits = make_limits(store, clock)
    shown = await limits.set(OPERATOR, ALICE.key, chat_per_window=1)
    assert shown["override"] == {"chat_per_window": 1, "images_per_day": None}
    assert shown["chat"]["limit"] == 1 and shown["image"]["limit"] == 2

    await limits.check_and_record(ALICE, "chat")
    with pytest.raises(RateLimited):
        await limits.check_and_record(ALICE, "chat")

    await limits.set(OPERATOR, ALICE.key, images_per_day=5)  # keeps the chat override
    await store.close()
    reopened = make_limits(await open_store(), clock)  # the bot restarted
    shown = await reopened.show(OPERATOR, ALICE.key)
    assert shown["override"] == {"chat_per_window": 1, "images_per_day": 5}
    assert shown["chat"]["overridden"] is True
    with pytest.raises(RateLimited):
        await reopened.check_and_record(ALICE, "chat")

    shown = await reopened.reset(ROOT, ALICE.key)
    assert shown["override"] is None and shown["chat"]["limit"] == 3
    await reopened.check_and_record(ALICE, "chat")  # back to the default of 3


async def test_only_admins_change_limits(store, clock) -> None:
    limits = make_limits(store, clock)
    with pytest.raises(Forbidden):
        await limits.set(ALICE, ALICE.key, chat_per_window=1000)
    with pytest.raises(Forbidden):
        await limits.reset(BOB, ALICE.key)
    assert await store.get_limit_override(ALICE.key) is None


@pytest.mark.parametrize(
    "user_key, values, field",
    [
        ("test:alice", {"chat_per_window": -1}, "chat_per_window"),
        ("test:alice", {"images_per_day": "5"}, "images_per_day"),
        ("test:alice", {"images_per_day": True}, "images_per_day"),
        ("test:alice", {"chat_per_window": 2.5}, "chat_per_window"),
        ("test:alice", {}, "limits"),
        ("alice", {"chat_per_window": 1}, "user"),
    ],
)
async def test_bad_values_are_refused(store, clock, user_key: str, values: dict, field: str) -> None:
    limits = make_limits(store, clock)
    with pytest.raises(InvalidInput) as bad:
        await limits.set(ROOT, user_key, **values)
    assert bad.value.field == field
    assert await store.get_limit_override("test:alice") is None


async def test_usage_report(store, clock) -> None:
    limits = make_limits(store, clock)
    empty = await limits.usage(ALICE)
    assert empty["chat"] == {
        "limit": 3,
        "window_s": 60.0,
        "used": 0,
        "remaining": 3,
        "reset_in_s": None,
        "overridden": False,
    }

    await limits.check_and_record(ALICE, "chat")
    clock.now += 15
    await limits.check_and_record(ALICE, "chat")
    await limits.check_and_record(ALICE, "image")
    report = await limits.usage(ALICE)
    assert report["admin"] is False
    assert (report["chat"]["used"], report["chat"]["remaining"]) == (2, 1)
    assert report["chat"]["reset_in_s"] == pytest.approx(45.0)  # the first use frees then
    assert (report["image"]["used"], report["image"]["remaining"]) == (1, 1)
    assert report["image"]["window_s"] == DAY_S

    shown = await limits.show(ROOT, ALICE.key)
    with pytest.raises(Forbidden):
        await limits.show(BOB, ALICE.key)
    assert shown["defaults"] == {"chat_per_window": 3, "chat_window_s": 60.0, "images_per_day": 2}
    assert shown["chat"] == report["chat"]
