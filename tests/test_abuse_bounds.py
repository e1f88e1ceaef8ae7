"""Every bound a user controls, hit on the real HTTP server (``HttpAdapter`` as ``ovbot
serve`` builds it) and, where users see it, on Telegram and Discord through their fakes.
Each refusal must say why (the bound, with its value) and when to retry (``Retry-After``
on HTTP, the wait in the text on the chat platforms); a refused request queues and
charges nothing. The bounds are listed in docs/abuse-bounds.md.

The model is the fake OpenAI-compatible server (tests/fakes/fake_openai.py): it answers
at once or holds a job for as long as a test needs, so these tests take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ovbot.adapters.http.auth import key_id
from ovbot.adapters.http.stream_slots import STREAM_RETRY_S
from ovbot.core.domain import ChatRef, LimitOverride
from ovbot.core.engines.remote import CHAT_PATH
from ovbot.core.prompts import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser
from tests.fakes.fake_openai import ChatScript, FakeOpenAIServer
from tests.fakes.fake_telegram import FakeTelegram
from tests.fixtures_remote import (
    API_KEY,
    DISCORD_CHANNEL,
    DISCORD_GUILD,
    OTHER_API_KEY,
    REMOTE_KEY,
    answer,
    discord_adapter,
    platform_settings,
    remote_settings,
    serving,
    telegram_adapter,
)

#: a model request that is answered only when the test ends (a job that stays running)
HELD = ChatScript(headers_delay_s=60)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=REMOTE_KEY) as server:
        server.chat = answer("Fine, thanks.")
        yield server


def refusal(response: httpx.Response, status: int, kind: str) -> str:
    """The error message of a JSON refusal, after checking its status, kind and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["kind"] == kind, error
    return str(error["message"])


def retry_after(response: httpx.Response) -> int:
    value = int(response.headers["retry-after"])
    assert value >= 1
    return value


def http_user(name: str, key: str = API_KEY) -> str:
    return f"http:{key_id(key)}:{name}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- HTTP transport bounds


async def test_event_streams_per_key_are_bounded_and_freed_when_a_client_hangs_up(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    async with serving(remote_settings(fake, tmp_path, http_max_streams_per_key=2)) as served:
        fake.chat = HELD
        client = served.client
        async with contextlib.AsyncExitStack() as streams:

            async def open_stream(method: str, url: str, **kwargs: Any) -> httpx.Response:
                response = await streams.enter_async_context(client.stream(method, url, **kwargs))
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                return response

            first = await open_stream("POST", "/chat?stream=true", json={"user_id": "ann", "message": "one"})
            job_id = first.headers["x-job-id"]
            await open_stream("GET", f"/jobs/{job_id}/events")  # following a job holds a slot too

            refused = await client.post("/chat?stream=true", json={"user_id": "carl", "message": "three"})
            message = refusal(refused, 429, "too_many_streams")
            assert "already has 2 event streams open (the limit is 2)" in message
            assert f"try again in ~{STREAM_RETRY_S:g} s" in message
            assert retry_after(refused) == STREAM_RETRY_S
            assert served.app.queue.live_jobs_of(http_user("carl")) == []  # nothing queued, nothing charged
            assert (await client.get("/usage", params={"user_id": "carl"})).json()["chat"]["used"] == 0
            refusal(await client.get(f"/jobs/{job_id}/events"), 429, "too_many_streams")
            assert (await client.get(f"/jobs/{job_id}")).status_code == 200  # plain requests still pass

            async with served.client_for(OTHER_API_KEY) as other:  # the bound is per key
                async with other.stream("POST", "/chat?stream=true", json={"user_id": "ann", "message": "hi"}) as own:
                    assert own.status_code == 200

            await streams.aclose()  # both clients hang up: their slots come back

        async def slot_free() -> bool:
            async with client.stream("GET", f"/jobs/{job_id}/events") as again:
                return again.status_code == 200

        await eventually(slot_free)


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """Clients that connect and send nothing (held by the server until their headers'
    deadline)."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


async def test_connection_limit_refuses_with_a_json_503_and_retry_after(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    settings = remote_settings(fake, tmp_path, http_max_connections=4, http_keep_alive_s=2, http_header_timeout_s=30)
    async with serving(settings) as served:
        port = int(served.url.rsplit(":", 1)[1])
        held = idle_connections(port, 3)
        try:
            await asyncio.sleep(0.3)  # accepted by the server
            async with served.client_for(None) as newcomer:
                busy = await newcomer.get("/health")
                message = refusal(busy, 503, "server_busy")
                assert message == "The server has too many open connections (the limit is 4). Try again in ~2 s."
                assert retry_after(busy) == 2
                assert busy.headers["connection"] == "close"  # the refused socket is freed at once
        finally:
            for sock in held:
                sock.close()

        async def served_again() -> bool:
            async with served.client_for(None) as newcomer:
                return (await newcomer.get("/health")).status_code == 200

        await eventually(served_again)


# ---------------------------------------------------------------- input bounds


async def test_input_bounds_name_the_limit_and_cost_nothing(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    settings = remote_settings(
        fake, tmp_path, max_message_chars=100, max_persona_chars=50, image_max_prompt_chars=60, image_max_steps=8
    )
    async with serving(settings) as served:
        client = served.client
        cases: list[tuple[str, dict[str, Any], int, str, str]] = [
            ("/chat", {"message": "m" * 101}, 400, "invalid_input", "is 101 characters long; the limit is 100"),
            ("/chat", {"message": "   "}, 400, "invalid_input", "message: is empty"),
            ("/persona", {"persona": "p" * 51}, 400, "invalid_input", "is 51 characters long; the limit is 50"),
            ("/images", {"prompt": "q" * 61}, 422, "bad_parameter", "is 61 characters; the limit is 60"),
            ("/images", {"prompt": "cat", "negative_prompt": "n" * 61}, 422, "bad_parameter", "the limit is 60"),
            ("/images", {"prompt": "cat", "steps": 9}, 422, "bad_parameter", "must be between 1 and 8 (got 9)"),
            ("/images", {"prompt": "cat", "steps": -1}, 422, "bad_parameter", "must be between 1 and 8 (got -1)"),
            ("/images", {"prompt": "cat", "cfg": 21.0}, 422, "bad_parameter", "must be between 1 and 20 (got 21)"),
            (
                "/images",
                {"prompt": "cat", "width": 4096, "height": 4096},
                422,
                "bad_parameter",
                "4096x4096 is not allowed; choose one of 64x64, 128x128",
            ),
            ("/images", {"prompt": "cat", "n": 4}, 422, "validation", "n: unknown field"),  # one picture a request
            ("/chat", {"message": "a cat", "image": {"steps": 50}}, 422, "bad_parameter", "between 1 and 8"),
        ]
        for path, body, status, kind, reason in cases:
            message = refusal(await client.post(path, json={"user_id": "ivy", **body}), status, kind)
            assert reason in message, (path, body, message)
        huge = await client.post("/chat", content=b"x" * 600_000, headers={"content-type": "application/json"})
        assert refusal(huge, 413, "payload_too_large") == "The request body is larger than 512 KiB."

        usage = (await client.get("/usage", params={"user_id": "ivy"})).json()
        assert usage["chat"]["used"] == 0 and usage["image"]["used"] == 0
        assert not await served.app.store.get_persona(ChatRef("http", f"{key_id(API_KEY)}:ivy"))
        assert fake.calls_to("/v3/images/generations") == []


async def test_history_in_the_prompt_is_trimmed_to_its_turns_and_token_budget(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    budget = 300
    async with serving(remote_settings(fake, tmp_path, history_turns=4, history_token_budget=budget)) as served:

        async def say(text: str) -> list[dict[str, str]]:
            """Send ``text``; the history the model was given with it."""
            response = await served.client.post("/chat", json={"user_id": "hal", "message": text})
            assert response.status_code == 200, response.text
            return fake.calls_to(CHAT_PATH)[-1].body["messages"][1:-1]

        for n in range(4):
            history = await say(f"short message {n}")
        assert [m["content"] for m in history if m["role"] == "user"] == ["short message 1", "short message 2"]
        assert len(history) == 4  # OVBOT_HISTORY_TURNS messages, however short

        fake.chat = answer("A" * 600)  # ~176 tokens an answer: two no longer fit the budget
        await say("x" * 3000)  # ~860 tokens alone: over the budget by itself
        await say("tell me more")
        history = await say("and more")
        assert history and history[0]["role"] == "user"  # never opens with an orphaned answer
        assert sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in history) <= budget
        assert all(len(m["content"]) < 3000 for m in history), "the over-long message is dropped"


# ---------------------------------------------------------------- jobs and rate limits


async def test_queue_and_rate_limits_say_why_and_when_to_retry(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    settings = remote_settings(fake, tmp_path, max_queued_per_user=2, max_queued_total=3, max_running_chat=1)
    async with serving(settings) as served:
        client, store = served.client, served.app.store
        fake.image_delay_s = 60  # the first picture keeps the image lane busy

        await store.set_limit_override(LimitOverride(http_user("dan"), chat_per_window=1, images_per_day=1))
        assert (await client.post("/images", json={"user_id": "dan", "prompt": "first"})).status_code == 202
        over = await client.post("/images", json={"user_id": "dan", "prompt": "second"})
        assert refusal(over, 429, "rate_limited") == "You reached your limit of 1 images per day. Try again in 24 h."
        assert abs(retry_after(over) - 24 * 3600) <= 2
        assert (await client.post("/chat", json={"user_id": "dan", "message": "hi"})).status_code == 200
        chat_over = await client.post("/chat", json={"user_id": "dan", "message": "again"})
        assert refusal(chat_over, 429, "rate_limited") == "You reached your limit of 1 chat messages per hour. Try again in 1 h."
        assert abs(retry_after(chat_over) - 3600) <= 2

        for n in range(2):  # wait behind dan's picture
            assert (await client.post("/images", json={"user_id": "amy", "prompt": f"p{n}"})).status_code == 202
        mine = await client.post("/images", json={"user_id": "amy", "prompt": "one more"})
        wait = retry_after(mine)
        assert refusal(mine, 429, "queue_full") == (
            f"You already have 2 requests waiting. Please try again in ~{wait} s."
        )
        assert (await client.post("/images", json={"user_id": "bob", "prompt": "mine"})).status_code == 202
        everyone = await client.post("/chat", json={"user_id": "cy", "message": "hello?"})
        wait = retry_after(everyone)
        assert refusal(everyone, 429, "queue_full") == f"The bot is busy. Please try again in ~{wait} s."
        usage = (await client.get("/usage", params={"user_id": "cy"})).json()
        assert usage["chat"]["used"] == 0  # refused by the queue: not charged


# ---------------------------------------------------------------- on Telegram and Discord

WAIT = re.compile(r"Please try again in ~(\d+) s\.$")


@pytest.fixture
async def platforms(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeTelegram, FakeDiscord]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    telegram = FakeTelegram()
    await telegram.start()
    try:
        async with FakeDiscord(guilds={DISCORD_GUILD: [DISCORD_CHANNEL]}) as discord:
            yield telegram, discord
            assert discord.violations == [] and discord.pings == []
        telegram.assert_clean()
    finally:
        await telegram.stop()


async def telegram_refusal(telegram: FakeTelegram, chat_id: int) -> str:
    """The bot's first refusal in the chat (the wait sign starts queue notes too)."""
    refusals = await telegram.wait_until(
        lambda: [m.body for m in telegram.bot_messages(chat_id) if WAIT.search(m.body)], timeout=20, what="a refusal"
    )
    return refusals[0]


async def discord_refusal(discord: FakeDiscord, token: str) -> str:
    def answered() -> FakeMessage | None:
        return next((m for m in discord.replies_to(token) if m.ephemeral and m.content), None)

    message: FakeMessage = await discord.wait_for(answered, 20, what="an ephemeral refusal")
    return message.content


async def test_chat_platforms_say_why_and_how_long_to_wait_when_the_queue_is_full(
    fake: FakeOpenAIServer, platforms: tuple[FakeTelegram, FakeDiscord], tmp_path: Path
) -> None:
    telegram, discord = platforms
    settings = platform_settings(fake, telegram, discord, tmp_path, max_queued_per_user=2, max_queued_total=4)
    async with serving(settings) as served, telegram_adapter(served.app), discord_adapter(served.app):
        fake.image_delay_s = 60  # the first picture keeps the image lane busy
        ann, ben = telegram.person(7301, "Ann"), telegram.person(7302, "Ben")
        ann_chat, ben_chat = telegram.private_chat(ann), telegram.private_chat(ben)
        for n in range(3):  # one runs, two wait
            telegram.say(ann_chat, ann, f"/imagine picture {n}")
            await telegram.wait_until(
                lambda: len(served.app.queue.live_jobs_of("telegram:7301")) == n + 1, what=f"picture {n} queued"
            )
        telegram.say(ann_chat, ann, "/imagine one too many")
        ann_refused = await telegram_refusal(telegram, ann_chat["id"])
        assert ann_refused.startswith("⏳ You already have 2 requests waiting.") and WAIT.search(ann_refused), ann_refused

        dora = FakeUser(9301, "dora")
        for n in range(2):
            started = await discord.slash("imagine", {"prompt": f"dora {n}"}, user=dora, channel_id=DISCORD_CHANNEL)
            await discord.wait_for(lambda: discord.replies_to(started.token), 20, what="the picture's status")
        dora_refused = await discord_refusal(
            discord, (await discord.slash("imagine", {"prompt": "dora 2"}, user=dora, channel_id=DISCORD_CHANNEL)).token
        )
        assert dora_refused.startswith("⏳ You already have 2 requests waiting.") and WAIT.search(dora_refused)

        telegram.say(ben_chat, ben, "/imagine mine")  # four wait now: the bot is full for everyone
        assert WAIT.search(ben_busy := await telegram_refusal(telegram, ben_chat["id"]))
        assert ben_busy.startswith("⏳ The bot is busy."), ben_busy
        eve_refused = await discord_refusal(
            discord, (await discord.slash("chat", {"message": "hello"}, user=FakeUser(9302, "eve"), channel_id=DISCORD_CHANNEL)).token
        )
        assert eve_refused.startswith("⏳ The bot is busy.") and WAIT.search(eve_refused), eve_refused
        assert served.app.queue.depth()["image_queued"] == 4


async def test_chat_platforms_name_the_length_bounds(
    fake: FakeOpenAIServer, platforms: tuple[FakeTelegram, FakeDiscord], tmp_path: Path
) -> None:
    telegram, discord = platforms
    settings = platform_settings(
        fake, telegram, discord, tmp_path, max_message_chars=100, max_persona_chars=50, image_max_prompt_chars=60
    )
    async with serving(settings) as served, telegram_adapter(served.app), discord_adapter(served.app):
        uma = telegram.person(7311, "Uma")
        chat = telegram.private_chat(uma)
        expected = [
            ("m" * 101, "⚠️ message: is 101 characters long; the limit is 100"),
            ("/persona " + "p" * 51, "⚠️ persona: is 51 characters long; the limit is 50"),
            ("/imagine " + "q" * 61, "⚠️ prompt: is 61 characters; the limit is 60"),
        ]
        for n, (text, reply) in enumerate(expected, start=1):
            telegram.say(chat, uma, text)
            answers = await telegram.wait_until(
                lambda: telegram.texts(chat["id"])[n - 1 : n], timeout=20, what=f"the answer to {text[:12]!r}"
            )
            assert answers == [reply]
        assert served.app.queue.live_jobs_of("telegram:7311") == []

        # Discord's own client enforces the same bounds: the options are registered with them
        commands = {c["name"]: c for c in discord.commands[str(DISCORD_GUILD)]}
        options = {(c, o["name"]): o for c in commands for o in commands[c].get("options", [])}
        assert options[("chat", "message")]["max_length"] == 100
        assert options[("persona", "text")]["max_length"] == 50
        assert options[("imagine", "prompt")]["max_length"] == 60
        assert options[("imagine", "negative")]["max_length"] == 60
