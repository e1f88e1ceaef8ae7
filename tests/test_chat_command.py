"""``ovbot chat`` goes through the same facade as every platform: the turns land in the
store (with limits and the answer grammar), /think and /reset work, and refusals are
one clear line, not a traceback."""

from __future__ import annotations

import asyncio
import getpass
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_serve import serve_env


async def run_chat(tiny_models: Any, workdir: Path, *messages: str, **env: str) -> tuple[int, str]:
    arguments = [arg for message in messages for arg in ("-m", message)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ovbot.bots.cli", "chat", *arguments,
        cwd=workdir,
        env={**serve_env(tiny_models, workdir / "data"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.asyncio
async def test_terminal_chat_uses_the_store_and_the_chat_settings(tiny_models: Any, tmp_path: Path) -> None:
    code, output = await run_chat(tiny_models, tmp_path, "/think off", "hello there", "/reset", "and again")
    assert code == 0, output
    assert "(reasoning: off)" in output and "(new conversation)" in output
    assert output.count("ovbot> ") == 2, output
    assert "Traceback" not in output
    with sqlite3.connect(tmp_path / "data" / "ovbot.db") as db:
        rows = db.execute("SELECT user_key, state, json_extract(payload, '$.reasoning') FROM jobs").fetchall()
        turns = db.execute("SELECT role, content FROM turns ORDER BY id").fetchall()
    user_key = f"cli:{getpass.getuser()}"
    assert rows == [(user_key, "done", "off"), (user_key, "done", "off")]
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0][1] == "hello there"


@pytest.mark.asyncio
async def test_terminal_chat_refusal_is_one_line(tiny_models: Any, tmp_path: Path) -> None:
    code, output = await run_chat(
        tiny_models, tmp_path, "hello", OVBOT_CHAT_TURNS_PER_WINDOW="0", OVBOT_LOG_LEVEL="WARNING"
    )
    assert code == 0, output
    assert "[forbidden] Chat is turned off on this bot." in output
    assert "Traceback" not in output
