"""The whole bot on the remote engine, for tests that must script the model's output
exactly or hold a job for as long as they like: the real App (store, queue, limits,
facade) talks to the fake OpenAI-compatible server (an edge we do not own), and the
HTTP API is served by ``HttpAdapter`` exactly as ``ovbot serve`` builds it (uvicorn
with ovbot's connection and header bounds) on a loopback socket.

Starting all of it takes well under a second: no OpenVINO, no worker process.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ovbot.adapters.discord import DiscordAdapter, DiscordOptions, build_discord_adapter
from ovbot.adapters.http.server import HttpAdapter
from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.core.app import App
from ovbot.core.chat.answer_stream import IMAGE_PROMPT_KEY, RESPONSE_KEY
from ovbot.core.config import Settings
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_openai import ChatScript, FakeOpenAIServer
from tests.fakes.fake_telegram import FakeTelegram
from tests.sentinels import API_KEY, OTHER_API_KEY, REMOTE_API_KEY

#: keys are the suite's sentinels: a test in which one reaches a log fails
REMOTE_KEY = REMOTE_API_KEY
DISCORD_GUILD = 111
DISCORD_CHANNEL = 1111


def remote_settings(fake: FakeOpenAIServer, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        _env_file=None,
        engine="remote",
        remote_base_url=fake.base_url + "/v3",
        remote_api_key=REMOTE_KEY,
        remote_llm_model=fake.llm_model,
        remote_image_model=fake.image_model,
        remote_timeout_s=60.0,
        data_dir=data_dir,
        image_sizes=["64x64", "128x128"],
        image_default_size="64x64",
        image_default_steps=2,
        api_keys=[API_KEY, OTHER_API_KEY],
    )
    values.update(overrides)
    return Settings(**values)


def platform_settings(
    fake: FakeOpenAIServer, telegram: FakeTelegram, discord: FakeDiscord, data_dir: Path, **overrides: Any
) -> Settings:
    """``remote_settings`` with the Telegram and Discord adapters pointed at their fakes
    (start the adapters with ``telegram_adapter`` and ``discord_adapter``)."""
    values: dict[str, Any] = dict(
        telegram_token=telegram.token,
        telegram_api_base=telegram.api_base,
        discord_token=discord.token,
        discord_api_base=discord.api_base,
        discord_gateway_url=discord.gateway_url,
        discord_guild_ids=[DISCORD_GUILD],
    )
    values.update(overrides)
    return remote_settings(fake, data_dir, **values)


def answer(text: str, image_prompt: str | None = None) -> ChatScript:
    """The model answers ``text`` (and asks for a picture of ``image_prompt``), in the
    JSON answer format, cut into a few pieces as a real stream would be."""
    raw = json.dumps({RESPONSE_KEY: text, IMAGE_PROMPT_KEY: image_prompt}, ensure_ascii=False)
    step = max(1, len(raw) // 5)
    return ChatScript(content=[raw[i : i + step] for i in range(0, len(raw), step)])


@dataclass
class Served:
    app: App
    url: str
    client: httpx.AsyncClient  # authenticated with API_KEY

    def client_for(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@contextlib.asynccontextmanager
async def serving(settings: Settings, *, stop_grace_s: float = 0.5) -> AsyncIterator[Served]:
    """The App started and the HTTP API listening on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = App(settings, stop_grace_s=stop_grace_s)
    await app.initialize()
    await app.start()
    http = HttpAdapter(app.bot, settings, app.metrics, sock, stop_grace_s=1.0)
    await http.start()
    try:
        async with httpx.AsyncClient(
            base_url=http.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        ) as client:
            yield Served(app, http.url, client)
    finally:
        await http.stop()
        await app.shutdown()
        sock.close()


@contextlib.asynccontextmanager
async def telegram_adapter(app: App) -> AsyncIterator[TelegramAdapter]:
    """The Telegram adapter of ``app`` polling its fake (the caller sets NO_PROXY)."""
    config = TelegramConfig.from_settings(app.settings, poll_timeout_s=1.0, stop_grace_s=1.0)
    assert config is not None, "platform_settings names the fake Telegram"
    adapter = TelegramAdapter(app.bot, config)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


@contextlib.asynccontextmanager
async def discord_adapter(app: App) -> AsyncIterator[DiscordAdapter]:
    """The Discord adapter of ``app`` connected to its fake, with short edit intervals."""
    options = DiscordOptions(edit_interval_s=0.05, guild_ready_timeout_s=0.05, stop_grace_s=1.0)
    adapter = build_discord_adapter(app.bot, app.settings, options)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()
