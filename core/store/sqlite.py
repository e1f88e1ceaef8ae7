"""The embedded store: one SQLite file (WAL) plus PNG files under the data directory.

One aiosqlite connection (a thread of its own) carries every statement, and an
``asyncio.Lock`` makes each store call exclusive on it. Without the lock, two coroutines
sharing the connection would interleave inside each other's ``BEGIN ... COMMIT``: one
would commit or roll back the other's half-done work, and reads would see uncommitted
rows. The connection runs in autocommit mode so that every multi-statement change is an
explicit ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a second process waits
``busy_timeout`` instead of failing with a deadlock half way through).

Durability: with ``synchronous=NORMAL`` in WAL mode a committed transaction survives a
crash of the process; after a power loss the last commits may be rolled back (never
corrupted). Pass ``synchronous="FULL"`` when that matters more than write latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite

from ovbot.core.domain import (
    ChatRef,
    ImageRecord,
    Job,
    JobKind,
    JobState,
    LimitOverride,
    Turn,
    UserRef,
    new_id,
)
from ovbot.core.errors import NotFound
from ovbot.core.store.base import ChatOptions
from ovbot.core.store.migrations import MIGRATIONS, Migration, apply_migrations, rollback_quietly

log = logging.getLogger(__name__)

_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_JOB_COLUMNS = (
    "id, kind, state, user_key, user_platform, user_id, user_display_name, chat_key, "
    "chat_platform, chat_id, conversation_id, payload, attempts, lease_owner, "
    "lease_expires_at, created_at, started_at, finished_at, result, error, delivery"
)

_INSERT_JOB = f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 21)})"

# ``delivery`` is deliberately absent: only ``record_delivery`` writes it, so a job
# written back by the queue can never erase where an adapter already posted its result.
_UPDATE_JOB = (
    "UPDATE jobs SET state = ?, attempts = ?, lease_owner = ?, lease_expires_at = ?, "
    "started_at = ?, finished_at = ?, result = ?, error = ? WHERE id = ?"
)

# A job still running when its conversation is forgotten must not bring the forgotten
# text back: its turns are dropped. A conversation id that does not exist at all still
# fails on the foreign key, because that is a bug, not a race.
_INSERT_TURN = (
    "INSERT INTO turns (conversation_id, role, content, job_id, created_at) "
    "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS "
    "(SELECT 1 FROM conversations WHERE id = ? AND forgotten = 1)"
)

_EXPIRED = "state = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < ?)"

_INSERT_USAGE = "INSERT INTO usage (user_key, kind, at) VALUES (?, ?, ?)"


class SQLiteStore:
    """``Store`` on SQLite; see ``ovbot.core.store.base.Store`` for the semantics."""

    def __init__(
        self,
        db_path: Path,
        data_dir: Path,
        *,
        busy_timeout_ms: int = 5000,
        synchronous: str = "NORMAL",
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)} (got {synchronous!r})")
        self._db_path = Path(db_path)
        # absolute, so image paths handed out stay valid if the process changes directory
        self._data_dir = Path(data_dir).resolve()
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._synchronous = synchronous.upper()
        self._migrations = tuple(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def initialize(self) -> None:
        if self._conn is not None:
            return
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        (self._data_dir / "images").mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(self._db_path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await self._configure(conn)
            await apply_migrations(conn, self._migrations, db_label=f"database {self._db_path}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        # busy_timeout first: switching to WAL needs a lock another process may hold
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
        if str(mode).lower() != "wal":
            log.warning("SQLite refused WAL mode for %s (journal_mode=%s); writers will block readers", self._db_path, mode)
        await conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def ping(self, timeout_s: float = 5.0) -> bool:
        if self._conn is None:
            return False
        try:
            changed = await asyncio.wait_for(
                self._write("UPDATE heartbeat SET at = ? WHERE id = 1", (time.time(),)), timeout_s
            )
        except Exception as exc:  # a health check reports, it does not raise
            log.warning("store ping failed: %s", exc)
            return False
        return changed == 1

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("SQLiteStore is not open: call initialize() first (or it was closed)")
        return self._conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            conn = self._connection()
            # BEGIN inside the try: a cancellation while awaiting it does not stop the
            # connection thread from running it, so it must be rolled back too
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                await rollback_quietly(conn)
                raise

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, committed on return (autocommit); returns the changed row count."""
        async with self._lock:
            return await _run(self._connection(), sql, params)

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        # reads take the lock too: otherwise they could see another call's uncommitted rows
        async with self._lock:
            return await _one(self._connection(), sql, params)

    async def _read_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            return await _all(self._connection(), sql, params)

    # ------------------------------------------------------------------ users, admins
    async def upsert_user(self, user: UserRef) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO users (key, platform, user_id, display_name, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "last_seen = excluded.last_seen, display_name = CASE WHEN excluded.display_name <> '' "
            "THEN excluded.display_name ELSE users.display_name END",
            (user.key, user.platform, user.user_id, user.display_name, now, now),
        )

    async def add_admin(self, user_key: str) -> None:
        await self._write(
            "INSERT INTO admins (user_key, added_at) VALUES (?, ?) ON CONFLICT(user_key) DO NOTHING",
            (user_key, time.time()),
        )

    async def remove_admin(self, user_key: str) -> None:
        await self._write("DELETE FROM admins WHERE user_key = ?", (user_key,))

    async def is_admin(self, user_key: str) -> bool:
        return await self._read_one("SELECT 1 FROM admins WHERE user_key = ?", (user_key,)) is not None

    async def list_admins(self) -> list[str]:
        rows = await self._read_all("SELECT user_key FROM admins ORDER BY user_key")
        return [str(row[0]) for row in rows]

    async def block_user(self, user_key: str, blocked_by: str) -> None:
        await self._write(
            "INSERT INTO blocked_users (user_key, blocked_by, blocked_at) VALUES (?, ?, ?) "
            "ON CONFLICT(user_key) DO NOTHING",
            (user_key, blocked_by, time.time()),
        )

    async def unblock_user(self, user_key: str) -> None:
        await self._write("DELETE FROM blocked_users WHERE user_key = ?", (user_key,))

    async def is_blocked(self, user_key: str) -> bool:
        return await self._read_one("SELECT 1 FROM blocked_users WHERE user_key = ?", (user_key,)) is not None

    async def list_blocked(self) -> list[str]:
        rows = await self._read_all("SELECT user_key FROM blocked_users ORDER BY user_key")
        return [str(row[0]) for row in rows]

    # ------------------------------------------------------------------ conversations
    async def active_conversation(self, chat: ChatRef) -> str:
        row = await self._read_one("SELECT active_conversation_id FROM chats WHERE key = ?", (chat.key,))
        if row is not None:
            return str(row[0])
        async with self._transaction() as conn:
            return await _ensure_chat(conn, chat)

    async def reset_conversation(self, chat: ChatRef, forget: bool) -> str:
        async with self._transaction() as conn:
            old = await _one(conn, "SELECT active_conversation_id FROM chats WHERE key = ?", (chat.key,))
            if old is None:
                return await _ensure_chat(conn, chat)
            return await _replace_conversation(conn, chat, str(old[0]), forget)

    async def set_persona(self, chat: ChatRef, persona: str | None) -> None:
        async with self._transaction() as conn:
            await _ensure_chat(conn, chat)
            await _run(conn, "UPDATE chats SET persona = ? WHERE key = ?", (persona, chat.key))

    async def get_persona(self, chat: ChatRef) -> str | None:
        row = await self._read_one("SELECT persona FROM chats WHERE key = ?", (chat.key,))
        return None if row is None else row[0]

    async def get_chat_options(self, chat: ChatRef) -> ChatOptions:
        row = await self._read_one(
            "SELECT persona, reasoning_mode, image_defaults FROM chats WHERE key = ?", (chat.key,)
        )
        if row is None:
            return ChatOptions()
        return ChatOptions(row["persona"], row["reasoning_mode"], _loads_optional(row["image_defaults"]))

    async def set_reasoning_mode(self, chat: ChatRef, mode: str | None) -> None:
        async with self._transaction() as conn:
            await _ensure_chat(conn, chat)
            await _run(conn, "UPDATE chats SET reasoning_mode = ? WHERE key = ?", (mode, chat.key))

    async def set_image_defaults(self, chat: ChatRef, defaults: dict[str, Any] | None) -> None:
        encoded = None if defaults is None else _dumps(defaults)
        async with self._transaction() as conn:
            await _ensure_chat(conn, chat)
            await _run(conn, "UPDATE chats SET image_defaults = ? WHERE key = ?", (encoded, chat.key))

    async def recent_turns(self, conversation_id: str, limit: int) -> list[Turn]:
        if limit <= 0:  # SQLite reads LIMIT -1 as "no limit"
            return []
        rows = await self._read_all(
            "SELECT conversation_id, role, content, job_id, created_at FROM turns "
            "WHERE conversation_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (conversation_id, limit),
        )
        return [_row_to_turn(row) for row in reversed(rows)]

    # ------------------------------------------------------------------ jobs
    async def insert_job(self, job: Job, usage: Sequence[str] = ()) -> None:
        params = _job_insert_params(job)
        if not usage:
            await self._write(_INSERT_JOB, params)
            return
        async with self._transaction() as conn:
            await _run(conn, _INSERT_JOB, params)
            rows = [(job.user.key, kind, job.created_at) for kind in usage]
            async with conn.executemany(_INSERT_USAGE, rows):
                pass

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._read_one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _row_to_job(row)

    async def jobs_in_states(self, states: Sequence[JobState]) -> list[Job]:
        if not states:
            return []
        marks = ", ".join("?" * len(states))
        rows = await self._read_all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY created_at, rowid",
            [JobState(s).value for s in states],
        )
        return [_row_to_job(row) for row in rows]

    async def claim_job(self, job_id: str, owner: str, lease_expires_at: float, now: float) -> Job | None:
        # The WHERE state = 'queued' is what makes the claim exclusive across processes;
        # the lock only orders the coroutines of this one.
        async with self._transaction() as conn:
            claimed = await _run(
                conn,
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
                "lease_expires_at = ?, started_at = ? WHERE id = ? AND state = 'queued'",
                (owner, lease_expires_at, now, job_id),
            )
            if claimed != 1:
                return None
            row = await _one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _row_to_job(row)

    async def renew_lease(self, job_id: str, owner: str, lease_expires_at: float) -> bool:
        renewed = await self._write(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
            (lease_expires_at, job_id, owner),
        )
        return renewed == 1

    async def lease_owners(self) -> list[str]:
        rows = await self._read_all(
            "SELECT DISTINCT lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL"
        )
        return [str(row[0]) for row in rows]

    async def requeue_owned(self, owners: Sequence[str]) -> list[str]:
        if not owners:
            return []
        marks = ", ".join("?" * len(owners))
        where = f"state = 'running' AND lease_owner IN ({marks})"
        async with self._transaction() as conn:
            rows = await _all(conn, f"SELECT id FROM jobs WHERE {where} ORDER BY created_at, rowid", owners)
            if rows:
                await _run(
                    conn,
                    f"UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL WHERE {where}",
                    owners,
                )
        return [str(row[0]) for row in rows]

    async def requeue_expired(self, now: float) -> list[str]:
        """A running job without any lease is treated as expired: nothing would ever
        finish it otherwise."""
        async with self._transaction() as conn:
            rows = await _all(conn, f"SELECT id FROM jobs WHERE {_EXPIRED} ORDER BY created_at, rowid", (now,))
            if rows:
                await _run(
                    conn,
                    f"UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL WHERE {_EXPIRED}",
                    (now,),
                )
        return [str(row[0]) for row in rows]

    async def finish_job(self, job: Job, turns: Sequence[Turn] = (), *, refund_usage: bool = False) -> None:
        """Turns of a conversation forgotten while the job ran are dropped (see
        ``_INSERT_TURN``). Raises ``ValueError`` for a non-terminal state: that would be a
        job whose turns are stored while it may still run again."""
        if not JobState(job.state).terminal:
            raise ValueError(f"finish_job needs a terminal state (got {JobState(job.state).value})")
        turn_rows = [_turn_params(turn) for turn in turns]
        job_row = _job_update_params(job)
        async with self._transaction() as conn:
            if await _run(conn, _UPDATE_JOB, job_row) != 1:
                raise NotFound(f"job {job.id} not found")
            if turn_rows:
                async with conn.executemany(_INSERT_TURN, turn_rows):
                    pass
            if refund_usage:  # the rows insert_job charged: this user, at the job's creation
                refund = "DELETE FROM usage WHERE user_key = ? AND at = ?"
                await _run(conn, refund, (job.user.key, job.created_at))

    async def update_job(self, job: Job) -> None:
        if await self._write(_UPDATE_JOB, _job_update_params(job)) != 1:
            raise NotFound(f"job {job.id} not found")

    async def record_delivery(self, job_id: str, key: str, value: object) -> None:
        encoded_value = json.loads(_dumps(value))  # fail on unserialisable values before writing
        async with self._transaction() as conn:
            row = await _one(conn, "SELECT delivery FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                raise NotFound(f"job {job_id} not found")
            delivery = json.loads(row[0])
            delivery[key] = encoded_value
            await _run(conn, "UPDATE jobs SET delivery = ? WHERE id = ?", (_dumps(delivery), job_id))

    async def mark_delivered(self, job_id: str, at: float) -> None:
        if await self._write("UPDATE jobs SET delivered_at = ? WHERE id = ?", (at, job_id)) != 1:
            raise NotFound(f"job {job_id} not found")

    async def undelivered_jobs(self, platform: str, since: float) -> list[Job]:
        rows = await self._read_all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE chat_platform = ? AND delivered_at IS NULL "
            "AND created_at >= ? AND state <> 'cancelled' ORDER BY created_at, rowid",
            (platform, since),
        )
        return [_row_to_job(row) for row in rows]

    # ------------------------------------------------------------------ platform updates
    async def remember_updates(self, platform: str, items: Sequence[tuple[int, str]], at: float) -> list[int]:
        fresh: list[int] = []
        if not items:
            return fresh
        async with self._transaction() as conn:
            for update_id, payload in items:
                inserted = await _run(
                    conn,
                    "INSERT OR IGNORE INTO platform_updates (platform, update_id, payload, received_at) "
                    "VALUES (?, ?, ?, ?)",
                    (platform, int(update_id), payload, at),
                )
                if inserted:
                    fresh.append(int(update_id))
        return fresh

    async def unhandled_updates(self, platform: str) -> list[tuple[int, str]]:
        return await self._update_texts(platform, "payload", "handled_at IS NULL")

    async def count_update_attempt(self, platform: str, update_id: int) -> int:
        async with self._transaction() as conn:
            row = await _one(
                conn,
                "UPDATE platform_updates SET attempts = attempts + 1 "
                "WHERE platform = ? AND update_id = ? AND handled_at IS NULL RETURNING attempts",
                (platform, int(update_id)),
            )
        return 0 if row is None else int(row[0])

    async def mark_update_handled(
        self, platform: str, update_id: int, at: float, *, replies: str | None = None, abandoned: bool = False
    ) -> None:
        await self._write(
            "UPDATE platform_updates SET handled_at = ?, replies = ?, abandoned_at = ? "
            "WHERE platform = ? AND update_id = ? AND handled_at IS NULL",
            (at, replies, at if abandoned else None, platform, int(update_id)),
        )

    async def unsent_replies(self, platform: str) -> list[tuple[int, str]]:
        return await self._update_texts(platform, "replies", "replies IS NOT NULL")

    async def _update_texts(self, platform: str, column: str, condition: str) -> list[tuple[int, str]]:
        """``(update_id, column)`` of the platform's updates meeting ``condition``, in id
        order; ``column`` and ``condition`` are this module's constants, never input."""
        rows = await self._read_all(
            f"SELECT update_id, {column} FROM platform_updates WHERE platform = ? AND {condition} ORDER BY update_id",
            (platform,),
        )
        return [(int(row[0]), str(row[1])) for row in rows]

    async def mark_replies_sent(self, platform: str, update_id: int) -> None:
        await self._write(
            "UPDATE platform_updates SET replies = NULL WHERE platform = ? AND update_id = ?",
            (platform, int(update_id)),
        )

    async def prune_updates(self, before: float) -> int:
        return await self._write(
            "DELETE FROM platform_updates WHERE handled_at IS NOT NULL AND handled_at < ?", (before,)
        )

    # ------------------------------------------------------------------ images
    async def save_image(self, job_id: str | None, user_key: str, png: bytes, params: dict) -> ImageRecord:
        image_id = new_id()
        relative = f"images/{image_id[:2]}/{image_id}.png"
        path = self._data_dir / relative
        row = (image_id, job_id, user_key, relative, _dumps(params), time.time())
        # file first: a committed row must never point at a missing file
        await asyncio.to_thread(_write_atomically, path, png)
        try:
            await self._write(
                "INSERT INTO images (id, job_id, user_key, path, params, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
        except sqlite3.Error:
            # Only when the insert certainly failed; after a cancellation the row may
            # still be committed by the connection thread, so the file stays.
            await asyncio.to_thread(_unlink_quietly, path)
            raise
        return ImageRecord(image_id, job_id, user_key, str(path), json.loads(row[4]), row[5])

    async def get_image(self, image_id: str) -> ImageRecord | None:
        row = await self._read_one(
            "SELECT id, job_id, user_key, path, params, created_at FROM images WHERE id = ?", (image_id,)
        )
        if row is None:
            return None
        path = self._data_dir / row["path"]
        return ImageRecord(row["id"], row["job_id"], row["user_key"], str(path), json.loads(row["params"]), row["created_at"])

    # ------------------------------------------------------------------ limits, usage
    async def get_limit_override(self, user_key: str) -> LimitOverride | None:
        row = await self._read_one(
            "SELECT user_key, chat_per_window, images_per_day FROM limit_overrides WHERE user_key = ?", (user_key,)
        )
        return None if row is None else LimitOverride(row[0], row[1], row[2])

    async def set_limit_override(self, override: LimitOverride) -> None:
        await self._write(
            "INSERT INTO limit_overrides (user_key, chat_per_window, images_per_day, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(user_key) DO UPDATE SET "
            "chat_per_window = excluded.chat_per_window, images_per_day = excluded.images_per_day, "
            "updated_at = excluded.updated_at",
            (override.user_key, override.chat_per_window, override.images_per_day, time.time()),
        )

    async def delete_limit_override(self, user_key: str) -> None:
        await self._write("DELETE FROM limit_overrides WHERE user_key = ?", (user_key,))

    async def record_usage(self, user_key: str, kind: str, at: float) -> None:
        await self._write(_INSERT_USAGE, (user_key, kind, at))

    async def usage_times(self, user_key: str, kind: str, since: float) -> list[float]:
        rows = await self._read_all(
            "SELECT at FROM usage WHERE user_key = ? AND kind = ? AND at >= ? ORDER BY at, id",
            (user_key, kind, since),
        )
        return [float(row[0]) for row in rows]

    async def prune_usage(self, before: float) -> int:
        """Usage only matters inside the longest limit window; without pruning the table
        grows by one row per message forever. Returns the number of rows removed."""
        return await self._write("DELETE FROM usage WHERE at < ?", (before,))


# ---------------------------------------------------------------------- statements
async def _run(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> int:
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


async def _one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    async with conn.execute(sql, params) as cursor:
        return await cursor.fetchone()


async def _all(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    return list(await conn.execute_fetchall(sql, params))


async def _scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    row = await _one(conn, sql)
    return None if row is None else row[0]


# ---------------------------------------------------------------------- conversations
async def _ensure_chat(conn: aiosqlite.Connection, chat: ChatRef) -> str:
    """Inside a transaction: the chat's active conversation, creating both if new."""
    row = await _one(conn, "SELECT active_conversation_id FROM chats WHERE key = ?", (chat.key,))
    if row is not None:
        return str(row[0])
    conversation_id, now = new_id(), time.time()
    await _run(
        conn,
        "INSERT INTO chats (key, platform, chat_id, active_conversation_id, persona, created_at) "
        "VALUES (?, ?, ?, ?, NULL, ?)",
        (chat.key, chat.platform, chat.chat_id, conversation_id, now),
    )
    await _insert_conversation(conn, conversation_id, chat.key, now)
    return conversation_id


async def _replace_conversation(conn: aiosqlite.Connection, chat: ChatRef, old_id: str, forget: bool) -> str:
    new_conversation_id, now = new_id(), time.time()
    await _run(
        conn,
        "UPDATE conversations SET ended_at = ?, forgotten = ? WHERE id = ?",
        (now, int(forget), old_id),
    )
    if forget:
        await _run(conn, "DELETE FROM turns WHERE conversation_id = ?", (old_id,))
        # the finished jobs of that conversation hold the same text: forget it there too
        await _run(
            conn,
            "UPDATE jobs SET payload = json_set(payload, '$.message', ''), "
            "result = CASE WHEN result IS NULL THEN NULL "
            "ELSE json_remove(json_set(result, '$.text', ''), '$.reasoning') END "
            "WHERE conversation_id = ? AND kind = 'chat' AND state IN ('done', 'failed', 'cancelled')",
            (old_id,),
        )
    await _insert_conversation(conn, new_conversation_id, chat.key, now)
    await _run(conn, "UPDATE chats SET active_conversation_id = ? WHERE key = ?", (new_conversation_id, chat.key))
    return new_conversation_id


async def _insert_conversation(conn: aiosqlite.Connection, conversation_id: str, chat_key: str, now: float) -> None:
    await _run(
        conn,
        "INSERT INTO conversations (id, chat_key, created_at) VALUES (?, ?, ?)",
        (conversation_id, chat_key, now),
    )


# ---------------------------------------------------------------------- row mapping
def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads_optional(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _job_insert_params(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        JobKind(job.kind).value,
        JobState(job.state).value,
        job.user.key,
        job.user.platform,
        job.user.user_id,
        job.user.display_name,
        job.chat.key,
        job.chat.platform,
        job.chat.chat_id,
        job.conversation_id,
        _dumps(job.payload),
        job.attempts,
        job.lease_owner,
        job.lease_expires_at,
        job.created_at,
        job.started_at,
        job.finished_at,
        None if job.result is None else _dumps(job.result),
        None if job.error is None else _dumps(job.error),
        _dumps(job.delivery),
    )


def _job_update_params(job: Job) -> tuple[Any, ...]:
    return (
        JobState(job.state).value,
        job.attempts,
        job.lease_owner,
        job.lease_expires_at,
        job.started_at,
        job.finished_at,
        None if job.result is None else _dumps(job.result),
        None if job.error is None else _dumps(job.error),
        job.id,
    )


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        kind=JobKind(row["kind"]),
        user=UserRef(row["user_platform"], row["user_id"], row["user_display_name"]),
        chat=ChatRef(row["chat_platform"], row["chat_id"]),
        conversation_id=row["conversation_id"],
        payload=json.loads(row["payload"]),
        id=row["id"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=_loads_optional(row["result"]),
        error=_loads_optional(row["error"]),
        delivery=json.loads(row["delivery"]),
    )


def _turn_params(turn: Turn) -> tuple[Any, ...]:
    return (turn.conversation_id, turn.role, turn.content, turn.job_id, turn.created_at, turn.conversation_id)


def _row_to_turn(row: sqlite3.Row) -> Turn:
    return Turn(row["conversation_id"], row["role"], row["content"], row["job_id"], row["created_at"])


# ---------------------------------------------------------------------- files
def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see either no file or the whole file, never a torn one, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        _unlink_quietly(Path(temp_name))
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a directory for it."""
    if os.name != "posix":
        return
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()
