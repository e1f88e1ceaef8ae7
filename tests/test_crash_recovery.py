"""Crashes and signals, as they happen to a real ``ovbot serve`` (and ``ovbot chat``):
subprocesses on the tiny models, real signals, and the SQLite file read afterwards.

* the engine worker dies once: the job it was running runs again, the waiting ones wait
  for the restart instead of failing, a chat sent during the restart is answered;
* the engine cannot come back (restart budget spent): waiting jobs fail saying so and
  ``/ready`` says why;
* SIGTERM/SIGINT to the whole process group (systemd's stop, Ctrl-C): the running job
  ends done or re-queued, never failed; ``ovbot chat`` prints no worker traceback;
* kill -9: on restart the job that was running runs first and at once, not after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_serve import START_TIMEOUT_S, Server, ovbot_serve, serve_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, signals process groups")

TERMINAL = ("done", "failed", "cancelled")


def read_jobs(db: Path) -> dict[str, dict[str, Any]]:
    """The jobs as the bot committed them (read-only; WAL lets us read while it runs)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT id, kind, state, attempts, error, started_at, finished_at FROM jobs").fetchall()
    return {row["id"]: dict(row) for row in rows}


def jobs_of(served: Server) -> dict[str, dict[str, Any]]:
    return read_jobs(served.data_dir / "ovbot.db")


@contextlib.asynccontextmanager
async def serve(tiny_models: Any, workdir: Path, *args: str, **env: str) -> AsyncIterator[Server]:
    """``ovbot serve`` in a process group of its own, ready."""
    env = {"OVBOT_LOG_LEVEL": "INFO", **env}
    async with ovbot_serve(tiny_models, workdir, *args, new_session=True, **env) as served:
        await served.wait_ready()
        yield served


async def submit_image(client: httpx.AsyncClient, user: str, steps: int) -> str:
    accepted = await client.post("/images", json={"user_id": user, "prompt": "a lighthouse", "steps": steps})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["job_id"])


async def until_running(served: Server, job_id: str, timeout: float = 60.0) -> None:
    """Until the job runs (and had a moment to make progress in the engine)."""
    deadline = time.monotonic() + timeout
    while jobs_of(served).get(job_id, {}).get("state") != "running":
        assert time.monotonic() < deadline, jobs_of(served).get(job_id)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def until_ended(served_or_db: Server | Path, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(served_or_db) if isinstance(served_or_db, Server) else read_jobs(served_or_db)
        if all(jobs.get(i, {}).get("state") in TERMINAL for i in ids):
            return jobs
        assert time.monotonic() < deadline, {i: jobs.get(i) for i in ids}
        await asyncio.sleep(0.1)


def engine_worker_pid(server_pid: int) -> int:
    """The engine worker: the server's child started by multiprocessing's spawn."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return int(child)
    raise AssertionError("no engine worker found")


# ---------------------------------------------------------------------- worker crash
async def test_one_worker_crash_loses_no_job_and_refuses_no_request(tiny_models: Any, tmp_path: Path) -> None:
    async with serve(tiny_models, tmp_path) as served:
        async with served.client() as client:
            ids = [await submit_image(client, f"user-{i % 3}", steps=150) for i in range(6)]
            await until_running(served, ids[0])
            os.kill(engine_worker_pid(served.process.pid), signal.SIGKILL)
            await asyncio.sleep(0.2)  # the restart takes seconds: this chat arrives during it
            chat = await client.post("/chat", json={"user_id": "late", "message": "are you there?"})
            assert chat.status_code == 200, chat.text
            jobs = await until_ended(served, ids, timeout=180)

    assert {jobs[i]["state"] for i in ids} == {"done"}, {i: jobs[i] for i in ids}
    assert jobs[ids[0]]["attempts"] == 2  # interrupted once, ran again
    assert [jobs[i]["attempts"] for i in ids[1:]] == [1] * 5  # nobody started against a dead engine
    # it kept its place: it ran again before every job that waited behind it
    assert all(jobs[ids[0]]["started_at"] < jobs[i]["started_at"] for i in ids[1:])


async def test_when_the_engine_cannot_come_back_waiting_jobs_fail_saying_so(tiny_models: Any, tmp_path: Path) -> None:
    async with serve(tiny_models, tmp_path, OVBOT_WORKER_MAX_RESTARTS="0") as served:
        async with served.client() as client:
            ids = [await submit_image(client, f"user-{i}", steps=400) for i in range(3)]
            await until_running(served, ids[0])
            os.kill(engine_worker_pid(served.process.pid), signal.SIGKILL)
            jobs = await until_ended(served, ids, timeout=60)
            ready = await client.get("/ready")
            refused = await client.post("/images", json={"user_id": "user-9", "prompt": "x", "steps": 2})

    for job_id in ids:
        assert jobs[job_id]["state"] == "failed"
        assert "could not be restarted" in jobs[job_id]["error"], jobs[job_id]["error"]
    assert ready.status_code == 503 and "restart ovbot" in ready.text, ready.text
    assert refused.status_code == 503, refused.text


# ---------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_to_the_process_group_never_fails_the_running_job(
    tiny_models: Any, tmp_path: Path, signum: int
) -> None:
    async with serve(tiny_models, tmp_path, "--grace", "0.5") as served:
        async with served.client() as client:
            job_id = await submit_image(client, "yan", steps=500)
        await until_running(served, job_id)
        served.signal_group(signum)
        assert await asyncio.wait_for(served.process.wait(), 60) == 0, served.output[-3000:]
        jobs = jobs_of(served)

    assert jobs[job_id]["state"] in ("queued", "done"), jobs[job_id]
    assert "Traceback" not in served.output and "KeyboardInterrupt" not in served.output, served.output[-3000:]


async def test_ctrl_c_in_ovbot_chat_prints_no_worker_traceback(tiny_models: Any, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ovbot.bots.cli", "chat",
        cwd=tmp_path,
        env=serve_env(tiny_models, tmp_path / "data", OVBOT_LOG_LEVEL="INFO"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stdin is not None
    seen: list[str] = []
    try:
        async def until_banner() -> None:
            async for raw in process.stdout:  # type: ignore[union-attr]
                seen.append(raw.decode(errors="replace"))
                if "ovbot chat" in seen[-1]:
                    return

        await asyncio.wait_for(until_banner(), START_TIMEOUT_S)
        worker = engine_worker_pid(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        await asyncio.sleep(1.0)
        process.stdin.close()
        rest = await asyncio.wait_for(process.stdout.read(), 60)
        await asyncio.wait_for(process.wait(), 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    output = "".join(seen) + rest.decode(errors="replace")
    for frame in ("spawn_main", "worker_main", "llm_loop", "image_process", "multiprocessing/"):
        assert frame not in output, output
    assert not alive(worker), "the engine worker outlived ovbot chat"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(FileNotFoundError):
        return "\tZ" not in status.read_text().splitlines()[1]
    return False


# ---------------------------------------------------------------------- kill -9
async def test_after_kill_9_the_running_job_runs_first_without_waiting_for_its_lease(
    tiny_models: Any, tmp_path: Path
) -> None:
    async with serve(tiny_models, tmp_path, OVBOT_JOB_LEASE_S="60") as served:
        async with served.client() as client:
            job_id = await submit_image(client, "yan", steps=400)
            await until_running(served, job_id)
            behind = await submit_image(client, "zoe", steps=2)  # queued after it, behind it
        served.signal_group(signal.SIGKILL)
        await served.process.wait()
        jobs = jobs_of(served)
    assert jobs[job_id]["state"] == "running" and jobs[behind]["state"] == "queued"

    restarted_at = time.monotonic()
    async with serve(tiny_models, tmp_path, OVBOT_JOB_LEASE_S="60") as again:
        jobs = await until_ended(again, [job_id, behind], timeout=40)
        took = time.monotonic() - restarted_at

    assert jobs[job_id]["state"] == "done" and jobs[job_id]["attempts"] == 2
    assert jobs[behind]["state"] == "done"
    assert jobs[job_id]["started_at"] < jobs[behind]["started_at"]  # its place in line kept
    assert took < 40  # the lease (60 s) did not have to expire
