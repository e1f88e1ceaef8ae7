"""The Telegram adapter end to end: the real python-telegram-bot client (its
Application, updater, rate limiter and HTTP stack) against a fake Bot API server on
127.0.0.1 (tests/fakes/fake_telegram.py), the real core on the tiny models, a real
SQLite file. The fake fails a test whose client breaks Telegram's rules (pace per chat,
retry_after, texts that would not parse); ``fake.assert_clean`` runs after every test.

The tiny models write gibberish: the tests check what reaches the chat (which calls,
which texts, in which order), compared with what the core stored, never the wording.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image
from telegram.error import BadRequest

from ovbot.adapters.common.live_reply import REASONING_PREFIX
from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.core.app import App
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, UserRef
from tests.fakes.fake_telegram import BOT_USERNAME, TOKEN, FakeTelegram, Posted
from tests.fixtures_app import bot_settings, running_app
from tests.sentinels import TELEGRAM_WEBHOOK_SECRET

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN_ID = 1000
SLOW_STEPS = 300


def telegram_settings(tiny_models: Any, data_dir: Path, fake: FakeTelegram, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        telegram_token=TOKEN,
        telegram_api_base=fake.api_base,
        admins=[f"telegram:{ADMIN_ID}"],
    )
    values.update(overrides)
    return bot_settings(tiny_models, data_dir, **values)


def adapter_for(app: App, **overrides: Any) -> TelegramAdapter:
    config = TelegramConfig.from_settings(app.settings, poll_timeout_s=1.0, **overrides)
    assert config is not None
    return TelegramAdapter(app.bot, config)


@pytest.fixture(scope="module")
def no_proxy() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake(no_proxy: None) -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory, fake: FakeTelegram) -> AsyncIterator[App]:
    async with running_app(telegram_settings(tiny_models, tmp_path_factory.mktemp("telegram"), fake)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(app: App, fake: FakeTelegram) -> AsyncIterator[TelegramAdapter]:
    running = adapter_for(app)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def rules_kept(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the fake: the client kept Telegram's rules."""
    yield
    if "fake" in request.fixturenames:
        server: FakeTelegram = request.getfixturevalue("fake")
        try:
            server.assert_clean()
        finally:
            server.violations.clear()


# ---------------------------------------------------------------- helpers


class Person:
    """A Telegram user with their private chat."""

    def __init__(self, fake: FakeTelegram, user_id: int, name: str = "Ann") -> None:
        self.fake = fake
        self.id = user_id
        self.user = fake.person(user_id, name)
        self.chat = fake.private_chat(self.user)

    def says(self, text: str, *, chat: dict[str, Any] | None = None, reply_to: int | None = None) -> int:
        return self.fake.say(chat or self.chat, self.user, text, reply_to=reply_to)

    async def ask(self, text: str, *, chat: dict[str, Any] | None = None, reply_to: int | None = None) -> str:
        """Say ``text`` and return the one message the bot answers with."""
        chat_id = (chat or self.chat)["id"]
        before = len(self.fake.bot_messages(chat_id, include_deleted=True))
        self.says(text, chat=chat, reply_to=reply_to)
        posted = await self.fake.wait_until(
            lambda: self.fake.bot_messages(chat_id, include_deleted=True)[before:], what=f"an answer to {text[:30]!r}"
        )
        return posted[0].body


async def settled(
    adapter: TelegramAdapter, fake: FakeTelegram, chat_id: int, *, after: int = 0, timeout: float = 90.0
) -> list[Posted]:
    """Wait until a call beyond the first ``after`` reached ``chat_id`` (the reply has
    begun) and every reply in flight is delivered; the chat's visible bot messages."""
    await fake.wait_until(lambda: fake.calls_of(chat_id=chat_id)[after:], what=f"a call in chat {chat_id}")
    await asyncio.wait_for(adapter.deliveries.idle(), timeout)
    return fake.bot_messages(chat_id)


def calls_in(fake: FakeTelegram, chat_id: int) -> int:
    return len(fake.calls_of(chat_id=chat_id))


async def last_answer(app: App, chat_id: int) -> str:
    """The assistant's last stored answer in a Telegram chat, as a message shows it
    (Telegram trims the edges of a message, so the renderer does too)."""
    conversation = await app.store.active_conversation(ChatRef("telegram", str(chat_id)))
    turns = await app.store.recent_turns(conversation, 10)
    return [t.content for t in turns if t.role == "assistant"][-1].strip()


def png_text(data: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.text)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- start-up


async def test_start_registers_commands_and_polls(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    await fake.wait_until(lambda: fake.calls_of("getUpdates"), what="the first long poll")
    assert [c.method for c in fake.calls[:4]] == ["getMe", "setMyCommands", "deleteWebhook", "getUpdates"]
    assert [c["command"] for c in fake.commands] == [
        "start", "help", "chat", "imagine", "reset", "persona", "think", "queue", "cancel", "usage"
    ]  # fmt: skip
    assert adapter.health().ok and adapter.health().detail == "polling"


# ---------------------------------------------------------------- the fake itself


async def test_the_fake_fails_a_client_that_breaks_the_rules(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    """The checks the other tests rely on do catch a careless client: python-telegram-bot
    used directly, without ovbot's pacing and plain text."""
    raw = adapter.application.bot
    group = fake.group_chat(-1000001)
    await raw.send_message(group["id"], "one")
    await raw.send_message(group["id"], "two, right away")
    with pytest.raises(BadRequest, match="(?i)can't parse entities"):
        await raw.send_message(4, "<b>unclosed", parse_mode="HTML")
    try:
        assert len(fake.violations) == 2, fake.violations
        assert "only" in fake.violations[0] and "after the previous message call" in fake.violations[0]
        assert "does not parse as HTML: unclosed tag 'b'" in fake.violations[1]
    finally:
        fake.violations.clear()


# ---------------------------------------------------------------- replies


async def test_private_chat_streams_a_draft_then_sends_one_message(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    ann = Person(fake, 2001)
    ann.says("hello there, bot")
    posted = await settled(adapter, fake, ann.id)
    answer = await last_answer(app, ann.id)
    assert [m.body for m in posted] == [answer]
    drafts = fake.drafts[ann.id]
    assert drafts and len({draft_id for draft_id, _ in drafts}) == 1  # one animated draft
    assert not fake.calls_of("editMessageText", ann.id)
    sends = fake.calls_of("sendMessage", ann.id)
    assert len(sends) == 1 and "parse_mode" not in sends[0].params  # plain text: always parses
    # the draft came first, the persisted message last
    assert fake.calls_of(chat_id=ann.id)[0].method == "sendMessageDraft"
    assert fake.calls_of(chat_id=ann.id)[-1].method == "sendMessage"
    assert not answer.startswith(REASONING_PREFIX)  # reasoning is not shown unless asked


async def test_reasoning_is_shown_only_when_asked(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    bea = Person(fake, 2002, "Bea")
    bea.says("/chat --show-reasoning why is the sky blue?")
    posted = await settled(adapter, fake, bea.id)
    text = "\n".join(m.body for m in posted)
    answer = await last_answer(app, bea.id)
    assert text.startswith(REASONING_PREFIX) and text.rstrip().endswith(answer.strip())


async def test_a_group_is_answered_only_when_addressed_with_paced_edits(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    group = fake.group_chat(-1003001)
    ann, bob = Person(fake, 3001), Person(fake, 3002, "Bob")
    ann.says("just chatting among ourselves", chat=group)
    asked = ann.says(f"@{BOT_USERNAME} what is a lighthouse?", chat=group)
    first = await settled(adapter, fake, group["id"])
    # the unaddressed message was handled first (updates run in order) and ignored
    assert len(first) == 1 and first[0].reply_to == asked
    conversation = await app.store.active_conversation(ChatRef("telegram", str(group["id"])))
    users = [t.content for t in await app.store.recent_turns(conversation, 10) if t.role == "user"]
    assert users == ["what is a lighthouse?"]  # the mention is not part of the message
    assert first[0].body == await last_answer(app, group["id"])
    assert not fake.drafts.get(group["id"])  # drafts are for private chats only

    # a reply to the bot, /chat, and two people at once: each answered, the chat paced
    before = calls_in(fake, group["id"])
    replied = bob.says("and a lightship?", chat=group, reply_to=first[0].message_id)
    await settled(adapter, fake, group["id"], after=before)
    ann.says("/chat tell me more", chat=group)
    bob.says(f"@{BOT_USERNAME} and you?", chat=group)
    posted = await fake.wait_until(lambda: len(fake.bot_messages(group["id"])) >= 4 and fake.bot_messages(group["id"]))
    await asyncio.wait_for(adapter.deliveries.idle(), 90)
    posted = fake.bot_messages(group["id"])
    assert len(posted) == 4 and posted[1].reply_to == replied
    calls = [c for c in fake.calls_of(chat_id=group["id"]) if c.method in ("sendMessage", "editMessageText")]
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= 0.9, gaps  # and the fake checked every call against the rules


async def test_picture_progress_in_a_group_is_edited_at_most_once_a_second(
    adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    group = fake.group_chat(-1003101)
    ann = Person(fake, 3101)
    asked = ann.says(f"/imagine a slow lighthouse --steps {SLOW_STEPS}", chat=group)
    posted = await settled(adapter, fake, group["id"])
    edits = fake.calls_of("editMessageText", group["id"])
    assert len(edits) >= 2, "the picture ran too fast to see progress"
    texts = [c.params["text"] for c in edits]
    assert any("🎨 Picture: step" in t for t in texts)
    span = edits[-1].at - edits[0].at
    rate = (len(edits) - 1) / span if span else 0.0
    assert rate <= 1.0, f"{rate:.2f} edits/s"
    # the status message gave way to the photo, which answers the command
    photos = [m for m in posted if m.kind == "photo"]
    assert len(posted) == 1 and len(photos) == 1 and photos[0].reply_to == asked
    print(f"\npicture progress: {len(edits)} edits in {span:.1f} s ({rate:.2f}/s)")


# ---------------------------------------------------------------- pictures


async def test_imagine_with_every_parameter_sends_a_photo_with_its_settings(
    adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    cy = Person(fake, 4001, "Cy")
    cy.says("/imagine a red boat --neg blurry, dark --steps 3 --cfg 5.5 --seed 42 --size 64x64")
    posted = await settled(adapter, fake, cy.id)
    assert [m.kind for m in posted] == ["photo"]  # the status message made way for it
    photo = posted[0]
    assert photo.caption is not None and photo.caption.splitlines() == [
        "🎨 a red boat",
        "🚫 blurry, dark",
        "🌱 seed 42 · 3 steps · CFG 5.5 · 64x64",
    ]
    button = photo.reply_markup["inline_keyboard"][0][0]  # type: ignore[index]
    assert button["text"] == "🎲 Re-roll" and button["callback_data"].startswith("reroll:")
    assert photo.file is not None and photo.file.startswith(b"\x89PNG")
    assert not fake.calls_of("sendMessageDraft", cy.id)  # a picture's progress is a status message

    # --file: the PNG as a document, byte for byte, its parameters in its text chunks
    before = calls_in(fake, cy.id)
    cy.says("/imagine a red boat --seed 7 --steps 2 --file")
    posted = await settled(adapter, fake, cy.id, after=before)
    document = posted[-1]
    assert document.kind == "document" and document.file is not None
    chunks = png_text(document.file)
    assert chunks["prompt"] == "a red boat" and "seed=7" in chunks["parameters"] and "steps=2" in chunks["parameters"]


async def test_reroll_draws_the_same_picture_with_a_new_seed(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    dee = Person(fake, 4101, "Dee")
    group = fake.group_chat(-1004101)
    dee.says("/imagine a lighthouse at night --steps 2 --seed 42 --cfg 3", chat=group)
    first = (await settled(adapter, fake, group["id"]))[-1]
    data = first.reply_markup["inline_keyboard"][0][0]["callback_data"]  # type: ignore[index]
    other = Person(fake, 4102, "Eve")  # anyone in the chat may re-roll
    fake.press(group, other.user, first.message_id, data)
    posted = await fake.wait_until(lambda: [m for m in fake.bot_messages(group["id"]) if m.kind == "photo"][1:])
    await asyncio.wait_for(adapter.deliveries.idle(), 60)
    second = posted[0]
    assert second.reply_to == first.message_id
    before, after = first.caption.splitlines(), second.caption.splitlines()  # type: ignore[union-attr]
    assert after[0] == before[0] == "🎨 a lighthouse at night"
    assert after[-1].endswith("· 2 steps · CFG 3 · 64x64") and "seed 42 ·" not in after[-1]
    assert fake.callback_answers[-1]["text"] == "🎲 Re-rolling…"
    # a button naming no picture of this chat is refused, as an alert, not a crash
    fake.press(group, other.user, first.message_id, "reroll:" + "0" * 32)
    answer = await fake.wait_until(lambda: [a for a in fake.callback_answers if a["alert"]])
    assert answer[0]["text"] == "⚠️ There is no such picture (or it is not yours)."


OPTIONS = "--neg, --steps, --cfg, --seed, --size, --file"
INVALID_IMAGINE = [
    ("--steps lots", "⚠️ steps: must be a whole number (got 'lots')"),
    ("--steps 999", "⚠️ steps: must be between 1 and 500 (got 999)"),
    ("--cfg high", "⚠️ cfg: must be a number like 7.5 (got 'high')"),
    ("--cfg 500", "⚠️ cfg: must be between 1 and 20 (got 500)"),
    ("--seed -1", "⚠️ seed: must be between 0 and 4294967295"),
    ("--seed x", "⚠️ seed: must be a whole number (got 'x')"),
    ("--size 512x512", "⚠️ size: 512x512 is not allowed; choose one of 64x64"),
    ("--size huge", "⚠️ size: must be WIDTHxHEIGHT like 512x512 (got 'huge')"),
    ("--neg", "⚠️ neg: needs a value, e.g. --neg blurry, text"),
    ("--colour red", "⚠️ --colour: is not an option of /imagine; use " + OPTIONS),
]


@pytest.mark.parametrize("case", range(len(INVALID_IMAGINE)), ids=[o for o, _ in INVALID_IMAGINE])
async def test_imagine_refuses_each_invalid_parameter(adapter: TelegramAdapter, fake: FakeTelegram, case: int) -> None:
    options, reply = INVALID_IMAGINE[case]
    person = Person(fake, 4200 + case)  # a chat of its own: no pacing between the cases
    assert await person.ask(f"/imagine a cat {options}") == reply
    assert not adapter.deliveries.in_flight and not fake.calls_of("sendPhoto", person.id)


async def test_imagine_without_a_prompt(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    assert await Person(fake, 4901).ask("/imagine --steps 3") == "⚠️ prompt: must not be empty"


# ---------------------------------------------------------------- chat settings, queue, usage


async def test_reset_persona_and_think_change_the_chat(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    fay = Person(fake, 5001, "Fay")
    user, chat = UserRef("telegram", "5001"), ChatRef("telegram", "5001")
    fay.says("remember the number seven")
    await settled(adapter, fake, fay.id)
    old = await app.store.active_conversation(chat)
    assert await fay.ask("/reset") == "🆕 New conversation."
    assert await app.store.active_conversation(chat) != old
    assert await fay.ask("/reset forget") == "🆕 New conversation. The old one is deleted."
    assert await fay.ask("/reset sometimes") == (
        "⚠️ reset: write /reset, or /reset forget to delete the old conversation too"
    )
    assert await fay.ask("/persona You are a terse pirate.") == "🎭 Persona set: You are a terse pirate."
    assert (await app.bot.chat_settings(user, chat)).persona == "You are a terse pirate."
    assert await fay.ask("/persona") == "🎭 Persona: You are a terse pirate."
    assert await fay.ask("/persona clear") == "🎭 Persona cleared."
    assert (await app.bot.chat_settings(user, chat)).persona is None
    assert await fay.ask("/think full") == "🧠 Reasoning is now: full"
    assert (await app.bot.chat_settings(user, chat)).reasoning == "full"
    assert await fay.ask("/think") == "🧠 Reasoning: full"
    assert await fay.ask("/think loud") == "⚠️ mode: must be one of off, short, full"


async def test_queue_and_cancel_a_running_and_a_queued_picture(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    gus = Person(fake, 5101, "Gus")
    group = fake.group_chat(-1005101)
    asked = {
        gus.says("/imagine first slow picture --steps 480", chat=group),
        gus.says("/imagine second slow picture --steps 480", chat=group),
    }
    await fake.wait_until(
        lambda: any("🎨 Picture: step" in m.body for m in fake.bot_messages(group["id"])),
        what="the first picture running",
    )
    lines = (await gus.ask("/queue")).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("Picture ") and ": running, step " in lines[0], lines
    assert lines[1].startswith("Picture ") and ": #1 in line" in lines[1], lines
    assert await gus.ask("/cancel", chat=group) == "🚫 Cancelled 2 requests."
    await asyncio.wait_for(adapter.deliveries.idle(), 60)
    replies = [m for m in fake.bot_messages(group["id"]) if m.reply_to in asked]
    assert [m.body for m in replies] == ["🚫 Cancelled.", "🚫 Cancelled."]
    # the waiting one showed its place in the queue while it waited
    assert any(text.startswith("⏳ Queued: #1") for text in replies[1].history), replies[1].history
    assert not fake.calls_of("sendPhoto", group["id"])
    assert await gus.ask("/queue") == "You have nothing waiting or running."
    assert await gus.ask("/cancel") == "You have nothing waiting or running here."


async def test_usage_and_the_wait_time_over_the_limit(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    hal = Person(fake, 5201, "Hal")
    admin = Person(fake, ADMIN_ID, "Root")
    usage = await hal.ask("/usage")
    assert usage.splitlines()[:3] == [
        "Usage of telegram:5201",
        "Chat messages: 0 of 30 per hour used",
        "Pictures: 0 of 20 per day used",
    ]
    report = await admin.ask("/limits set 5201 chat=1/hour")
    assert "Chat messages: 0 of 1 per hour used (set by an admin)" in report
    before = calls_in(fake, hal.id)
    hal.says("the one message I may send")
    await settled(adapter, fake, hal.id, after=before)
    refused = await hal.ask("and one more")
    assert refused == "⏳ You reached your limit of 1 chat messages per hour. Try again in 1 h.", refused
    assert "next in" in await hal.ask("/usage")
    assert "Chat messages: 1 of 30 per hour used\n" in await admin.ask("/limits reset 5201")


async def test_admin_commands_are_for_admins_only(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    ivy = Person(fake, 5301, "Ivy")
    admin = Person(fake, ADMIN_ID, "Root")
    group = fake.group_chat(-1005301)
    for command in ("/limits show 5301", "/limits set 5301 images=1/day", "/admins", "/admins add 5301", "/block 77"):
        assert await ivy.ask(command) == "⛔ Only the bot's admins can do that.", command

    assert "Defaults: 30 messages per hour, 20 pictures per day" in await admin.ask("/limits show 5301")
    assert await admin.ask("/limits set 5301 chat=5/day") == (
        "⚠️ chat: chat messages are counted per hour (OVBOT_CHAT_WINDOW_S): write chat=5 or chat=5/hour"
    )
    report = await admin.ask("/limits set 5301 chat=5/hour images=2/day")
    assert "0 of 5 per hour used (set by an admin)" in report and "0 of 2 per day used (set by an admin)" in report
    assert await admin.ask("/admins add 5301") == "✅ telegram:5301 is an admin now."
    assert "telegram:5301" in await admin.ask("/admins")
    assert await ivy.ask("/admins") == "Admins:\ntelegram:1000\ntelegram:5301"  # admins may list them
    assert await admin.ask("/admins remove 5301") == "✅ telegram:5301 is no admin any more."
    assert await app.bot.is_admin(UserRef("telegram", "5301")) is False

    # block by replying to someone's message in a group, then unblock by id
    said = ivy.says("hello group", chat=group)
    assert await admin.ask("/block", chat=group, reply_to=said) == "⛔ Blocked telegram:5301."
    assert await ivy.ask(f"@{BOT_USERNAME} hi", chat=group) == "⛔ You have been blocked from using this bot."
    assert await admin.ask("/unblock 5301") == "✅ Unblocked telegram:5301."
    assert await admin.ask("/block @ivy") == (
        "⚠️ user: Telegram does not tell bots who an @username is; "
        "give their numeric id or reply to one of their messages"
    )


# ---------------------------------------------------------------- Telegram saying no


async def test_429_on_send_and_edit_the_reply_still_arrives_and_edits_back_off(
    adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    group = fake.group_chat(-1006001)
    jay = Person(fake, 6001, "Jay")
    # the first send is refused once (the rate limiter retries it after retry_after);
    # edits are refused four times in a row: more than the limiter retries, so the
    # renderer itself backs off and then pushes its newest state
    fake.too_many_requests("sendMessage", retry_after=1, chat_id=group["id"])
    fake.too_many_requests("editMessageText", retry_after=1, chat_id=group["id"], times=4)
    asked = jay.says(f"/imagine a stormy sea --steps {SLOW_STEPS}", chat=group)
    posted = await settled(adapter, fake, group["id"], timeout=120)
    assert [m.kind for m in posted] == ["photo"] and posted[0].reply_to == asked
    statuses = [c.status for c in fake.calls_of(chat_id=group["id"])]
    assert statuses.count(429) == 5, statuses
    sends = fake.calls_of("sendMessage", group["id"])
    assert [c.status for c in sends] == [429, 200] and sends[1].at - sends[0].at >= 1.0
    # the fake failed the test had any call come before its retry_after had passed


async def test_429_on_a_private_reply_it_is_still_delivered(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    kim = Person(fake, 6101, "Kim")
    fake.too_many_requests("sendMessage", retry_after=1, chat_id=kim.id, times=2)
    kim.says("say something")
    posted = await settled(adapter, fake, kim.id)
    assert [m.body for m in posted] == [await last_answer(app, kim.id)]
    assert [c.status for c in fake.calls_of("sendMessage", kim.id)] == [429, 429, 200]


async def test_message_not_modified_is_no_error(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    group = fake.group_chat(-1006201)
    lou = Person(fake, 6201, "Lou")
    fake.fail("editMessageText", 400, "Bad Request: message is not modified: specified new message content and "
              "reply markup are exactly the same", chat_id=group["id"], times=1)  # fmt: skip
    lou.says("/imagine waves --steps 150", chat=group)
    posted = await settled(adapter, fake, group["id"])
    assert [m.kind for m in posted] == ["photo"]
    assert 400 in [c.status for c in fake.calls_of("editMessageText", group["id"])]
    assert adapter.health().ok


async def test_a_user_who_blocked_the_bot_is_left_alone(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    max_ = Person(fake, 6301, "Max")
    fake.block(max_.id)
    max_.says("hello?")
    await settled(adapter, fake, max_.id)
    calls = fake.calls_of(chat_id=max_.id)
    assert calls and {c.status for c in calls} == {403}
    assert adapter.outbox.is_gone(max_.id) and adapter.health().ok
    # the turn counts as delivered: a restart does not try it again
    undelivered = await app.store.undelivered_jobs("telegram", 0)
    assert not [job for job in undelivered if job.chat.chat_id == str(max_.id)]
    # writing again (after unblocking the bot) opens the chat again
    fake.unblock(max_.id)
    assert (await max_.ask("/usage")).startswith("Usage of telegram:6301")


async def test_drafts_refused_the_reply_edits_a_message_instead(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram
) -> None:
    nia = Person(fake, 6401, "Nia")
    fake.drafts_supported = False  # an older Bot API server: no sendMessageDraft
    try:
        nia.says("are drafts there?")
        posted = await settled(adapter, fake, nia.id)
    finally:
        fake.drafts_supported = True
    assert [m.body for m in posted] == [await last_answer(app, nia.id)]
    assert fake.calls_of("sendMessageDraft", nia.id)[0].status == 404
    assert fake.calls_of("sendMessage", nia.id)
    before = calls_in(fake, nia.id)
    nia.says("and now?")  # the chat is remembered: no draft is tried again
    await settled(adapter, fake, nia.id, after=before)
    assert len(fake.calls_of("sendMessageDraft", nia.id)) == 1


# ---------------------------------------------------------------- odd messages


async def test_odd_messages_each_get_one_clear_reply(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    oli = Person(fake, 7001, "Oli")
    assert await oli.ask("/chat") == "⚠️ message: is empty; write something to send"
    assert await oli.ask("/chat    \n  ") == "⚠️ message: is empty; write something to send"
    assert await oli.ask("x" * 10_000) == "⚠️ message: is 10000 characters long; the limit is 4000"
    assert await oli.ask("/frobnicate now") == "❓ Unknown command /frobnicate. /help lists what I can do."
    fake.send_other(oli.chat, oli.user)
    await fake.wait_until(lambda: fake.texts(oli.id)[-1] == "I can only read text messages.")
    help_text = await oli.ask("/help")
    assert "/imagine <prompt>" in help_text and "/limits" not in help_text


@pytest.mark.parametrize(
    "text",
    [
        "😀👍🏽 👨‍👩‍👧‍👦 🇺🇦 emoji, skin tones, families, flags",
        "مرحبا كيف حالك؟ שלום \u202eright-to-left override\u202c",
        "control\x00characters\x07and\x1b[31m escapes \u2028 line separator",
        "<b>not html</b> *not markdown* _nor_ [links](http://example.org) & &amp; \\",
    ],
    ids=["emoji", "rtl", "controls", "markup"],
)
async def test_unusual_text_is_answered_as_plain_text(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram, text: str
) -> None:
    person = Person(fake, 7100 + len(text))
    person.says(text)
    posted = await settled(adapter, fake, person.id)
    assert [m.body for m in posted] == [await last_answer(app, person.id)]
    assert all("parse_mode" not in c.params for c in fake.calls_of(chat_id=person.id))


async def test_commands_in_a_group_are_for_this_bot_only(adapter: TelegramAdapter, fake: FakeTelegram) -> None:
    group = fake.group_chat(-1007201)
    pat = Person(fake, 7201, "Pat")
    pat.says("/frobnicate", chat=group)  # any bot's command: not ours to answer
    pat.says("/imagine@some_other_bot a cat", chat=group)
    assert await pat.ask(f"/frobnicate@{BOT_USERNAME}", chat=group) == (
        "❓ Unknown command /frobnicate. /help lists what I can do."
    )
    assert len(fake.bot_messages(group["id"])) == 1
    help_text = await pat.ask(f"/help@{BOT_USERNAME}", chat=group)
    assert "In groups I answer /chat, a mention of me, or a reply to one of my messages." in help_text


# ---------------------------------------------------------------- long answers


class _Journal:
    def __init__(self) -> None:
        self.messages: list[list[int]] = []

    async def messages_posted(self, message_ids: list[int]) -> None:
        self.messages.append(message_ids)

    async def photo_posted(self, message_id: int) -> None:
        raise AssertionError("no picture here")

    async def picture_bytes(self, image: Any) -> bytes:
        raise AssertionError("no picture here")


def _long_answer() -> str:
    paragraph = (
        "The lighthouse keeper 🧭 climbed the 👨‍👩‍👧‍👦 stairs again. "
        "Waves broke on the rocks below; the lamp turned, and turned, and turned. "
    )
    return "\n\n".join(f"{i}. " + paragraph * 3 for i in range(1, 30))


async def _stream(text: str) -> AsyncIterator[Any]:
    from ovbot.core.turns import Queued, ReplyDone, Started, TextDelta, TurnDone

    yield Queued("job", 1, position=1)
    yield Started("job", 2)
    step = 700
    for seq, start in enumerate(range(0, len(text), step), 3):
        yield TextDelta("job", seq, text=text[start : start + step])
        await asyncio.sleep(0.15)
    yield ReplyDone("job", 100, text=text)
    yield TurnDone("job", 101, text=text)


@pytest.mark.parametrize("private", [True, False], ids=["private-draft", "group-edits"])
async def test_answers_over_4096_characters_are_split_cleanly(
    adapter: TelegramAdapter, fake: FakeTelegram, private: bool
) -> None:
    from ovbot.adapters.common import render_live, utf16_length
    from ovbot.adapters.telegram.outbox import Place
    from ovbot.adapters.telegram.reply import TelegramReply

    chat_id = 8001 if private else -1008001
    text = _long_answer()
    assert utf16_length(text) > 2 * 4096
    journal = _Journal()
    target = TelegramReply(adapter.outbox, Place(chat_id), journal, drafts=private)
    events = _stream(text)

    async def observed() -> AsyncIterator[Any]:
        async for event in events:
            target.observe(event)
            yield event

    view = await asyncio.wait_for(
        render_live(
            observed(), target, limit=4096, measure=utf16_length, min_interval_s=1.0,
            clock=time.monotonic, sleep=asyncio.sleep,
        ),
        120,
    )  # fmt: skip
    await target.finish(view)
    posted = fake.bot_messages(chat_id)
    assert len(posted) == len(view.messages) >= 3
    assert all(utf16_length(m.body) <= 4096 for m in posted)
    assert "".join("".join(m.body.split()) for m in posted) == "".join(text.split())  # nothing lost
    assert all(m.body == m.body.strip() for m in posted)
    assert all(m.body.split("\n")[0][0].isdigit() for m in posted)  # cut at paragraph breaks
    assert journal.messages[-1] == [m.message_id for m in posted]
    if private:
        assert fake.drafts[chat_id] and not fake.calls_of("editMessageText", chat_id)
    else:
        assert not fake.drafts.get(chat_id) and fake.calls_of("editMessageText", chat_id)


# ---------------------------------------------------------------- restarts


@pytest_asyncio.fixture(loop_scope="module")
async def own_fake(no_proxy: None) -> AsyncIterator[FakeTelegram]:
    """A Bot API of its own, for tests that start and stop ovbot several times."""
    server = FakeTelegram()
    await server.start()
    yield server
    server.assert_clean()
    await server.stop()


async def _finished(app: App, chat_id: int, timeout: float = 90.0) -> None:
    """Wait until every job of ``chat_id`` ended in the core (delivered or not)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [j for j in await app.store.undelivered_jobs("telegram", 0) if j.chat.chat_id == str(chat_id)]
        if jobs and all(j.state.terminal for j in jobs):
            return
        assert time.monotonic() < deadline, "the job did not finish"
        await asyncio.sleep(0.05)


async def test_a_reply_finished_while_ovbot_was_down_is_delivered_exactly_once(
    tiny_models: Any, tmp_path: Path, own_fake: FakeTelegram
) -> None:
    settings = telegram_settings(tiny_models, tmp_path, own_fake)
    ann = Person(own_fake, 9001)
    async with running_app(settings) as app:
        adapter = adapter_for(app, stop_grace_s=0.0)
        await adapter.start()
        # Telegram is unreachable for this chat's messages: the reply cannot be posted
        own_fake.fail("sendMessage", 502, "Bad Gateway", chat_id=ann.id, times=1000)
        ann.says("answer me after the restart")
        await own_fake.wait_until(lambda: own_fake.calls_of("sendMessage", ann.id), what="a failed send")
        await adapter.stop()  # the delivery is left for the next start
        await _finished(app, ann.id)
    own_fake.clear_failures()
    assert not own_fake.bot_messages(ann.id)

    answers = []
    for attempt in range(2):  # two restarts: delivered by the first only
        async with running_app(settings) as app:
            adapter = adapter_for(app)
            await adapter.start()
            await asyncio.wait_for(adapter.deliveries.idle(), 60)
            answers.append(await last_answer(app, ann.id))
            assert await app.store.undelivered_jobs("telegram", 0) == []
            await adapter.stop()
        assert [m.body for m in own_fake.bot_messages(ann.id)] == [answers[0]], attempt
    assert len([c for c in own_fake.calls_of("sendMessage", ann.id) if c.status == 200]) == 1


async def test_a_reply_streaming_at_shutdown_is_completed_in_place(
    tiny_models: Any, tmp_path: Path, own_fake: FakeTelegram
) -> None:
    settings = telegram_settings(tiny_models, tmp_path, own_fake)
    group = own_fake.group_chat(-1009101)
    bo = Person(own_fake, 9101, "Bo")
    async with running_app(settings) as app:
        adapter = adapter_for(app, stop_grace_s=0.0)
        await adapter.start()
        asked = bo.says("/imagine a slow harbour --steps 200", chat=group)
        status = await own_fake.wait_until(
            lambda: [m for m in own_fake.bot_messages(group["id"]) if "🎨 Picture: step" in m.body],
            what="picture progress",
        )
        await adapter.stop()
        await _finished(app, group["id"])
        (job,) = await app.store.undelivered_jobs("telegram", 0)
    assert not own_fake.calls_of("sendPhoto", group["id"])

    for attempt in range(2):
        async with running_app(settings) as app:
            if attempt == 0:
                # after a restart only the job's end is replayed; the facade still
                # announces its picture (ImageReady) before the end, numbered in order
                events = [e async for e in await app.bot.resume(job.id, job.user)]
                assert [type(e).__name__ for e in events][-2:] == ["ImageReady", "TurnDone"]
                assert [e.seq for e in events] == list(range(1, len(events) + 1))
            adapter = adapter_for(app)
            await adapter.start()
            await asyncio.wait_for(adapter.deliveries.idle(), 60)
            await adapter.stop()
    # the status message it was editing is the one it finished (then made way for the
    # photo), no second status message, one photo
    everything = own_fake.bot_messages(group["id"], include_deleted=True)
    assert [(m.kind, m.deleted) for m in everything] == [("text", True), ("photo", False)]
    assert everything[0].message_id == status[0].message_id
    assert everything[1].reply_to == asked
    assert len(own_fake.calls_of("sendPhoto", group["id"])) == 1


# ---------------------------------------------------------------- webhook, start-up, serve, logs


async def test_webhook_mode_checks_the_secret_on_every_request(
    app: App, adapter: TelegramAdapter, own_fake: FakeTelegram
) -> None:
    import httpx

    from tests.test_adapters import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    secret = TELEGRAM_WEBHOOK_SECRET
    config = TelegramConfig(
        token=TOKEN,
        api_base=own_fake.api_base,
        mode="webhook",
        webhook_url=url,
        webhook_port=port,
        webhook_secret=secret,
    )
    hooked = TelegramAdapter(app.bot, config)
    await hooked.start()
    try:
        assert own_fake.webhook == {"url": url, "secret_token": secret}
        assert hooked.health().ok and hooked.health().detail == "webhook"
        assert not own_fake.calls_of("getUpdates")
        ray = Person(own_fake, 9201, "Ray")
        message = {"message_id": 1, "date": 0, "chat": ray.chat, "from": ray.user, "text": "/usage"}
        forged = {"update_id": 999, "message": message}
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.post(url, json=forged)).status_code == 403
            wrong = {"X-Telegram-Bot-Api-Secret-Token": "guess"}
            assert (await client.post(url, json=forged, headers=wrong)).status_code == 403
            assert (await client.post(url.replace("tg-hook", "other"), json=forged)).status_code == 404
        # the real thing: the fake posts the update with the secret, as Telegram does
        answer = await ray.ask("/usage")
        assert answer.startswith("Usage of telegram:9201")
        assert own_fake.webhook_posts == [200]
        assert len(own_fake.bot_messages(ray.id)) == 1  # the forged ones were not handled
        ray.says("hello by webhook")
        posted = await settled(hooked, own_fake, ray.id, after=1)
        assert len(posted) == 2
    finally:
        await hooked.stop()
    assert not hooked.health().ok


async def test_a_refused_token_or_an_unreachable_server_stops_the_start_with_one_line(
    app: App, own_fake: FakeTelegram
) -> None:
    from ovbot.adapters.telegram.errors import TelegramUnavailable
    from tests.test_adapters import free_port

    wrong = TelegramAdapter(app.bot, TelegramConfig(token="42:wrong-token", api_base=own_fake.api_base))
    with pytest.raises(TelegramUnavailable) as refused:
        await wrong.start()
    assert "refused the token (OVBOT_TELEGRAM_TOKEN)" in refused.value.user_message
    assert "wrong-token" not in refused.value.user_message
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = TelegramAdapter(app.bot, TelegramConfig(token=TOKEN, api_base=nowhere))
    with pytest.raises(TelegramUnavailable) as down:
        await unreachable.start()
    assert down.value.user_message.startswith(f"cannot reach the Bot API at {nowhere} (")
    assert not wrong.health().ok and not unreachable.health().ok


async def test_ovbot_serve_runs_the_adapter_when_the_token_is_set(
    tiny_models: Any, tmp_path: Path, own_fake: FakeTelegram
) -> None:
    import os
    import signal

    import httpx

    from ovbot.bots.serve import configured_adapters, serve
    from tests.test_adapters import free_port

    port = free_port()
    group = own_fake.group_chat(-1009401)
    settings = telegram_settings(
        tiny_models,
        tmp_path,
        own_fake,
        http_host="127.0.0.1",
        http_port=port,
        allowed_users=["telegram:9401"],
        allowed_chats=[f"telegram:{group['id']}", "telegram:9401"],
    )
    without = bot_settings(tiny_models, tmp_path)
    assert [a.name for a in configured_adapters(None, without)] == []  # type: ignore[arg-type]
    serving = asyncio.create_task(serve(settings, grace_s=1))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + 120
        while True:
            assert not serving.done(), serving
            assert time.monotonic() < deadline, "serve did not get ready"
            try:
                ready = await client.get("/ready")
                if ready.status_code == 200 and "adapter_telegram" in ready.json()["checks"]:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        assert ready.json()["checks"]["adapter_telegram"] == {"ok": True, "detail": "polling"}
        sam = Person(own_fake, 9401, "Sam")
        assert (await sam.ask("/usage")).startswith("Usage of telegram:9401")
        # the allow-lists are the core's, fed with Telegram's user and chat ids
        stranger = Person(own_fake, 9402, "Stranger")
        assert await stranger.ask("/usage") == (
            "⛔ Sorry, this bot is private: you are not on its list of users. Ask its admin to add you."
        )
        assert (await sam.ask("/usage", chat=group)).startswith("Usage of telegram:9401")
        elsewhere = own_fake.group_chat(-1009402)
        assert await sam.ask("/usage", chat=elsewhere) == (
            "⛔ Sorry, this bot does not answer in this chat. Ask its admin to allow it here."
        )
    os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler takes it
    assert await asyncio.wait_for(serving, 60) == 0
    assert own_fake.calls[-1].method == "getUpdates"  # the last poll confirmed what was handled


async def test_logs_never_show_the_token_or_what_users_write(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from ovbot.core.logging_setup import QUIET_LOGGERS, configure_logging

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS})
    keep = Keep()
    private = "my private diary entry 7d1f"
    tess = Person(fake, 9501, "Tess")
    group = fake.group_chat(-1009501)
    try:
        configure_logging("DEBUG", app.settings.secrets())
        root.addHandler(keep)  # every record as created, before any redaction
        fake.too_many_requests("editMessageText", chat_id=group["id"], times=4)  # logs the back-off
        tess.says(f"@{BOT_USERNAME} {private}", chat=group)
        await settled(adapter, fake, group["id"])
        assert (await tess.ask(f"/persona {private}")).endswith(private)
        await tess.ask(f"/imagine {private} --steps lots")
        tess.says(f"/imagine {private} --steps 2")
        await settled(adapter, fake, tess.id, after=calls_in(fake, tess.id))
        logging.getLogger("ovbot.test").debug("logging works at DEBUG")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    err = capsys.readouterr().err
    secret_part = TOKEN.split(":", 1)[1]
    assert "logging works at DEBUG" in err and "Telegram asked to wait" in err
    assert secret_part not in err and private not in err
    for record in keep.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        assert private not in text, record.name
        assert secret_part not in text, record.name
