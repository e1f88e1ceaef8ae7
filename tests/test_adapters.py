"""Adapters on the facade: the in-memory test adapter drives the real core the way the
Telegram and Discord adapters will (live replies, one error reply per refusal,
re-delivery after a restart), and ``serve`` runs several adapters, reports each in
/ready and /health, and stops everything with one line when one cannot start."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ovbot.adapters.base import Adapter, AdapterBase
from ovbot.bots.serve import ServeError, serve
from ovbot.core.app import Check
from ovbot.core.bot import Bot
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, LimitOverride, UserRef
from tests.fakes.memory_adapter import PLATFORM, MemoryAdapter
from tests.fixtures_app import bot_settings, running_app
from tests.test_bot import ADMIN

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_memory_adapter_chats_draws_and_explains_refusals(tiny_models: Any, tmp_path: Path) -> None:
    async with running_app(bot_settings(tiny_models, tmp_path)) as app:
        adapter = MemoryAdapter(app.bot)
        async with adapter:
            await adapter.receive("ann", "c1", "hello there")
            await adapter.receive("ann", "c1", "/imagine a boat --steps=2")
            await adapter.receive("ann", "c1", "/imagine a boat --steps=lots")
            await adapter.receive("ann", "c1", "/imagine a boat --steps=999")
            await adapter.receive("ann", "c1", "/frobnicate")
            await adapter.receive("ann", "c1", "/block memory:bob")
            await adapter.receive("ann", "c1", "   ")
            await adapter.idle()
            texts = [m.text for m in adapter.transcript.of("c1")]
            assert any(m.image_id for m in adapter.transcript.of("c1")), texts
            assert "⚠️ steps: must be a whole number" in texts
            assert any(t.startswith("⚠️ steps: must be between 1 and 500") for t in texts), texts
            assert any(t.startswith("Unknown command /frobnicate") for t in texts)
            assert "⚠️ Only the bot's admins can do that." in texts
            assert "⚠️ message: is empty; write something to send" in texts
            # the streamed reply ended as its final text: no status line left behind
            reply = adapter.transcript.of("c1")[0]
            assert reply.text and "⏳" not in reply.text and "💭" not in reply.text

            await app.store.set_limit_override(LimitOverride(f"{PLATFORM}:ann", chat_per_window=1))
            await adapter.receive("ann", "c1", "once more")
            await adapter.idle()
            assert adapter.transcript.of("c1")[-1].text.startswith("⏳ You reached your limit of 1 chat messages")

            await adapter.receive(ADMIN.user_id, "c2", "/block memory:ann")
            await adapter.receive("ann", "c2", "let me in")
            assert adapter.transcript.of("c2")[-1].text == "⚠️ You have been blocked from using this bot."


async def test_a_reply_finished_while_the_adapter_was_down_is_posted_once(tiny_models: Any, tmp_path: Path) -> None:
    settings = bot_settings(tiny_models, tmp_path)
    async with running_app(settings) as app:
        # the user's message was accepted, then the platform side went away before posting
        handle = await app.bot.submit_turn(UserRef(PLATFORM, "ann"), ChatRef(PLATFORM, "c9"), "answer me later")
        async for _ in handle:
            pass
    for attempt in range(2):  # two restarts: posted by the first only
        async with running_app(settings) as app:
            adapter = MemoryAdapter(app.bot)
            async with adapter:
                await adapter.idle()
            posted = adapter.transcript.of("c9")
            assert len(posted) == (1 if attempt == 0 else 0), posted
            if attempt == 0:
                assert posted[0].text.strip()


# ---------------------------------------------------------------- serve


class ProbeAdapter(AdapterBase):
    """Records its lifecycle into a shared log; fails at start when asked to."""

    def __init__(self, name: str, log: list[str], *, fail: bool = False) -> None:
        self.name = name
        self._log = log
        self._fail = fail
        self._up = False

    async def start(self) -> None:
        self._log.append(f"start {self.name}")
        if self._fail:
            raise ConnectionRefusedError("the platform refused the connection")
        self._up = True

    async def stop(self) -> None:
        self._log.append(f"stop {self.name}")
        self._up = False

    def health(self) -> Check:
        return Check(self._up, "connected" if self._up else "stopped")


def serve_settings(tiny_models: Any, tmp_path: Path, port: int) -> Settings:
    return bot_settings(tiny_models, tmp_path, http_host="127.0.0.1", http_port=port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_serve_runs_every_adapter_and_reports_each(tiny_models: Any, tmp_path: Path) -> None:
    log: list[str] = []
    port = free_port()

    def adapters(bot: Bot, settings: Settings) -> Sequence[Adapter]:
        return [ProbeAdapter("alpha", log), ProbeAdapter("beta", log)]

    serving = asyncio.create_task(serve(serve_settings(tiny_models, tmp_path, port), grace_s=1, adapters=adapters))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(600):
            try:
                ready = await client.get("/ready")
                if ready.status_code == 200 and "adapter_beta" in ready.json()["checks"]:
                    break
            except httpx.TransportError:
                pass
            assert not serving.done(), serving
            await asyncio.sleep(0.05)
        checks = ready.json()["checks"]
        assert {k: v["ok"] for k, v in checks.items() if k.startswith("adapter_")} == {
            "adapter_http": True,
            "adapter_alpha": True,
            "adapter_beta": True,
        }
        health = (await client.get("/health")).json()
        assert set(health["adapters"]) == {"http", "alpha", "beta"}
    os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler takes it
    assert await asyncio.wait_for(serving, 60) == 0
    assert log == ["start alpha", "start beta", "stop beta", "stop alpha"]


async def test_an_adapter_that_cannot_start_stops_everything_with_one_line(
    tiny_models: Any, tmp_path: Path
) -> None:
    log: list[str] = []
    port = free_port()

    def adapters(bot: Bot, settings: Settings) -> Sequence[Adapter]:
        return [ProbeAdapter("alpha", log), ProbeAdapter("broken", log, fail=True), ProbeAdapter("never", log)]

    with pytest.raises(ServeError) as info:
        await asyncio.wait_for(serve(serve_settings(tiny_models, tmp_path, port), adapters=adapters), 120)
    message = info.value.user_message
    assert message.startswith("The broken adapter could not start:") and "refused the connection" in message
    assert "\n" not in message
    assert log == ["start alpha", "start broken", "stop alpha"]
    with socket.socket() as probe:  # the HTTP adapter stopped and the port is free again
        probe.bind(("127.0.0.1", port))
