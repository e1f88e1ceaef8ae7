"""The model's output is untrusted text (OWASP LLM05): on no platform is it read as
markup, mentions or commands. The model is the fake OpenAI-compatible server scripted
to answer exactly ``HOSTILE`` (and to ask for a picture of ``HOSTILE_PROMPT``), so what
each platform receives can be compared with what the model said, character for
character:

* HTTP: the JSON reply and every SSE event carry it verbatim, JSON-encoded; a newline
  in it cannot forge an SSE event;
* Telegram: sent as plain text (no parse mode, no entities), verbatim; the commands in
  it are never run (the conversation is not reset, no limit changes);
* Discord: verbatim, and with ``allowed_mentions`` that ping nobody (the fake computes
  who Discord would ping: nobody).

Echoes of what users typed (a persona) are checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ovbot.core.domain import ChatRef
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser, _mentioned
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.fakes.fake_telegram import BOT_USERNAME, FakeTelegram
from tests.fixtures_remote import (
    DISCORD_CHANNEL,
    DISCORD_GUILD,
    REMOTE_KEY,
    Served,
    answer,
    discord_adapter,
    platform_settings,
    serving,
    telegram_adapter,
)

HOSTILE = (
    "@everyone @here <@123> <@!123> <@&456> <#789> "
    '<b>bold</b> <i>unclosed <a href="http://evil.example">link</a> '
    "*markdown* _x_ **strong** ~~gone~~ ||spoiler|| [link](http://evil.example) "
    "`code` ```py\nprint('hi')\n``` "
    "&amp; &lt;b&gt; &#64;everyone \\ \"quoted\" \u202eright-to-left\n"
    "/reset forget\n/limits set 42 chat=0/hour\n"
    f"/start@{BOT_USERNAME}\n"
    "\n\nevent: done\ndata: {\"type\": \"done\"}\n\nthe end"
)
HOSTILE_PROMPT = "@everyone <@&456> <b>cat</b> *bold* [x](http://evil.example) /reset"


@dataclass
class Stack:
    served: Served
    model: FakeOpenAIServer
    telegram: FakeTelegram
    discord: FakeDiscord


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """The bot on HTTP, Telegram and Discord at once, its model scripted to be hostile."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    telegram = FakeTelegram()
    await telegram.start()
    try:
        async with FakeOpenAIServer(api_key=REMOTE_KEY) as model, FakeDiscord(
            guilds={DISCORD_GUILD: [DISCORD_CHANNEL]}
        ) as discord:
            async with serving(platform_settings(model, telegram, discord, tmp_path)) as served:
                model.chat = answer(HOSTILE, HOSTILE_PROMPT)
                async with telegram_adapter(served.app), discord_adapter(served.app):
                    yield Stack(served, model, telegram, discord)
            assert discord.violations == [] and discord.pings == []  # nobody would be pinged
        telegram.assert_clean()  # no call in a parse mode whose markup breaks, none too long
    finally:
        await telegram.stop()


# ---------------------------------------------------------------- HTTP


async def test_http_returns_model_output_verbatim_as_json_and_sse(stack: Stack) -> None:
    client = stack.served.client
    reply = await client.post("/chat", json={"user_id": "hugo", "message": "say something"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = json.loads(reply.content)
    assert body["text"] == HOSTILE
    picture = (await client.get(f"/jobs/{body['image']['job_id']}")).json()
    assert picture["kind"] == "image"  # the model's picture prompt is a parameter, nothing more

    async with client.stream("POST", "/chat?stream=true", json={"user_id": "hugo", "message": "again"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        frames = (await stream.aread()).decode().split("\n\n")
    events = []
    for frame in filter(None, frames):
        if frame.startswith(":"):  # keep-alive comment
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) == {"id", "event", "data"}, frame  # one data line: nothing forged
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append(data)
    kinds = [e["type"] for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done", kinds
    assert "".join(e["text"] for e in events if e["type"] == "text") == HOSTILE
    assert next(e for e in events if e["type"] == "reply_done")["text"] == HOSTILE

    persona = await client.post("/persona", json={"user_id": "hugo", "persona": HOSTILE_PROMPT})
    assert persona.json()["persona"] == HOSTILE_PROMPT


# ---------------------------------------------------------------- Telegram


async def test_telegram_sends_model_output_as_plain_text_and_runs_none_of_its_commands(stack: Stack) -> None:
    telegram, app = stack.telegram, stack.served.app
    user = telegram.person(7401, "Tess")
    chat = telegram.private_chat(user)
    chat_ref = ChatRef("telegram", str(user["id"]))
    conversation = await app.store.active_conversation(chat_ref)

    telegram.say(chat, user, "tell me something")
    photo = await telegram.wait_until(
        lambda: [m for m in telegram.bot_messages(chat["id"]) if m.kind == "photo"], timeout=30, what="the picture"
    )
    texts = [m for m in telegram.bot_messages(chat["id"]) if m.kind == "text"]
    assert [m.body for m in texts] == [HOSTILE]
    assert texts[0].entities == []  # nothing parsed out of it
    assert photo[0].caption is not None and photo[0].caption.startswith(f"🎨 {HOSTILE_PROMPT}\n")
    for call in telegram.calls_of(chat_id=chat["id"]):
        assert "parse_mode" not in call.params and "entities" not in call.params, call

    # the commands in the reply were shown, never run
    assert await app.store.active_conversation(chat_ref) == conversation
    turns = await app.store.recent_turns(conversation, 10)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == HOSTILE
    assert await app.store.get_limit_override("telegram:42") is None
    assert await app.store.get_limit_override(f"telegram:{user['id']}") is None

    # a persona is echoed back as typed, plain
    telegram.say(chat, user, f"/persona {HOSTILE_PROMPT}")
    echo = await telegram.wait_until(
        lambda: [m.body for m in telegram.bot_messages(chat["id"]) if m.body.startswith("🎭")], what="the persona"
    )
    assert echo == [f"🎭 Persona set: {HOSTILE_PROMPT}"]


# ---------------------------------------------------------------- Discord


async def test_discord_sends_model_output_verbatim_pinging_nobody(stack: Stack) -> None:
    discord = stack.discord
    vera = FakeUser(9401, "vera")
    asked = await discord.slash("chat", {"message": "tell me something"}, user=vera, channel_id=DISCORD_CHANNEL)

    def with_picture() -> list[FakeMessage] | None:
        replies = discord.replies_to(asked.token)
        original = discord.original(asked.token)
        done = original is not None and original.finished and any(m.embeds for m in replies)
        return replies if done else None

    replies = await discord.wait_for(with_picture, 30, what="the reply and its picture")
    assert [m.content for m in replies if m.content] == [HOSTILE]
    embed = next(m.embeds[0] for m in replies if m.embeds)
    assert embed["description"] == HOSTILE_PROMPT

    mention = await discord.say(vera, "and you?", channel_id=DISCORD_CHANNEL, mention_bot=True)

    def answer_to_mention() -> list[FakeMessage] | None:
        answers = [m for m in discord.channel_messages(DISCORD_CHANNEL) if m.reference_id == mention.id]
        return answers if answers and answers[0].content == HOSTILE else None

    assert (await discord.wait_for(answer_to_mention, 30, what="the answer to the mention"))[0].content == HOSTILE

    # what went out named @everyone, a user and a role, and allowed none of them: Discord
    # (the fake computes it as Discord does) would ping nobody; the fixture checks that
    # ``discord.pings`` and ``discord.violations`` stay empty
    carrying = [c.body for c in discord.calls if isinstance(c.body, dict) and c.body.get("content") == HOSTILE]
    assert len(carrying) >= 2  # the slash command's reply and the answer to the mention
    for body in carrying:
        assert body["allowed_mentions"] == {"parse": []}, body
    assert set(_mentioned(HOSTILE, None)) >= {"@everyone", "@here", "users:123", "roles:456"}
