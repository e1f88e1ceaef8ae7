"""What "the database stays consistent" means after a storm of bad input, checked on the
SQLite file itself (read-only, beside the running App): the file is sound, every
reference resolves, no job is left queued or running, and every usage charge belongs to
a job that was accepted and run (a refused request is never charged, a job cancelled
before it started is refunded)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

from ovbot.core.app import App


def store_problems(db_path: Path, data_dir: Path) -> list[str]:
    """Every inconsistency found; empty when the store is sound (image paths are
    relative to ``data_dir``)."""
    problems: list[str] = []
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity[:5]}")
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            problems.append(f"foreign keys: {broken[:5]}")
        stuck = conn.execute("SELECT id, kind, state FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        if stuck:
            problems.append(f"stuck jobs: {stuck[:5]}")
        orphans = conn.execute(
            "SELECT id FROM images WHERE job_id IS NOT NULL AND job_id NOT IN (SELECT id FROM jobs)"
        ).fetchall()
        if orphans:
            problems.append(f"images without their job: {orphans[:5]}")
        missing_files = [row[0] for row in conn.execute("SELECT path FROM images") if not (data_dir / row[0]).is_file()]
        if missing_files:
            problems.append(f"image rows without a file: {len(missing_files)}")
        charged = Counter(conn.execute("SELECT user_key, kind FROM usage").fetchall())
        run = Counter(conn.execute("SELECT user_key, kind FROM jobs WHERE attempts > 0").fetchall())
        if charged != run:
            problems.append(f"usage differs from jobs run: charged-not-run {charged - run}, run-not-charged {run - charged}")
        uncharged_at = conn.execute(
            "SELECT u.user_key, u.kind FROM usage u WHERE NOT EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.user_key = u.user_key AND j.kind = u.kind AND j.created_at = u.at)"
        ).fetchall()
        if uncharged_at:
            problems.append(f"usage rows of no job: {uncharged_at[:5]}")
    return problems


def job_counts(db_path: Path) -> dict[str, int]:
    """Jobs by final state, for the report's figures."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        return {str(state): int(n) for state, n in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")}


async def queue_idle(app: App, timeout: float = 120.0) -> None:
    """Wait (bounded) until nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while any(app.queue.depth().values()):
        assert time.monotonic() < deadline, f"the queue did not drain: {app.queue.depth()}"
        await asyncio.sleep(0.05)
