"""Versioned schema of the SQLite store.

The version lives in ``PRAGMA user_version`` (the database header), which SQLite writes in
the same transaction as the DDL: a migration is either fully applied and recorded or not
at all, even if the process dies half way. Never edit a released migration; append a new
one. Migrations use plain ``CREATE TABLE`` (no ``IF NOT EXISTS``) on purpose, so a
migration that would run twice fails loudly instead of silently doing nothing.

A migration that rebuilds a table (SQLite's way to change a column) must cope with
``foreign_keys = ON``, which cannot be switched off inside a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite

from ovbot.core.errors import OvbotError

#: (version, SQL script); versions start at 1 and increase by one.
Migration = tuple[int, str]

_V1_INITIAL = """
CREATE TABLE users (
    key TEXT PRIMARY KEY,
    platform TEXT NOT NULL,
    user_id TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);

CREATE TABLE admins (
    user_key TEXT PRIMARY KEY,
    added_at REAL NOT NULL
);

-- chats and conversations point at each other; the checks are deferred to COMMIT so a
-- chat and its first conversation can be created in one transaction.
CREATE TABLE chats (
    key TEXT PRIMARY KEY,
    platform TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    active_conversation_id TEXT NOT NULL
        REFERENCES conversations(id) DEFERRABLE INITIALLY DEFERRED,
    persona TEXT,
    created_at REAL NOT NULL
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    chat_key TEXT NOT NULL REFERENCES chats(key) DEFERRABLE INITIALLY DEFERRED,
    created_at REAL NOT NULL,
    ended_at REAL,
    forgotten INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_chat ON conversations(chat_key);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    user_key TEXT NOT NULL,
    user_platform TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_display_name TEXT NOT NULL,
    chat_key TEXT NOT NULL,
    chat_platform TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    delivery TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_state ON jobs(state, created_at);
CREATE INDEX jobs_user ON jobs(user_key, state);

CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    job_id TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at REAL NOT NULL
);
CREATE INDEX turns_conversation ON turns(conversation_id, created_at, id);
CREATE INDEX turns_job ON turns(job_id);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    job_id TEXT,
    user_key TEXT NOT NULL,
    path TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX images_job ON images(job_id);
CREATE INDEX images_user ON images(user_key, created_at);

CREATE TABLE limit_overrides (
    user_key TEXT PRIMARY KEY,
    chat_per_window INTEGER,
    images_per_day INTEGER,
    updated_at REAL NOT NULL
);

CREATE TABLE usage (
    id INTEGER PRIMARY KEY,
    user_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX usage_user_kind_at ON usage(user_key, kind, at);

-- one row that ping() rewrites: proves the database accepts writes, not just reads
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
INSERT INTO heartbeat (id, at) VALUES (1, 0);
"""

# Chat settings beside the persona, blocked users, and delivery bookkeeping: a platform
# adapter marks a reply delivered, so after a restart it re-posts only what is not.
_V2_ADAPTER_API = """
ALTER TABLE chats ADD COLUMN reasoning_mode TEXT;
ALTER TABLE chats ADD COLUMN image_defaults TEXT;

CREATE TABLE blocked_users (
    user_key TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_at REAL NOT NULL
);

ALTER TABLE jobs ADD COLUMN delivered_at REAL;
CREATE INDEX jobs_undelivered ON jobs(chat_platform, delivered_at, created_at);
"""

# Platform updates an adapter accepted, kept until handled: Telegram counts an update
# as delivered once the next getUpdates asks past it, which happens before its handler
# ran; a row here lets the next start replay what a crash interrupted, and a handled
# row makes a second delivery of the same update a no-op.
_V3_PLATFORM_UPDATES = """
CREATE TABLE platform_updates (
    platform TEXT NOT NULL,
    update_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    received_at REAL NOT NULL,
    handled_at REAL,
    PRIMARY KEY (platform, update_id)
);
CREATE INDEX platform_updates_handled ON platform_updates(platform, handled_at);
"""

# An update whose handling kills the process would be replayed at every start forever:
# ``attempts`` is counted (committed) before each try, and past the bound the update is
# given up (``abandoned_at``, also handled). ``replies`` holds the one-off replies its
# handler produced (adapter JSON), committed with ``handled_at`` and cleared once sent:
# a crash between the two no longer loses them, the next start sends them.
_V4_UPDATE_ATTEMPTS_AND_REPLIES = """
ALTER TABLE platform_updates ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE platform_updates ADD COLUMN abandoned_at REAL;
ALTER TABLE platform_updates ADD COLUMN replies TEXT;
CREATE INDEX platform_updates_unsent ON platform_updates(platform, update_id) WHERE replies IS NOT NULL;
"""

MIGRATIONS: tuple[Migration, ...] = (
    (1, _V1_INITIAL),
    (2, _V2_ADAPTER_API),
    (3, _V3_PLATFORM_UPDATES),
    (4, _V4_UPDATE_ATTEMPTS_AND_REPLIES),
)


class SchemaVersionError(OvbotError):
    """The database was written by a newer ovbot; running old code on it could corrupt it."""

    kind = "store_schema"


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1][0] if migrations else 0


def check_migrations(migrations: Sequence[Migration]) -> None:
    """Catch a mis-numbered list at start instead of half-applying it to a user's data."""
    for expected, (version, _script) in enumerate(migrations, start=1):
        if version != expected:
            raise ValueError(f"migration versions must be 1, 2, 3, ... (got {version} at position {expected})")


def split_statements(script: str) -> list[str]:
    """Split a script into statements, respecting ';' inside literals and triggers.

    ``executescript`` cannot be used: it commits any open transaction first, which would
    break the one-transaction-per-migration guarantee.
    """
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    rest = current[:-1]  # the last piece got a ';' the script did not have
    if rest.strip() and not _only_comments(rest):
        statements.append(rest)
    return [s for s in statements if not _only_comments(s)]


def _only_comments(sql: str) -> bool:
    lines = (line.strip() for line in sql.strip().rstrip(";").splitlines())
    return all(not line or line.startswith("--") for line in lines)


async def schema_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def apply_migrations(
    conn: aiosqlite.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    db_label: str = "the database",
) -> int:
    """Bring the schema up to date; returns the resulting version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the explicit
    ``BEGIN IMMEDIATE`` below is the only transaction. The version is re-read under the
    write lock, so two processes starting at once do not apply the same migration twice.
    """
    check_migrations(migrations)
    latest = latest_version(migrations)
    _refuse_newer(await schema_version(conn), latest, db_label)
    for version, script in migrations:
        await _apply_one(conn, version, script, latest, db_label)
    return await schema_version(conn)


async def _apply_one(conn: aiosqlite.Connection, version: int, script: str, latest: int, db_label: str) -> None:
    try:  # BEGIN inside: if the await is cancelled, the thread still runs it
        await conn.execute("BEGIN IMMEDIATE")
        current = await schema_version(conn)
        _refuse_newer(current, latest, db_label)
        if current < version:
            for statement in split_statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {int(version)}")
        await conn.execute("COMMIT")
    except BaseException:
        await rollback_quietly(conn)
        raise


def _refuse_newer(found: int, latest: int, db_label: str) -> None:
    if found > latest:
        raise SchemaVersionError(
            f"{db_label} has schema version {found}, but this ovbot only knows versions up to "
            f"{latest}: it was written by a newer ovbot. Upgrade ovbot, or point it at another "
            "database file; the file was left untouched."
        )


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    """Roll back whatever is open; also safe when the failure already ended it."""
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # SQLite already rolled back (or COMMIT went through): nothing is open
