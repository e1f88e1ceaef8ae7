"""Telegram updates survive a crash and are handled once (adapters/telegram/inbox.py).

The real python-telegram-bot client against the fake Bot API server
(tests/fakes/fake_telegram.py). The kill test runs ``ovbot serve`` as a user does, in
a subprocess, and kills it (SIGKILL) after python-telegram-bot confirmed a batch whose
updates were not handled yet: without the durable inbox that message is lost, because
Telegram never sends a confirmed update again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.adapters.telegram.texts import NOT_PROCESSED
from ovbot.core.bot import UPDATE_MAX_ATTEMPTS
from tests.fakes.fake_telegram import TOKEN, FakeTelegram
from tests.fixtures_app import running_app
from tests.fixtures_serve import ovbot_serve
from tests.sentinels import TELEGRAM_WEBHOOK_SECRET
from tests.test_telegram import adapter_for, telegram_settings

NO_PROXY = "127.0.0.1,localhost"
#: the adapter's key in the update log: updates are per Telegram bot (the token's id)
INBOX = "telegram:" + TOKEN.split(":")[0]


@pytest_asyncio.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    monkeypatch.setenv("NO_PROXY", NO_PROXY)
    server = FakeTelegram()
    await server.start()
    yield server
    server.assert_clean()
    await server.stop()


def update_rows(db: Path) -> list[tuple[int, bool]]:
    """(update_id, handled) of every stored Telegram update, read as another process."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        query = "SELECT update_id, handled_at IS NOT NULL FROM platform_updates WHERE platform = ?"
        return [(int(i), bool(h)) for i, h in conn.execute(query + " ORDER BY update_id", (INBOX,))]
    finally:
        conn.close()


def button_press(fake: FakeTelegram, user: dict[str, Any], chat: dict[str, Any], query_id: str) -> int:
    """A press of a button under an old bot message; its handler answers the query
    first (``answerCallbackQuery``), so a held answer keeps that handler blocked."""
    old = {"message_id": 1, "date": 0, "chat": chat, "from": fake.bot_user, "text": "old"}
    return fake.inject(
        {"callback_query": {"id": query_id, "from": user, "message": old, "chat_instance": "ci", "data": "stale"}}
    )


def private_message(fake: FakeTelegram, user: dict[str, Any], text: str, message_id: int) -> dict[str, Any]:
    chat = fake.private_chat(user)
    return {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": user, "text": text}


async def test_an_update_confirmed_before_a_kill_is_answered_exactly_once_after_the_restart(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    env = {"OVBOT_TELEGRAM_TOKEN": TOKEN, "OVBOT_TELEGRAM_API_BASE": fake.api_base, "NO_PROXY": NO_PROXY}
    ann = fake.person(9601, "Ann")
    chat = fake.private_chat(ann)
    # one batch: a button press whose handler will hang, and a message queued behind it
    fake.hold("answerCallbackQuery")
    press_update = button_press(fake, ann, chat, "cb-kill")
    fake.say(chat, ann, "hello after a crash")
    message_update = press_update + 1

    async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
        # python-telegram-bot asked past the batch (Telegram now forgets it) while the
        # first handler is still blocked and the message was not handled
        await fake.wait_until(
            lambda: fake.confirmed_offset > message_update and fake.calls_of("answerCallbackQuery"),
            what="the batch confirmed with its first handler blocked",
        )
        served.signal_group(signal.SIGKILL)
        await served.process.wait()
    held = len(fake.calls_of("answerCallbackQuery"))  # made by the killed process
    fake.release("answerCallbackQuery")
    assert not fake.bot_messages(ann["id"]) and not fake.calls_of("sendMessageDraft", ann["id"])
    db = tmp_path / "data" / "ovbot.db"
    assert update_rows(db) == [(press_update, False), (message_update, False)]

    async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
        answer = await fake.wait_until(lambda: fake.bot_messages(ann["id"]), what="the answer after the restart")
        await fake.wait_until(
            lambda: update_rows(db) == [(press_update, True), (message_update, True)],
            what="both updates handled",
        )
        await asyncio.sleep(2)  # room for a second answer, which must not come
        assert await served.stop(signal.SIGTERM) == 0
    assert [m.message_id for m in fake.bot_messages(ann["id"])] == [answer[0].message_id]
    answered = [c for c in fake.calls_of("answerCallbackQuery")[held:] if c.status == 200]
    assert [c.params.get("callback_query_id") for c in answered] == ["cb-kill"]
    # and the batch stays confirmed: Telegram will not send it a third time
    assert fake.confirmed_offset > message_update


async def test_duplicates_are_dropped_and_an_all_duplicate_batch_is_still_confirmed(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    bo = fake.person(9602, "Bo")
    async with running_app(telegram_settings(tiny_models, tmp_path, fake)) as app:
        # update 500 was handled before (Telegram sends it again: ovbot died before the
        # confirming getUpdates); 501 was stored, its replay is due at start
        handled = {"update_id": 500, "message": private_message(fake, bo, "/usage", 50)}
        waiting = {"update_id": 501, "message": private_message(fake, bo, "/help", 51)}
        await app.bot.remember_updates(INBOX, [(500, "{}"), (501, json.dumps(waiting))])
        await app.bot.update_handled(INBOX, 500)
        fake.inject(handled)
        fake.inject(waiting)  # also re-sent: the replay answers it, this copy is dropped
        adapter = adapter_for(app)
        await adapter.start()
        try:
            await fake.wait_until(lambda: fake.confirmed_offset > 501, what="the duplicates confirmed")
            posted = await fake.wait_until(lambda: fake.bot_messages(bo["id"]), what="the replayed /help")
            await asyncio.sleep(1.5)
            assert len(fake.bot_messages(bo["id"])) == 1
            assert not posted[0].body.startswith("Usage of")  # 500 was not handled again
            assert await app.bot.unhandled_updates(INBOX) == []
        finally:
            await adapter.stop()


async def test_a_webhook_update_is_stored_before_200_and_a_resend_is_not_handled_again(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    from tests.test_adapters import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    secret = TELEGRAM_WEBHOOK_SECRET
    cy = fake.person(9603, "Cy")
    async with running_app(telegram_settings(tiny_models, tmp_path, fake)) as app:
        config = TelegramConfig(
            token=TOKEN, api_base=fake.api_base, mode="webhook", webhook_url=url, webhook_port=port, webhook_secret=secret
        )
        hooked = TelegramAdapter(app.bot, config)
        await hooked.start()
        try:
            update = {"update_id": 700, "message": private_message(fake, cy, "/usage", 70)}
            headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
            async with httpx.AsyncClient(trust_env=False) as client:
                assert (await client.post(url, json=update, headers=headers)).status_code == 200
                stored = [update_id for update_id, _ in await app.bot.unhandled_updates(INBOX)]
                # durable when the 200 came (or already handled, if that was quicker)
                assert stored in ([700], []) and not await app.bot.remember_updates(INBOX, [(700, "{}")])
                await fake.wait_until(lambda: fake.bot_messages(cy["id"]), what="the answer")
                assert (await client.post(url, json=update, headers=headers)).status_code == 200
            await asyncio.sleep(1.5)
            assert len(fake.bot_messages(cy["id"])) == 1
            assert await app.bot.unhandled_updates(INBOX) == []
        finally:
            await hooked.stop()


# ---------------------------------------------------------------- poison updates, held replies


def update_state(db: Path, update_id: int) -> tuple[int, bool, bool, bool]:
    """(tries, handled, given up, replies waiting to be sent) of one stored update."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        row = conn.execute(
            "SELECT attempts, handled_at IS NOT NULL, abandoned_at IS NOT NULL, replies IS NOT NULL "
            "FROM platform_updates WHERE platform = ? AND update_id = ?",
            (INBOX, update_id),
        ).fetchone()
    finally:
        conn.close()
    assert row is not None, f"update {update_id} was never stored"
    return int(row[0]), bool(row[1]), bool(row[2]), bool(row[3])


def command(fake: FakeTelegram, user: dict[str, Any], text: str, message_id: int) -> dict[str, Any]:
    """A private message that is a command (with the entity Telegram's clients add)."""
    message = private_message(fake, user, text, message_id)
    message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return message


def serve_env_for(fake: FakeTelegram) -> dict[str, str]:
    return {"OVBOT_TELEGRAM_TOKEN": TOKEN, "OVBOT_TELEGRAM_API_BASE": fake.api_base, "NO_PROXY": NO_PROXY}


async def test_an_update_that_kills_the_bot_every_time_is_given_up_and_its_user_told(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    env = serve_env_for(fake)
    dee = fake.person(9604, "Dee")
    chat = fake.private_chat(dee)
    db = tmp_path / "data" / "ovbot.db"
    # the press's handler blocks in its first call; killing the bot there stands for an
    # update whose handling ends the process (each start replays it)
    fake.hold("answerCallbackQuery")
    poison = button_press(fake, dee, chat, "cb-poison")
    for attempt in range(1, UPDATE_MAX_ATTEMPTS + 1):
        async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
            await fake.wait_until(
                lambda: len(fake.calls_of("answerCallbackQuery")) == attempt, what=f"try {attempt} inside its handler"
            )
            # the try was counted (committed) before the handler ran
            assert update_state(db, poison) == (attempt, False, False, False)
            served.signal_group(signal.SIGKILL)
            await served.process.wait()
    normal = fake.inject({"message": command(fake, dee, "/usage", 90)})

    async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
        posted = await fake.wait_until(
            lambda: fake.bot_messages(dee["id"]) if len(fake.bot_messages(dee["id"])) >= 2 else None,
            what="the notice and the answer to the next message",
        )
        await fake.wait_until(
            lambda: update_state(db, normal)[1:] == (True, False, False) and not update_state(db, poison)[3],
            what="both replies marked sent",
        )
        await asyncio.sleep(1.5)  # room for another try or another message, which must not come
        assert await served.stop(signal.SIGTERM) == 0
        output = served.output
    fake.release("answerCallbackQuery")
    assert [m.body for m in fake.bot_messages(dee["id"])] == [posted[0].body, posted[1].body]
    assert posted[0].body == NOT_PROCESSED
    assert posted[1].body.startswith("Usage of")
    # not run a fourth time: the handler's first call was made by the three killed tries only
    assert len(fake.calls_of("answerCallbackQuery")) == UPDATE_MAX_ATTEMPTS
    assert update_state(db, poison) == (UPDATE_MAX_ATTEMPTS + 1, True, True, False)
    assert update_state(db, normal) == (1, True, False, False)
    given_up = [line for line in output.splitlines() if f"update {poison} was tried" in line]
    assert len(given_up) == 1 and "given up" in given_up[0]


async def test_a_command_reply_in_flight_when_the_bot_is_killed_is_sent_once_after_the_restart(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    env = serve_env_for(fake)
    eve = fake.person(9605, "Eve")
    db = tmp_path / "data" / "ovbot.db"
    fake.hold("sendMessage")  # the reply reaches the server, which does not answer yet
    asked = fake.inject({"message": command(fake, eve, "/usage", 91)})

    async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
        await fake.wait_until(lambda: fake.calls_of("sendMessage", eve["id"]), what="the reply on its way")
        # handled (its job done: the command ran) and the reply committed with the mark
        assert update_state(db, asked) == (1, True, False, True)
        served.signal_group(signal.SIGKILL)
        await served.process.wait()
    # the fake drops a held call whose client went away (the message never got through);
    # give it a moment to see the closed connection before the gate opens
    await asyncio.sleep(0.5)
    fake.release("sendMessage")
    await asyncio.sleep(0.2)
    assert not fake.bot_messages(eve["id"])

    async with ovbot_serve(tiny_models, tmp_path, new_session=True, **env) as served:
        answer = await fake.wait_until(lambda: fake.bot_messages(eve["id"]), what="the reply after the restart")
        await fake.wait_until(lambda: not update_state(db, asked)[3], what="the reply marked sent")
        await asyncio.sleep(1.5)  # room for a second copy, which must not come
        assert await served.stop(signal.SIGTERM) == 0
    assert [m.message_id for m in fake.bot_messages(eve["id"])] == [answer[0].message_id]
    assert answer[0].body.startswith("Usage of")
    assert update_state(db, asked) == (1, True, False, False)  # the command did not run again


async def test_a_reply_a_stop_cut_off_is_sent_once_at_the_next_start(
    tiny_models: Any, tmp_path: Path, fake: FakeTelegram
) -> None:
    fay = fake.person(9606, "Fay")
    async with running_app(telegram_settings(tiny_models, tmp_path, fake)) as app:
        fake.hold("sendMessage")
        asked = fake.inject({"message": command(fake, fay, "/help", 92)})
        adapter = adapter_for(app, stop_grace_s=0.3)
        await adapter.start()
        try:
            await fake.wait_until(lambda: fake.calls_of("sendMessage", fay["id"]), what="the reply on its way")
        finally:
            await adapter.stop()  # the grace runs out: the send is cancelled, not marked sent
        await asyncio.sleep(0.3)
        fake.release("sendMessage")
        assert [update_id for update_id, _ in await app.bot.unsent_replies(INBOX)] == [asked]
        assert not fake.bot_messages(fay["id"])
        # a new process starts its chat pacing afresh; a real restart (process, models)
        # takes seconds, so the previous call is over a second old by the time it sends
        await asyncio.sleep(1.0)

        again = adapter_for(app)
        await again.start()
        try:
            answer = await fake.wait_until(lambda: fake.bot_messages(fay["id"]), what="the reply after the start")
            deadline = time.monotonic() + 10
            while await app.bot.unsent_replies(INBOX):
                assert time.monotonic() < deadline, "the reply was never marked sent"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # room for a second copy, which must not come
            assert [m.message_id for m in fake.bot_messages(fay["id"])] == [answer[0].message_id]
            assert "/usage" in answer[0].body  # the help text
            assert await app.bot.unhandled_updates(INBOX) == []  # /help was handled once, not replayed
        finally:
            await again.stop()
