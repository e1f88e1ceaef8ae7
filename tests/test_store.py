"""SQLiteStore on a real database file: schema, jobs, conversations, files, concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ovbot.core.domain import ChatRef, Job, JobKind, JobState, LimitOverride, Turn, UserRef
from ovbot.core.errors import NotFound
from ovbot.core.store.migrations import (
    MIGRATIONS,
    SchemaVersionError,
    check_migrations,
    latest_version,
    split_statements,
)
from ovbot.core.store.sqlite import SQLiteStore

ALICE = UserRef("telegram", "42", "Alice")
BOB = UserRef("discord", "7", "Bob")
CHAT = ChatRef("telegram", "-100")
OTHER_CHAT = ChatRef("discord", "chan-1")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def make_store(tmp_path: Path, **kwargs: object) -> SQLiteStore:
    return SQLiteStore(tmp_path / "db" / "ovbot.db", tmp_path / "data", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = make_store(tmp_path)
    await opened.initialize()
    yield opened
    await opened.close()


def raw(tmp_path: Path) -> sqlite3.Connection:
    """A second, independent connection: what another process would see."""
    return sqlite3.connect(tmp_path / "db" / "ovbot.db", isolation_level=None)


def make_job(conversation_id: str = "conv-x", **fields: object) -> Job:
    return Job(
        kind=JobKind.CHAT,
        user=ALICE,
        chat=CHAT,
        conversation_id=conversation_id,
        payload={"message": "hi", "image": None, "show_reasoning": False},
        **fields,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------- schema
async def test_migrations_create_schema_and_reopen_is_idempotent(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    await first.initialize()
    await first.add_admin("telegram:42")
    await first.close()

    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version() == MIGRATIONS[-1][0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "admins", "chats", "conversations", "turns", "jobs", "images",
            "limit_overrides", "usage", "heartbeat"} <= tables

    # the migrations use plain CREATE TABLE: re-running one would fail, so success here
    # proves the re-open skipped them (and kept the data)
    second = make_store(tmp_path)
    await second.initialize()
    assert await second.is_admin("telegram:42")
    await second.close()
    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert conn.execute("SELECT count(*) FROM heartbeat").fetchone()[0] == 1


async def test_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    await first.initialize()
    await first.close()
    with raw(tmp_path) as conn:
        conn.execute("PRAGMA user_version = 999")

    newer = make_store(tmp_path)
    with pytest.raises(SchemaVersionError, match=rf"schema version 999.*up to {latest_version()}") as info:
        await newer.initialize()
    assert "newer ovbot" in info.value.user_message
    assert await newer.ping() is False  # not left half-open
    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999


async def test_a_failing_migration_is_rolled_back_entirely(tmp_path: Path) -> None:
    next_version = latest_version() + 1
    broken = (*MIGRATIONS, (next_version, "CREATE TABLE extra (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"))
    store = make_store(tmp_path, migrations=broken)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await store.initialize()

    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    fixed = make_store(tmp_path)
    await fixed.initialize()  # the database is still usable by the current code
    assert await fixed.ping()
    await fixed.close()


def test_migration_numbering_and_statement_splitting() -> None:
    with pytest.raises(ValueError, match="1, 2, 3"):
        check_migrations([(1, "SELECT 1"), (3, "SELECT 1")])
    check_migrations(MIGRATIONS)
    script = "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\nINSERT INTO t VALUES ('c;d');\n"
    statements = split_statements(script)
    assert len(statements) == 2
    assert "'a;b'" in statements[0] and "'c;d'" in statements[1]


async def test_connection_uses_wal_and_enforces_foreign_keys(store: SQLiteStore, tmp_path: Path) -> None:
    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    conversation = await store.active_conversation(CHAT)
    job = make_job(conversation, state=JobState.RUNNING)
    await store.insert_job(job)
    job.state = JobState.DONE
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await store.finish_job(job, [Turn("no-such-conversation", "user", "x", job.id)])


async def test_writes_wait_for_another_writer_instead_of_failing(store: SQLiteStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "db" / "ovbot.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    started = time.monotonic()
    await store.record_usage(ALICE.key, "chat", 1.0)  # busy_timeout: waits, then succeeds
    assert time.monotonic() - started >= 0.25
    assert await store.usage_times(ALICE.key, "chat", 0.0) == [1.0]
    other.close()


# ---------------------------------------------------------------------- jobs
async def test_job_round_trips_exactly(store: SQLiteStore) -> None:
    full = Job(
        kind=JobKind.IMAGE,
        user=UserRef("discord", "7", "Bøb 🎨"),
        chat=OTHER_CHAT,
        conversation_id="conv-1",
        payload={"image": {"prompt": "a lighthouse", "steps": 20, "cfg": 7.5}, "parent_job_id": None},
        state=JobState.FAILED,
        attempts=3,
        lease_owner="worker-1",
        lease_expires_at=1_700_000_123.456789,
        created_at=1_700_000_000.123456,
        started_at=1_700_000_001.5,
        finished_at=1_700_000_002.25,
        result={"image_id": "abc", "params": {"seed": 1}},
        error={"kind": "engine", "message": "boom"},
        delivery={"telegram": {"message_id": 12}},
    )
    minimal = make_job()
    for job in (full, minimal):
        await store.insert_job(job)
        loaded = await store.get_job(job.id)
        assert loaded == job
        assert loaded is not None and type(loaded.state) is JobState and type(loaded.kind) is JobKind
    assert await store.get_job("missing") is None


async def test_jobs_in_states_oldest_first(store: SQLiteStore) -> None:
    newer = make_job(created_at=200.0)
    older = make_job(created_at=100.0)
    running = make_job(created_at=50.0, state=JobState.RUNNING)
    done = make_job(created_at=10.0, state=JobState.DONE)
    for job in (newer, older, running, done):
        await store.insert_job(job)
    found = await store.jobs_in_states([JobState.QUEUED, JobState.RUNNING])
    assert [j.id for j in found] == [running.id, older.id, newer.id]
    assert await store.jobs_in_states([]) == []


async def test_claim_sets_lease_and_refuses_non_queued(store: SQLiteStore) -> None:
    job = make_job()
    cancelled = make_job(state=JobState.CANCELLED)
    await store.insert_job(job)
    await store.insert_job(cancelled)

    claimed = await store.claim_job(job.id, "w1", lease_expires_at=130.0, now=100.0)
    assert claimed is not None
    assert (claimed.state, claimed.attempts, claimed.lease_owner, claimed.lease_expires_at, claimed.started_at) == (
        JobState.RUNNING, 1, "w1", 130.0, 100.0)
    assert await store.get_job(job.id) == claimed
    assert await store.claim_job(job.id, "w2", 130.0, 100.0) is None
    assert await store.claim_job(cancelled.id, "w1", 130.0, 100.0) is None
    assert await store.claim_job("missing", "w1", 130.0, 100.0) is None


async def test_concurrent_claims_in_one_store_exactly_one_wins(store: SQLiteStore) -> None:
    job = make_job()
    await store.insert_job(job)
    results = await asyncio.gather(*(store.claim_job(job.id, f"w{i}", 130.0, 100.0) for i in range(2)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = await store.get_job(job.id)
    assert stored is not None and stored.attempts == 1 and stored.lease_owner == winners[0].lease_owner


async def test_concurrent_claims_across_processes_are_exclusive(tmp_path: Path) -> None:
    # two stores = two connections on one file, as two bot processes would have
    first, second = make_store(tmp_path), make_store(tmp_path)
    await first.initialize()
    await second.initialize()
    jobs = [make_job() for _ in range(20)]
    for job in jobs:
        await first.insert_job(job)

    claims = await asyncio.gather(*(
        store.claim_job(job.id, owner, 130.0, 100.0)
        for job in jobs
        for store, owner in ((first, "a"), (second, "b"))
    ))
    winners = [c for c in claims if c is not None]
    assert sorted(c.id for c in winners) == sorted(j.id for j in jobs)
    assert [(await first.get_job(j.id)).attempts for j in jobs] == [1] * len(jobs)  # type: ignore[union-attr]
    await first.close()
    await second.close()


async def test_renew_lease_only_for_the_owner_of_a_running_job(store: SQLiteStore) -> None:
    job = make_job()
    await store.insert_job(job)
    assert await store.renew_lease(job.id, "w1", 200.0) is False  # not running yet
    await store.claim_job(job.id, "w1", 130.0, 100.0)
    assert await store.renew_lease(job.id, "w2", 999.0) is False
    assert await store.renew_lease(job.id, "w1", 200.0) is True
    assert (await store.get_job(job.id)).lease_expires_at == 200.0  # type: ignore[union-attr]


async def test_requeue_expired_returns_only_expired_running_jobs(store: SQLiteStore) -> None:
    expired, alive, queued = make_job(created_at=1.0), make_job(created_at=2.0), make_job(created_at=3.0)
    for job in (expired, alive, queued):
        await store.insert_job(job)
    await store.claim_job(expired.id, "w1", lease_expires_at=110.0, now=100.0)
    await store.claim_job(alive.id, "w1", lease_expires_at=200.0, now=100.0)

    assert await store.requeue_expired(now=150.0) == [expired.id]
    requeued = await store.get_job(expired.id)
    assert requeued is not None
    assert (requeued.state, requeued.lease_owner, requeued.lease_expires_at, requeued.attempts) == (
        JobState.QUEUED, None, None, 1)
    assert (await store.get_job(alive.id)).state is JobState.RUNNING  # type: ignore[union-attr]
    assert await store.requeue_expired(now=150.0) == []
    reclaimed = await store.claim_job(expired.id, "w2", 300.0, 160.0)
    assert reclaimed is not None and reclaimed.attempts == 2


async def test_finish_job_writes_state_and_turns(store: SQLiteStore) -> None:
    conversation = await store.active_conversation(CHAT)
    job = make_job(conversation)
    await store.insert_job(job)
    claimed = await store.claim_job(job.id, "w1", 130.0, 100.0)
    assert claimed is not None
    claimed.state, claimed.finished_at, claimed.result = JobState.DONE, 120.0, {"text": "hello"}
    claimed.lease_owner = claimed.lease_expires_at = None
    turns = [Turn(conversation, "user", "hi", job.id, 110.0), Turn(conversation, "assistant", "hello", job.id, 120.0)]

    await store.finish_job(claimed, turns)

    assert await store.get_job(job.id) == claimed
    assert await store.recent_turns(conversation, 10) == turns


async def test_finish_job_is_all_or_nothing(store: SQLiteStore) -> None:
    conversation = await store.active_conversation(CHAT)
    job = make_job(conversation)
    await store.insert_job(job)
    running = await store.claim_job(job.id, "w1", 130.0, 100.0)
    assert running is not None
    finished = await store.get_job(job.id)
    assert finished is not None
    finished.state, finished.result, finished.finished_at = JobState.DONE, {"text": "hello"}, 120.0
    good = Turn(conversation, "user", "hi", job.id, 110.0)
    bad = Turn("no-such-conversation", "assistant", "hello", job.id, 120.0)

    with pytest.raises(sqlite3.IntegrityError):
        await store.finish_job(finished, [good, bad])

    assert await store.get_job(job.id) == running  # still running, no result
    assert await store.recent_turns(conversation, 10) == []  # the good turn was rolled back too
    await store.finish_job(finished, [good])  # the connection is not stuck in a transaction
    assert (await store.get_job(job.id)).state is JobState.DONE  # type: ignore[union-attr]
    assert await store.recent_turns(conversation, 10) == [good]


async def test_finish_job_cancelled_midway_leaves_a_consistent_state(store: SQLiteStore, tmp_path: Path) -> None:
    # The connection thread keeps running what was queued after a cancellation; the store
    # must still roll back (or complete) the whole transaction and not leave it open.
    conversation = await store.active_conversation(CHAT)
    outcomes = set()
    for step in range(40):
        job = make_job(conversation)
        await store.insert_job(job)
        job.state, job.result = JobState.DONE, {"text": "ok"}
        task = asyncio.create_task(store.finish_job(job, [Turn(conversation, "assistant", job.id, job.id)]))
        await asyncio.sleep(step * 0.00005)
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        assert outcome is None or isinstance(outcome, asyncio.CancelledError)  # never "within a transaction"

        stored = await store.get_job(job.id)
        turn_contents = {t.content for t in await store.recent_turns(conversation, 100)}
        assert stored is not None
        assert (stored.state is JobState.DONE) == (job.id in turn_contents)
        with raw(tmp_path) as conn:  # committed for everyone, not just inside our connection
            (state,) = conn.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
        assert state == stored.state.value
        outcomes.add(state)
    assert "queued" in outcomes  # the cancellation did interrupt some transactions


async def test_finish_job_rejects_non_terminal_and_unknown_jobs(store: SQLiteStore) -> None:
    job = make_job(state=JobState.RUNNING)
    await store.insert_job(job)
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_job(job)
    with pytest.raises(NotFound):
        await store.finish_job(make_job(state=JobState.DONE))
    with pytest.raises(NotFound):
        await store.update_job(make_job())


async def test_update_job_persists_mutable_fields(store: SQLiteStore) -> None:
    job = make_job()
    await store.insert_job(job)
    job.state, job.attempts, job.lease_owner, job.lease_expires_at = JobState.RUNNING, 2, "w9", 55.5
    job.started_at, job.error = 50.0, {"kind": "timeout"}
    await store.update_job(job)
    assert await store.get_job(job.id) == job


async def test_record_delivery_merges_keys_atomically(store: SQLiteStore) -> None:
    job = make_job(delivery={"telegram": {"message_id": 1}})
    await store.insert_job(job)
    await asyncio.gather(*(store.record_delivery(job.id, f"part-{i}", {"message_id": i}) for i in range(20)))
    await store.record_delivery(job.id, "telegram", {"message_id": 2})

    stored = await store.get_job(job.id)
    assert stored is not None
    assert stored.delivery == {"telegram": {"message_id": 2}, **{f"part-{i}": {"message_id": i} for i in range(20)}}
    assert stored.payload == job.payload and stored.state is JobState.QUEUED
    with pytest.raises(NotFound):
        await store.record_delivery("missing", "k", 1)
    with pytest.raises(TypeError):
        await store.record_delivery(job.id, "bad", object())
    assert "bad" not in (await store.get_job(job.id)).delivery  # type: ignore[union-attr]


# ---------------------------------------------------------------------- conversations
async def test_active_conversation_is_stable_and_per_chat(store: SQLiteStore) -> None:
    ids = await asyncio.gather(*(store.active_conversation(CHAT) for _ in range(10)))
    assert len(set(ids)) == 1  # concurrent first use creates exactly one
    assert await store.active_conversation(CHAT) == ids[0]
    assert await store.active_conversation(OTHER_CHAT) != ids[0]


async def test_reset_with_forget_deletes_old_turns(store: SQLiteStore) -> None:
    old = await store.active_conversation(CHAT)
    await _add_turns(store, old, ["a", "b"])
    new = await store.reset_conversation(CHAT, forget=True)
    assert new != old
    assert await store.active_conversation(CHAT) == new
    assert await store.recent_turns(old, 10) == []
    assert await store.recent_turns(new, 10) == []


async def test_reset_without_forget_keeps_old_turns_out_of_the_new_conversation(store: SQLiteStore) -> None:
    old = await store.active_conversation(CHAT)
    await _add_turns(store, old, ["a", "b"])
    new = await store.reset_conversation(CHAT, forget=False)
    assert new != old and await store.active_conversation(CHAT) == new
    assert [t.content for t in await store.recent_turns(old, 10)] == ["a", "b"]
    assert await store.recent_turns(new, 10) == []


async def test_reset_of_an_unknown_chat_starts_one(store: SQLiteStore) -> None:
    new = await store.reset_conversation(OTHER_CHAT, forget=True)
    assert await store.active_conversation(OTHER_CHAT) == new


async def test_turns_of_a_job_finishing_after_forget_are_dropped(store: SQLiteStore) -> None:
    old = await store.active_conversation(CHAT)
    job = make_job(old)
    await store.insert_job(job)
    await store.reset_conversation(CHAT, forget=True)  # while the job runs
    job.state, job.result = JobState.DONE, {"text": "late"}
    await store.finish_job(job, [Turn(old, "assistant", "late", job.id)])
    assert (await store.get_job(job.id)).state is JobState.DONE  # type: ignore[union-attr]
    assert await store.recent_turns(old, 10) == []


async def test_recent_turns_are_the_newest_in_chronological_order(store: SQLiteStore) -> None:
    conversation = await store.active_conversation(CHAT)
    await _add_turns(store, conversation, ["t0", "t1", "t2", "t3", "t4"])
    assert [t.content for t in await store.recent_turns(conversation, 3)] == ["t2", "t3", "t4"]
    assert [t.content for t in await store.recent_turns(conversation, 100)] == ["t0", "t1", "t2", "t3", "t4"]
    assert await store.recent_turns(conversation, 0) == []
    # equal timestamps keep insertion order
    await _add_turns(store, conversation, ["same-1", "same-2"], at=1000.0)
    assert [t.content for t in await store.recent_turns(conversation, 2)] == ["same-1", "same-2"]


async def test_persona_set_get_clear(store: SQLiteStore) -> None:
    assert await store.get_persona(CHAT) is None
    await store.set_persona(CHAT, "a pirate")
    assert await store.get_persona(CHAT) == "a pirate"
    conversation = await store.active_conversation(CHAT)
    await store.reset_conversation(CHAT, forget=True)
    assert await store.get_persona(CHAT) == "a pirate"  # persona belongs to the chat
    await store.set_persona(CHAT, None)
    assert await store.get_persona(CHAT) is None
    assert await store.active_conversation(CHAT) != conversation


async def _add_turns(store: SQLiteStore, conversation: str, contents: list[str], at: float = 100.0) -> None:
    job = make_job(conversation, state=JobState.DONE)
    await store.insert_job(job)
    turns = [Turn(conversation, "user" if i % 2 == 0 else "assistant", c, job.id, at + (i if at == 100.0 else 0))
             for i, c in enumerate(contents)]
    await store.finish_job(job, turns)


# ---------------------------------------------------------------------- users, admins
async def test_upsert_user_keeps_first_seen_and_known_name(store: SQLiteStore, tmp_path: Path) -> None:
    await store.upsert_user(ALICE)
    await asyncio.sleep(0.01)
    await store.upsert_user(UserRef(ALICE.platform, ALICE.user_id))  # adapter without a name
    with raw(tmp_path) as conn:
        rows = conn.execute("SELECT key, display_name, first_seen, last_seen FROM users").fetchall()
    assert len(rows) == 1
    key, name, first_seen, last_seen = rows[0]
    assert (key, name) == ("telegram:42", "Alice")
    assert last_seen > first_seen


async def test_admins(store: SQLiteStore) -> None:
    assert not await store.is_admin(ALICE.key)
    await store.add_admin(ALICE.key)
    await store.add_admin(ALICE.key)  # idempotent
    assert await store.is_admin(ALICE.key) and not await store.is_admin(BOB.key)
    await store.remove_admin(ALICE.key)
    assert not await store.is_admin(ALICE.key)


# ---------------------------------------------------------------------- images
async def test_save_image_writes_file_then_row(store: SQLiteStore, tmp_path: Path) -> None:
    job = make_job()
    await store.insert_job(job)
    record = await store.save_image(job.id, ALICE.key, PNG, {"prompt": "a cat", "seed": 3})

    path = Path(record.path)
    assert path == (tmp_path / "data" / "images" / record.id[:2] / f"{record.id}.png").resolve()
    assert path.read_bytes() == PNG
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    fetched = await store.get_image(record.id)
    assert fetched == record
    assert fetched is not None and Path(fetched.path).read_bytes() == PNG
    assert await store.get_image("missing") is None


async def test_save_image_removes_the_file_when_the_row_fails(store: SQLiteStore, tmp_path: Path) -> None:
    with raw(tmp_path) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON images BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        await store.save_image(None, ALICE.key, PNG, {"prompt": "x"})
    assert not [p for p in (tmp_path / "data" / "images").rglob("*") if p.is_file()]
    with pytest.raises(TypeError):  # unserialisable params fail before any file is written
        await store.save_image(None, ALICE.key, PNG, {"prompt": object()})
    assert not [p for p in (tmp_path / "data" / "images").rglob("*") if p.is_file()]


# ---------------------------------------------------------------------- limits, usage
async def test_limit_overrides_set_replace_delete(store: SQLiteStore) -> None:
    assert await store.get_limit_override(ALICE.key) is None
    await store.set_limit_override(LimitOverride(ALICE.key, chat_per_window=50))
    assert await store.get_limit_override(ALICE.key) == LimitOverride(ALICE.key, 50, None)
    await store.set_limit_override(LimitOverride(ALICE.key, images_per_day=3))
    assert await store.get_limit_override(ALICE.key) == LimitOverride(ALICE.key, None, 3)
    assert await store.get_limit_override(BOB.key) is None
    await store.delete_limit_override(ALICE.key)
    assert await store.get_limit_override(ALICE.key) is None


async def test_usage_times_inside_the_window_per_user_and_kind(store: SQLiteStore) -> None:
    for at in (300.0, 100.0, 200.0):
        await store.record_usage(ALICE.key, "chat", at)
    await store.record_usage(ALICE.key, "image", 250.0)
    await store.record_usage(BOB.key, "chat", 250.0)
    assert await store.usage_times(ALICE.key, "chat", since=200.0) == [200.0, 300.0]
    assert await store.usage_times(ALICE.key, "image", since=0.0) == [250.0]
    assert await store.usage_times(ALICE.key, "chat", since=301.0) == []
    assert await store.prune_usage(before=200.0) == 1
    assert await store.usage_times(ALICE.key, "chat", since=0.0) == [200.0, 300.0]


# ---------------------------------------------------------------------- durability, concurrency
async def test_data_survives_a_restart(tmp_path: Path) -> None:
    before = make_store(tmp_path)
    await before.initialize()
    conversation = await before.active_conversation(CHAT)
    await before.set_persona(CHAT, "terse")
    job = make_job(conversation)
    await before.insert_job(job)
    await before.record_delivery(job.id, "telegram", {"message_id": 5})
    await _add_turns(before, conversation, ["q", "a"])
    image = await before.save_image(job.id, ALICE.key, PNG, {"prompt": "p"})
    await before.add_admin(BOB.key)
    await before.set_limit_override(LimitOverride(BOB.key, 1, 2))
    await before.record_usage(BOB.key, "image", 5.0)
    saved_job = await before.get_job(job.id)
    await before.close()

    after = make_store(tmp_path)
    await after.initialize()
    assert await after.active_conversation(CHAT) == conversation
    assert await after.get_persona(CHAT) == "terse"
    assert await after.get_job(job.id) == saved_job
    assert [t.content for t in await after.recent_turns(conversation, 10)] == ["q", "a"]
    assert await after.get_image(image.id) == image
    assert await after.is_admin(BOB.key)
    assert await after.get_limit_override(BOB.key) == LimitOverride(BOB.key, 1, 2)
    assert await after.usage_times(BOB.key, "image", 0.0) == [5.0]
    await after.close()


async def test_many_concurrent_writers_are_all_persisted(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await store.initialize()
    jobs = [make_job(created_at=float(i)) for i in range(50)]

    async def writer(i: int) -> None:
        await store.insert_job(jobs[i])
        await store.record_usage(f"user-{i % 5}", "chat", float(i))
        await store.record_delivery(jobs[i].id, "writer", i)

    await asyncio.gather(*(writer(i) for i in range(50)))
    await store.close()

    reopened = make_store(tmp_path)
    await reopened.initialize()
    stored = await reopened.jobs_in_states([JobState.QUEUED])
    assert [j.id for j in stored] == [j.id for j in jobs]
    assert [j.delivery for j in stored] == [{"writer": i} for i in range(50)]
    assert sum([len(await reopened.usage_times(f"user-{u}", "chat", 0.0)) for u in range(5)]) == 50
    await reopened.close()


async def test_ping_writes_and_fails_after_close(store: SQLiteStore, tmp_path: Path) -> None:
    assert await store.ping() is True
    with raw(tmp_path) as conn:
        assert conn.execute("SELECT at FROM heartbeat").fetchone()[0] > 0  # a real write happened
    await store.close()
    assert await store.ping() is False
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_job("x")


async def test_writing_a_job_back_keeps_recorded_delivery(tmp_path) -> None:
    """The queue writes whole jobs back; a delivery an adapter recorded meanwhile stays."""
    from ovbot.core.domain import ChatRef, Job, JobKind, JobState, UserRef
    from ovbot.core.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "d.db", tmp_path / "data")
    await store.initialize()
    chat = ChatRef("telegram", "42")
    conversation = await store.active_conversation(chat)
    job = Job(JobKind.CHAT, UserRef("telegram", "7"), chat, conversation, {"message": "hi"})
    await store.insert_job(job)
    stale = await store.get_job(job.id)
    await store.record_delivery(job.id, "telegram", {"message_id": 99})
    stale.state = JobState.DONE
    stale.result = {"text": "ok"}
    await store.finish_job(stale)
    stale.attempts = 3
    await store.update_job(stale)
    saved = await store.get_job(job.id)
    assert saved.delivery == {"telegram": {"message_id": 99}}
    assert saved.state is JobState.DONE and saved.attempts == 3
    await store.close()


async def test_forget_also_scrubs_finished_chat_jobs(tmp_path) -> None:
    from ovbot.core.domain import ChatRef, Job, JobKind, JobState, Turn, UserRef
    from ovbot.core.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "f.db", tmp_path / "data")
    await store.initialize()
    chat = ChatRef("http", "c1")
    conversation = await store.active_conversation(chat)
    job = Job(JobKind.CHAT, UserRef("http", "u"), chat, conversation, {"message": "my secret", "image": None})
    await store.insert_job(job)
    job.state, job.result = JobState.DONE, {"text": "the secret answer", "reasoning": "hmm"}
    await store.finish_job(job, [Turn(conversation, "user", "my secret", job.id)])
    await store.reset_conversation(chat, forget=True)
    scrubbed = await store.get_job(job.id)
    assert scrubbed.payload["message"] == "" and scrubbed.result == {"text": ""}
    assert await store.recent_turns(conversation, 10) == []
    await store.close()
