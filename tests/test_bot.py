"""The core facade end to end: the real App (tiny OpenVINO models in the engine worker,
SQLite in tmp_path, the durable queue) driven through ``Bot`` the way platform adapters
drive it. The tiny models write gibberish: these tests check the protocol (events, order,
ownership, refusals), never the wording."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ovbot.core.access import ADMINS_ONLY, BLOCKED, NOT_ALLOWED_CHAT, NOT_ALLOWED_USER
from ovbot.core.app import App
from ovbot.core.bot import Bot, TurnHandle, TurnOptions
from ovbot.core.domain import ChatRef, ImageParams, JobState, UserRef
from ovbot.core.errors import BadParameter, Forbidden, InvalidInput, NotFound
from ovbot.core.turns import (
    ImageFailed,
    ImageProgress,
    ImageQueued,
    ImageReady,
    Queued,
    ReplyDone,
    TextDelta,
    Thinking,
    TurnCancelled,
    TurnDone,
    TurnEvent,
    TurnInterrupted,
)
from tests.fixtures_app import bot_settings, running_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

PLATFORM = "memory"
ADMIN = UserRef(PLATFORM, "root")  # ADMIN_KEY in tests.fixtures_app
ALICE = UserRef(PLATFORM, "alice")
BOB = UserRef(PLATFORM, "bob")
ROOM = ChatRef(PLATFORM, "room")
SLOW_STEPS = 400


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    async with running_app(bot_settings(tiny_models, tmp_path_factory.mktemp("bot"))) as running:
        yield running


@pytest.fixture
def bot(app: App) -> Bot:
    return app.bot


async def collect(handle: TurnHandle, timeout: float = 120.0) -> list[TurnEvent]:
    async def read() -> list[TurnEvent]:
        return [event async for event in handle]

    return await asyncio.wait_for(read(), timeout)


async def first_of(handle: TurnHandle, kind: type[TurnEvent], timeout: float = 60.0) -> TurnEvent:
    async def read() -> TurnEvent:
        async with contextlib.aclosing(handle.__aiter__()) as events:
            async for event in events:
                if isinstance(event, kind):
                    return event
        raise AssertionError(f"the turn ended without {kind.__name__}")

    return await asyncio.wait_for(read(), timeout)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def assert_one_stream(events: list[TurnEvent]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.terminal for e in events].count(True) == 1 and events[-1].terminal


# ---------------------------------------------------------------- turns


async def test_turn_with_picture_is_one_stream(bot: Bot) -> None:
    options = TurnOptions(image=ImageParams(prompt="", steps=3, seed=11))
    handle = await bot.submit_turn(ALICE, ROOM, "draw a lighthouse", options)
    events = await collect(handle)
    assert_one_stream(events)
    kinds = [type(e) for e in events]
    assert kinds[0] is Queued
    reply = next(e for e in events if isinstance(e, ReplyDone))
    assert reply.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert reply.image_job_id == handle.picture_job_id
    # the picture's events follow the reply's, in one stream
    index = kinds.index(ReplyDone)
    assert ImageQueued in kinds[index:] and ImageReady in kinds[index:]
    assert [e.step for e in events if isinstance(e, ImageProgress)][-1] == 3
    done = events[-1]
    assert isinstance(done, TurnDone) and done.text == reply.text and done.image_id
    ready = next(e for e in events if isinstance(e, ImageReady))
    assert ready.params["seed"] == 11 and ready.image_id == done.image_id

    # replaying the turn later gives the same events, numbered the same
    again = await collect(await bot.resume(handle.job_id, ALICE))
    assert [(type(e), e.seq) for e in again] == [(type(e), e.seq) for e in events]
    picture = await bot.image(handle.picture_job_id or "", ALICE)
    assert Path(picture.path).read_bytes().startswith(b"\x89PNG") and picture.params["steps"] == 3
    status = await bot.status(handle.job_id, ALICE)
    assert status.state is JobState.DONE and status.text == reply.text
    assert status.image_job_id == handle.picture_job_id


async def test_bare_picture_turn(bot: Bot) -> None:
    handle = await bot.imagine(ALICE, ROOM, ImageParams(prompt="a red cube", steps=2, seed=5))
    events = await collect(handle)
    assert_one_stream(events)
    assert isinstance(events[0], Queued)
    done = events[-1]
    assert isinstance(done, TurnDone) and done.text == "" and done.image_job_id == handle.job_id
    assert any(isinstance(e, ImageReady) and e.image_id == done.image_id for e in events)


async def test_cancel_stops_the_picture_and_keeps_the_reply(bot: Bot, app: App) -> None:
    options = TurnOptions(image=ImageParams(prompt="", steps=SLOW_STEPS))
    handle = await bot.submit_turn(ALICE, ROOM, "paint slowly", options)
    await first_of(handle, ImageProgress)
    cancelled = await handle.cancel()
    assert cancelled.state is JobState.DONE  # the reply was already written
    events = await collect(handle)
    assert_one_stream(events)
    failed = next(e for e in events if isinstance(e, ImageFailed))
    assert failed.error_kind == "cancelled"
    assert isinstance(events[-1], TurnDone) and events[-1].note == failed.message
    picture = await app.store.get_job(handle.picture_job_id or "")
    assert picture is not None and picture.state is JobState.CANCELLED


async def test_cancel_at_once_leaves_nothing_of_the_turn_running(bot: Bot, app: App) -> None:
    handle = await bot.submit_turn(ALICE, ROOM, "never mind", TurnOptions(image=ImageParams(prompt="", steps=2)))
    await handle.cancel()
    events = await collect(handle)
    assert_one_stream(events)
    picture = await app.store.get_job(handle.picture_job_id or "")
    if isinstance(events[-1], TurnCancelled):  # cancelled before or while the reply was written
        assert picture is None or picture.state is JobState.CANCELLED
    else:  # the reply won the race: then its picture was cancelled
        assert isinstance(events[-1], TurnDone)
        assert picture is not None and picture.state is JobState.CANCELLED


async def test_queue_shows_running_and_waiting_jobs(bot: Bot) -> None:
    carol = UserRef(PLATFORM, "carol")
    running = await bot.imagine(carol, ROOM, ImageParams(prompt="one", steps=SLOW_STEPS))
    await first_of(running, ImageProgress)
    waiting = await bot.imagine(carol, ROOM, ImageParams(prompt="two", steps=2))
    mine = await bot.queue(carol, ROOM)
    assert [(s.job_id, s.position) for s in mine] == [(running.job_id, 0), (waiting.job_id, 1)]
    assert mine[1].eta_s is not None and mine[0].progress_step is not None
    assert await bot.queue(BOB, ROOM) == [] or all(s.user == BOB for s in await bot.queue(BOB, ROOM))
    await running.cancel()
    await waiting.cancel()
    assert await bot.queue(carol, ROOM) == []


# ---------------------------------------------------------------- ownership


async def test_someone_elses_turn_is_invisible_and_cannot_be_cancelled(bot: Bot) -> None:
    member = UserRef(PLATFORM, "team:alice")
    handle = await bot.imagine(member, ROOM, ImageParams(prompt="mine", steps=2))
    await collect(handle)
    for call in (bot.status, bot.resume, bot.image):
        with pytest.raises(NotFound):
            await call(handle.job_id, BOB)
    with pytest.raises(Forbidden):
        await bot.cancel(handle.job_id, BOB)
    with pytest.raises(NotFound):
        await bot.status("0" * 32, ALICE)
    # admins see everything; a prefix of the owner's key (an HTTP API key) sees it too
    assert (await bot.status(handle.job_id, ADMIN)).state is JobState.DONE
    assert (await bot.image(handle.job_id, UserRef(PLATFORM, "team"))).job_id == handle.job_id
    with pytest.raises(NotFound):
        await bot.status(handle.job_id, UserRef(PLATFORM, "tea"))


# ---------------------------------------------------------------- admin and access


async def test_admin_operations_allowed_for_admins_refused_for_others(bot: Bot) -> None:
    for refused in (
        bot.limits_show(ALICE, BOB.key),
        bot.limits_set(ALICE, BOB.key, chat_per_window=1),
        bot.limits_reset(ALICE, BOB.key),
        bot.admins_add(ALICE, ALICE.key),
        bot.admins_list(ALICE),
        bot.block(ALICE, BOB.key),
        bot.unblock(ALICE, BOB.key),
    ):
        with pytest.raises(Forbidden) as info:
            await refused
        assert info.value.user_message == ADMINS_ONLY

    dave = UserRef(PLATFORM, "dave")
    report = await bot.limits_set(ADMIN, dave.key, chat_per_window=7)
    assert report.override_chat_per_window == 7 and report.chat.limit == 7
    assert (await bot.usage(dave, ROOM)).chat.limit == 7
    assert (await bot.limits_reset(ADMIN, dave.key)).override_chat_per_window is None

    assert await bot.admins_add(ADMIN, dave.key) == dave.key
    assert dave.key in await bot.admins_list(dave)  # dave is an admin now
    with pytest.raises(InvalidInput):
        await bot.admins_remove(dave, ADMIN.key)  # configured admins stay
    await bot.admins_remove(ADMIN, dave.key)
    with pytest.raises(Forbidden):
        await bot.admins_list(dave)
    with pytest.raises(InvalidInput):
        await bot.block(ADMIN, ADMIN.key)
    for malformed in ("no colon here", "memory:nul\x00byte", "memory:esc\x1b[2J", "memory:" + "x" * 300):
        with pytest.raises(InvalidInput):
            await bot.block(ADMIN, malformed)


async def test_a_blocked_user_gets_one_clear_refusal_until_unblocked(bot: Bot) -> None:
    eve = UserRef(PLATFORM, "eve")
    await bot.block(ADMIN, eve.key)
    assert eve.key in await bot.blocked_list(ADMIN)
    for refused in (
        bot.submit_turn(eve, ROOM, "hello"),
        bot.imagine(eve, ROOM, ImageParams(prompt="x")),
        bot.reset(eve, ROOM),
        bot.queue(eve, ROOM),
        bot.usage(eve, ROOM),
    ):
        with pytest.raises(Forbidden) as info:
            await refused
        assert info.value.user_message == BLOCKED
    await bot.unblock(ADMIN, eve.key)
    events = await collect(await bot.submit_turn(eve, ROOM, "hello again"))
    assert isinstance(events[-1], TurnDone)


async def test_allow_lists_per_platform(tiny_models: Any, tmp_path: Path) -> None:
    settings = bot_settings(
        tiny_models,
        tmp_path,
        allowed_users=["telegram:1", "telegram:2"],
        allowed_chats=["telegram:-100", "discord:guild-7"],
    )
    async with running_app(settings) as app:
        bot = app.bot
        with pytest.raises(Forbidden) as info:
            await bot.reset(UserRef("telegram", "3"), ChatRef("telegram", "-100"))
        assert info.value.user_message == NOT_ALLOWED_USER
        with pytest.raises(Forbidden) as info:
            await bot.reset(UserRef("telegram", "1"), ChatRef("telegram", "-200"))
        assert info.value.user_message == NOT_ALLOWED_CHAT
        await bot.reset(UserRef("telegram", "1"), ChatRef("telegram", "-100"))
        # a channel of an allowed guild is allowed; another guild's is not
        await bot.reset(UserRef("discord", "9"), ChatRef("discord", "chan-1", parent_id="guild-7"))
        with pytest.raises(Forbidden):
            await bot.reset(UserRef("discord", "9"), ChatRef("discord", "chan-2", parent_id="guild-8"))
        # platforms not named stay open; admins pass every list
        await bot.reset(UserRef("http", "k:anyone"), ChatRef("http", "k:anyone"))
        await bot.reset(ADMIN, ChatRef("telegram", "-999"))


# ---------------------------------------------------------------- chat settings


async def test_reasoning_modes(bot: Bot, app: App) -> None:
    chat = ChatRef(PLATFORM, "thinkers")
    assert (await bot.chat_settings(ALICE, chat)).reasoning == app.settings.reasoning_mode
    assert await bot.set_reasoning(ALICE, chat, "off") == "off"
    quiet = await bot.submit_turn(ALICE, chat, "answer at once")
    quiet_events = await collect(quiet)
    stored = await app.store.get_job(quiet.job_id)
    assert stored is not None and stored.payload["reasoning"] == "off"
    assert not any(isinstance(e, Thinking) for e in quiet_events)

    # full reasoning: the tiny model never closes </think>, so it thinks to the bound
    loud = await bot.submit_turn(ALICE, chat, "think first", TurnOptions(reasoning="full", show_reasoning=True))
    loud_events = await collect(loud)
    assert any(isinstance(e, Thinking) for e in loud_events)
    done = loud_events[-1]
    assert isinstance(done, TurnDone) and done.reasoning is not None
    assert 0 < len(done.reasoning) <= app.settings.reasoning_full_chars + 40
    # asking to see the reasoning in an "off" chat reasons a little for that message
    await bot.set_reasoning(ALICE, chat, "off")
    shown = await bot.submit_turn(ALICE, chat, "show me", TurnOptions(show_reasoning=True))
    await collect(shown)
    stored = await app.store.get_job(shown.job_id)
    assert stored is not None and stored.payload["reasoning"] == "short"
    with pytest.raises(InvalidInput):
        await bot.set_reasoning(ALICE, chat, "sometimes")
    assert await bot.set_reasoning(ALICE, chat, None) == app.settings.reasoning_mode


async def test_image_defaults_of_a_chat(bot: Bot) -> None:
    chat = ChatRef(PLATFORM, "gallery")
    await bot.set_image_defaults(ALICE, chat, ImageParams(prompt="", steps=3, cfg=4.0, negative_prompt="blur"))
    defaults = (await bot.chat_settings(ALICE, chat)).image_defaults
    assert defaults is not None and defaults.steps == 3 and defaults.cfg == 4.0
    events = await collect(await bot.imagine(ALICE, chat, ImageParams(prompt="a tree", seed=3)))
    ready = next(e for e in events if isinstance(e, ImageReady))
    assert ready.params["steps"] == 3 and ready.params["cfg"] == 4.0 and ready.params["negative_prompt"] == "blur"
    # explicit values win over the defaults
    events = await collect(await bot.imagine(ALICE, chat, ImageParams(prompt="a tree", steps=2)))
    assert next(e for e in events if isinstance(e, ImageReady)).params["steps"] == 2
    with pytest.raises(BadParameter):
        await bot.set_image_defaults(ALICE, chat, ImageParams(prompt="", width=100, height=100))
    await bot.set_image_defaults(ALICE, chat, None)
    assert (await bot.chat_settings(ALICE, chat)).image_defaults is None


# ---------------------------------------------------------------- restarts and delivery


async def test_interrupted_turn_resumes_after_restart_and_undelivered_are_listed_once(
    tiny_models: Any, tmp_path: Path
) -> None:
    settings = bot_settings(tiny_models, tmp_path)
    async with running_app(settings, grace_s=0.2) as first:
        slow = await first.bot.imagine(ALICE, ROOM, ImageParams(prompt="slow", steps=SLOW_STEPS // 2))
        finished = await first.bot.submit_turn(ALICE, ROOM, "finished before the restart")
        assert isinstance((await collect(finished))[-1], TurnDone)
        delivered = await first.bot.submit_turn(ALICE, ROOM, "posted and marked")
        await collect(delivered)
        await first.bot.mark_delivered(delivered.job_id)
        await first.bot.record_delivery(finished.job_id, "message_ids", [41, 42])
        # turns submitted in this process are delivered live: never listed here
        assert await first.bot.claim_undelivered(PLATFORM) == []
        await first_of(slow, ImageProgress)
        reading = asyncio.create_task(collect(slow))
        await first.stop()
        events = await reading
        assert isinstance(events[-1], TurnInterrupted) and events[-1].message

    async with running_app(settings) as second:
        pending = await second.bot.claim_undelivered(PLATFORM)
        by_id = {turn.job_id: turn for turn in pending}
        assert set(by_id) == {slow.job_id, finished.job_id}
        assert by_id[finished.job_id].delivery == {"message_ids": [41, 42]}
        assert by_id[finished.job_id].state is JobState.DONE
        assert await second.bot.claim_undelivered(PLATFORM) == []  # handed out once
        resumed = await collect(await second.bot.resume(slow.job_id, ALICE), timeout=180)
        assert isinstance(resumed[-1], TurnDone) and resumed[-1].image_id
        replayed = await collect(await second.bot.resume(finished.job_id, ALICE))
        reply = next(e for e in replayed if isinstance(e, ReplyDone))
        assert reply.text and isinstance(replayed[-1], TurnDone)
        for job_id in by_id:
            await second.bot.mark_delivered(job_id)

    async with running_app(settings) as third:
        assert await third.bot.claim_undelivered(PLATFORM) == []


async def test_reroll_and_cancel_mine(bot: Bot, app: App) -> None:
    chat = ChatRef(PLATFORM, "reroll-room")
    first = await bot.imagine(ALICE, chat, ImageParams(prompt="a fox", steps=2, seed=77))
    await collect(first)
    # anyone in the chat may re-roll; the new picture is theirs, same settings, new seed
    again = await bot.reroll(first.job_id, BOB, chat)
    events = await collect(again)
    ready = next(e for e in events if isinstance(e, ImageReady))
    assert ready.params["prompt"] == "a fox" and ready.params["steps"] == 2 and ready.params["seed"] != 77
    assert (await bot.status(again.job_id, BOB)).user == BOB
    with pytest.raises(NotFound):  # not from another chat, by someone who cannot see it
        await bot.reroll(first.job_id, BOB, ChatRef(PLATFORM, "elsewhere"))

    slow = await bot.imagine(ALICE, chat, ImageParams(prompt="slow", steps=SLOW_STEPS))
    queued = await bot.imagine(ALICE, chat, ImageParams(prompt="next", steps=2))
    elsewhere = await bot.imagine(ALICE, ChatRef(PLATFORM, "other"), ImageParams(prompt="other", steps=2))
    cancelled = await bot.cancel_mine(ALICE, chat)
    assert {s.job_id for s in cancelled} == {slow.job_id, queued.job_id}
    assert all(s.state is JobState.CANCELLED for s in cancelled)
    assert isinstance((await collect(elsewhere))[-1], TurnDone)  # another chat's job runs on
