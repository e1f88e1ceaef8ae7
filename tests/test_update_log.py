"""The durable log of platform updates (migration 3): the store methods on a real SQLite
file, and the ``Bot`` facade methods adapters call. Telegram's crash and duplicate
handling end to end is in tests/test_telegram_inbox.py."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ovbot.core import bot as bot_module
from ovbot.core.bot import UPDATE_HORIZON_S, UPDATE_MAX_ATTEMPTS, Bot
from ovbot.core.store.sqlite import SQLiteStore

TG = "telegram"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "db" / "ovbot.db", tmp_path / "data")
    await opened.initialize()
    yield opened
    await opened.close()


def facade(store: SQLiteStore) -> Bot:
    """A ``Bot`` over just a store: these methods need nothing else of the App."""
    return Bot(SimpleNamespace(store=store), access=None)  # type: ignore[arg-type]


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    """What another process would read: the rows are committed."""
    conn = sqlite3.connect(tmp_path / "db" / "ovbot.db", isolation_level=None)
    try:
        return conn.execute(
            "SELECT platform, update_id, payload, handled_at IS NOT NULL FROM platform_updates "
            "ORDER BY platform, update_id"
        ).fetchall()
    finally:
        conn.close()


async def test_remembered_updates_are_committed_and_duplicates_are_not_new(
    store: SQLiteStore, tmp_path: Path
) -> None:
    assert await store.remember_updates(TG, [(5, '{"a":5}'), (6, '{"a":6}')], 100.0) == [5, 6]
    assert rows(tmp_path) == [(TG, 5, '{"a":5}', 0), (TG, 6, '{"a":6}', 0)]
    # the same ids again (Telegram re-sent them): not new, the first payload stays
    assert await store.remember_updates(TG, [(6, '{"other":1}'), (7, '{"a":7}')], 101.0) == [7]
    assert rows(tmp_path)[1] == (TG, 6, '{"a":6}', 0)
    # update ids are per platform
    assert await store.remember_updates("discord", [(5, "{}")], 102.0) == [5]
    assert await store.remember_updates(TG, [], 103.0) == []


async def test_unhandled_updates_in_id_order_until_marked_handled(store: SQLiteStore) -> None:
    await store.remember_updates(TG, [(9, "{9}"), (3, "{3}"), (4, "{4}")], 1.0)
    await store.remember_updates("discord", [(1, "{d}")], 1.0)
    assert await store.unhandled_updates(TG) == [(3, "{3}"), (4, "{4}"), (9, "{9}")]
    await store.mark_update_handled(TG, 4, 2.0)
    await store.mark_update_handled(TG, 4, 50.0)  # twice: the first time stays
    await store.mark_update_handled(TG, 404, 2.0)  # unknown: nothing to do
    assert await store.unhandled_updates(TG) == [(3, "{3}"), (9, "{9}")]
    assert await store.remember_updates(TG, [(4, "{4}")], 3.0) == []  # handled: never new again
    assert await store.unhandled_updates("discord") == [(1, "{d}")]


async def test_prune_deletes_only_updates_handled_before_the_cutoff(store: SQLiteStore, tmp_path: Path) -> None:
    await store.remember_updates(TG, [(1, "{}"), (2, "{}"), (3, "{}")], 0.0)
    await store.mark_update_handled(TG, 1, 10.0)
    await store.mark_update_handled(TG, 2, 30.0)
    assert await store.prune_updates(20.0) == 1
    assert [row[1] for row in rows(tmp_path)] == [2, 3]  # handled later, and unhandled (never pruned)


async def test_the_log_survives_reopening_the_database(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "db" / "ovbot.db", tmp_path / "data")
    await first.initialize()
    await first.remember_updates(TG, [(1, "{1}"), (2, "{2}")], 1.0)
    await first.mark_update_handled(TG, 1, 2.0)
    await first.close()
    second = SQLiteStore(tmp_path / "db" / "ovbot.db", tmp_path / "data")
    await second.initialize()
    try:
        assert await second.unhandled_updates(TG) == [(2, "{2}")]
        assert await second.remember_updates(TG, [(1, "{1}"), (2, "{2}"), (3, "{3}")], 3.0) == [3]
    finally:
        await second.close()


async def test_facade_remembers_replays_and_marks_handled(store: SQLiteStore) -> None:
    bot = facade(store)
    assert await bot.remember_updates(TG, [(10, "{10}"), (11, "{11}")]) == {10, 11}
    assert await bot.remember_updates(TG, [(11, "{11}"), (12, "{12}")]) == {12}
    await bot.update_handled(TG, 10)
    assert await bot.unhandled_updates(TG) == [(11, "{11}"), (12, "{12}")]
    assert await bot.remember_updates(TG, [(10, "{10}")]) == set()


async def test_facade_prunes_handled_updates_after_the_horizon_at_most_hourly(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(bot_module.time, "time", lambda: now[0])
    bot = facade(store)
    await bot.remember_updates(TG, [(1, "{}"), (2, "{}")])  # prunes (nothing yet)
    await bot.update_handled(TG, 1)
    now[0] += UPDATE_HORIZON_S + 60
    await bot.remember_updates(TG, [(3, "{}")])  # prunes: 1 was handled over 24 h ago
    assert [row[1] for row in rows(tmp_path)] == [2, 3]
    await bot.update_handled(TG, 3)
    now[0] += UPDATE_HORIZON_S + 60
    await bot.remember_updates(TG, [(4, "{}")])  # prunes 3
    await bot.update_handled(TG, 4)
    now[0] += UPDATE_HORIZON_S + 60
    await bot.remember_updates(TG, [(5, "{}")])  # prunes 4
    await bot.update_handled(TG, 5)
    now[0] += 60  # within the hour: no prune (and 5 is too recent anyway)
    await bot.remember_updates(TG, [(6, "{}")])
    assert [row[1] for row in rows(tmp_path)] == [2, 5, 6]  # the unhandled one is kept


async def test_an_id_handled_over_a_day_ago_is_new_again(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telegram restarts its update ids at random after a week without updates: a
    handled row that old must not make a new update look like a duplicate."""
    now = [2_000_000.0]
    monkeypatch.setattr(bot_module.time, "time", lambda: now[0])
    bot = facade(store)
    assert await bot.remember_updates(TG, [(77, "{old}")]) == {77}
    await bot.update_handled(TG, 77)
    now[0] += 7 * 24 * 3600.0
    assert await bot.remember_updates(TG, [(77, "{new}")]) == {77}
    assert await bot.unhandled_updates(TG) == [(77, "{new}")]


# ---------------------------------------------------------------- tries and held replies (migration 4)


def state(tmp_path: Path, update_id: int) -> tuple[int, bool, bool, str | None]:
    """(attempts, handled, abandoned, replies) of one update, as another process reads it."""
    conn = sqlite3.connect(tmp_path / "db" / "ovbot.db", isolation_level=None)
    try:
        row = conn.execute(
            "SELECT attempts, handled_at IS NOT NULL, abandoned_at IS NOT NULL, replies FROM platform_updates "
            "WHERE platform = ? AND update_id = ?",
            (TG, update_id),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), bool(row[1]), bool(row[2]), row[3]


async def test_each_try_is_counted_and_committed_until_the_update_is_handled(
    store: SQLiteStore, tmp_path: Path
) -> None:
    await store.remember_updates(TG, [(1, "{}")], 1.0)
    assert state(tmp_path, 1) == (0, False, False, None)
    assert await store.count_update_attempt(TG, 1) == 1
    assert state(tmp_path, 1) == (1, False, False, None)  # durable before the handler runs
    assert await store.count_update_attempt(TG, 1) == 2
    await store.mark_update_handled(TG, 1, 2.0)
    assert await store.count_update_attempt(TG, 1) == 0  # handled: nothing to try
    assert await store.count_update_attempt(TG, 99) == 0  # never stored
    assert await store.count_update_attempt("discord", 1) == 0  # ids are per platform
    assert state(tmp_path, 1) == (2, True, False, None)


async def test_replies_are_committed_with_the_handled_mark_and_listed_until_sent(
    store: SQLiteStore, tmp_path: Path
) -> None:
    await store.remember_updates(TG, [(1, "{}"), (2, "{}"), (3, "{}")], 1.0)
    await store.mark_update_handled(TG, 2, 2.0, replies='[{"r":2}]')
    await store.mark_update_handled(TG, 1, 2.0, replies='[{"r":1}]')
    await store.mark_update_handled(TG, 3, 2.0)  # a chat turn: nothing held
    assert state(tmp_path, 2) == (0, True, False, '[{"r":2}]')
    assert await store.unsent_replies(TG) == [(1, '[{"r":1}]'), (2, '[{"r":2}]')]
    assert await store.unsent_replies("discord") == []
    await store.mark_replies_sent(TG, 1)
    assert await store.unsent_replies(TG) == [(2, '[{"r":2}]')]
    assert state(tmp_path, 1) == (0, True, False, None)  # the text is not kept once sent
    await store.mark_update_handled(TG, 2, 9.0, replies='[{"again":1}]')  # handled once: stays
    assert await store.unsent_replies(TG) == [(2, '[{"r":2}]')]


async def test_an_abandoned_update_is_handled_with_its_notice(store: SQLiteStore, tmp_path: Path) -> None:
    await store.remember_updates(TG, [(7, "{}")], 1.0)
    await store.mark_update_handled(TG, 7, 2.0, replies='[{"notice":1}]', abandoned=True)
    assert state(tmp_path, 7) == (0, True, True, '[{"notice":1}]')
    assert await store.unhandled_updates(TG) == []  # never replayed again
    assert await store.remember_updates(TG, [(7, "{}")], 3.0) == []  # nor taken as new


async def test_facade_allows_a_bounded_number_of_tries(store: SQLiteStore, tmp_path: Path) -> None:
    bot = facade(store)
    await bot.remember_updates(TG, [(1, "{}"), (2, "{}")])
    tries = [await bot.try_update(TG, 1) for _ in range(UPDATE_MAX_ATTEMPTS + 1)]
    assert tries == [True] * UPDATE_MAX_ATTEMPTS + [False]
    await bot.update_abandoned(TG, 1, '["notice"]')
    assert state(tmp_path, 1) == (UPDATE_MAX_ATTEMPTS + 1, True, True, '["notice"]')
    assert await bot.try_update(TG, 2) is True  # another update is not affected
    await bot.update_handled(TG, 2, '["answer"]')
    assert await bot.unsent_replies(TG) == [(1, '["notice"]'), (2, '["answer"]')]
    await bot.replies_sent(TG, 2)
    await bot.replies_sent(TG, 1)
    assert await bot.unsent_replies(TG) == []
    assert await bot.try_update(TG, 404) is True  # never remembered (not from the inbox): just handle it
