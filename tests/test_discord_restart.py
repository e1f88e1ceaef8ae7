"""The Discord adapter across restarts, under ``ovbot serve``, and in the logs: each test
starts its own App (one after another on the same SQLite file where it restarts) and
its own discord.py client against a fake Discord that outlives the restarts, as the
real one does."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from ovbot.adapters.discord import build_discord_adapter
from ovbot.core.logging_setup import configure_logging
from ovbot.bots.serve import configured_adapters, serve
from ovbot.core.access import NOT_ALLOWED_CHAT, NOT_ALLOWED_USER
from ovbot.core.domain import ChatRef, UserRef
from tests.fakes.fake_discord import FakeDiscord, FakeUser
from tests.fixtures_app import running_app
from tests.test_adapters import free_port
from tests.test_discord import (
    CHANNEL,
    GUILD,
    OTHER_CHANNEL,
    SLOW_STEPS,
    discord_settings,
    ephemeral_answer,
    fast_options,
    final_original,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANN = FakeUser(9201, "ann")
BOB = FakeUser(9202, "bob")
#: long enough to be cut off by the restart, short enough to finish quickly after it
DRAWING_STEPS = 120
#: what a restart does on the REST API when it has nothing to deliver
START_ROUTES = {"get_me", "app_info", "sync_guild"}


async def test_a_reply_finished_while_down_is_delivered_exactly_once(tiny_models: Any, tmp_path: Path) -> None:
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as fake:
        settings = discord_settings(tiny_models, tmp_path, fake)
        async with running_app(settings) as app:
            # delivery is cut off as by a crash: no grace for replies in flight
            adapter = build_discord_adapter(app.bot, settings, fast_options(stop_grace_s=0))
            await adapter.start()
            interaction = await fake.slash("chat", {"message": "answer me later"}, user=ANN)
            first = await fake.wait_for(lambda: (m := fake.original(interaction.token)) is not None and m.buttons_seen and m)
            await adapter.stop()
            job_id = first.job_id()
            user, chat = UserRef("discord", str(ANN.id)), ChatRef("discord", str(CHANNEL), str(GUILD))
            for _ in range(600):  # the job finishes with nobody delivering it
                if not await app.bot.queue(user, chat):
                    break
                await asyncio.sleep(0.05)
            status = await app.bot.status(job_id, user)
            assert status.state.value == "done" and not first.finished

        for attempt in range(2):  # two restarts: the first delivers, the second has nothing to do
            calls = len(fake.calls)
            async with running_app(settings) as app:
                adapter = build_discord_adapter(app.bot, settings, fast_options())
                await adapter.start()
                if attempt == 0:
                    await fake.wait_for(lambda: first.finished, 60, what="the late reply")
                await adapter.stop()
            routes = [c.route for c in fake.calls[calls:]]
            if attempt == 0:
                # the interaction token is not kept: the bot's own routes edit the same message
                assert set(routes) - START_ROUTES == {"channel_edit"}, routes
                assert first.content == (status.text or "🤷 (no answer)").strip()
            else:
                assert set(routes) <= START_ROUTES, routes
        texts = [m for m in fake.channel_messages(CHANNEL) if m.content == first.content]
        assert texts == [first]
        assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


async def test_a_mention_answered_only_after_a_restart_still_replies_to_its_message(
    tiny_models: Any, tmp_path: Path
) -> None:
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as fake:
        settings = discord_settings(tiny_models, tmp_path, fake)
        async with running_app(settings) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options(stop_grace_s=0))
            await adapter.start()
            fake.fail("channel_send", 503, times=1000)  # no message gets out before the stop
            asked = await fake.say(ANN, "answer me after the restart", mention_bot=True)
            await fake.wait_for(lambda: fake.calls_of("channel_send"), 30, what="a refused send")
            await adapter.stop()
        fake.clear_failures()
        assert fake.channel_messages(CHANNEL) == []

        async with running_app(settings) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options())
            await adapter.start()
            for _ in range(1200):  # until the reply is delivered
                if not [j for j in await app.store.undelivered_jobs("discord", 0) if not j.payload.get("parent_job_id")]:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the reply was not delivered after the restart")
            await adapter.stop()
        (reply,) = fake.channel_messages(CHANNEL)
        assert reply.reference_id == asked.id  # a reply to the question, as it would have been
        assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


async def test_a_streaming_reply_is_completed_after_a_restart_and_its_buttons_still_work(
    tiny_models: Any, tmp_path: Path
) -> None:
    async with FakeDiscord(guilds={GUILD: [CHANNEL, OTHER_CHANNEL]}) as fake:
        settings = discord_settings(tiny_models, tmp_path, fake)
        async with running_app(settings, grace_s=0.5) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options())
            await adapter.start()
            drawing = await fake.slash("imagine", {"prompt": "an interrupted boat", "steps": DRAWING_STEPS}, user=ANN)
            started = await fake.wait_for(lambda: (m := fake.original(drawing.token)) is not None and "step" in m.content and m)
            waiting = await fake.slash("imagine", {"prompt": "never mind", "steps": SLOW_STEPS}, user=BOB)
            queued = await fake.wait_for(lambda: (m := fake.original(waiting.token)) is not None and "Queued" in m.content and m)
            await app.stop()  # running jobs get 0.5 s, then are released for the next start
            await fake.wait_for(lambda: "restarting" in started.content, 30, what="the restart notice")
            await adapter.stop()
        assert not started.finished

        async with running_app(settings) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options())
            await adapter.start()
            # the cancel button from before the restart still works
            pressed = await fake.click(queued, queued.custom_ids()[0], user=BOB)
            answer = await fake.wait_for(lambda: next((m for m in fake.replies_to(pressed.token) if m.content), None))
            assert answer.content == "🚫 Cancelled." and answer.ephemeral
            await fake.wait_for(lambda: queued.finished and queued.content.endswith("🚫 Cancelled."), 60)

            await fake.wait_for(lambda: started.finished, 90, what="the resumed picture")
            assert started.content == "🎨 Here is your picture."
            # the picture went on where it stopped, with its progress shown (the last step
            # itself may be overtaken by the finished picture: the newest state wins)
            resumed = started.history[next(i for i, state in enumerate(started.history) if "restarting" in state) + 1 :]
            assert any(f"/{DRAWING_STEPS}" in state for state in resumed)
            pictures = [m for m in fake.channel_messages(CHANNEL) if m.files]
            assert len(pictures) == 1 and pictures[0].interaction_token is None  # posted once, through the channel
            # ... and its re-roll button works on the new client
            reroll = await fake.click(pictures[0], pictures[0].custom_ids()[0], user=ANN)
            await final_original(fake, reroll.token)
            assert len([m for m in fake.replies_to(reroll.token) if m.files]) == 1
            await adapter.stop()
        assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


async def test_the_token_never_appears_in_the_logs_at_debug(
    tiny_models: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as fake:
        settings = discord_settings(tiny_models, tmp_path, fake)
        configure_logging("DEBUG", settings.secrets())
        logging.getLogger("discord").setLevel(logging.DEBUG)  # even discord.py's own chatter
        async with running_app(settings) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options())
            await adapter.start()
            interaction = await fake.slash("chat", {"message": "log me"}, user=ANN)
            await final_original(fake, interaction.token)
            await fake.say(ANN, "and this", mention_bot=True)
            await fake.wait_for(lambda: any(m.finished for m in fake.channel_messages(CHANNEL) if m.reference_id), 60)
            logging.getLogger("ovbot.test").debug("the token is %s", fake.token)  # the check can fail
            await adapter.stop()
        err = capsys.readouterr().err
        assert "ovbot.discord" in err and "discord.gateway" in err, err[-2000:]
        assert fake.token not in err
        assert fake.token.split(".")[-1] not in err
        assert "the token is [REDACTED]" in err


async def test_serve_runs_the_discord_adapter_when_its_token_is_set(tiny_models: Any, tmp_path: Path) -> None:
    port = free_port()
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as fake:
        settings = discord_settings(tiny_models, tmp_path, fake, http_host="127.0.0.1", http_port=port)
        serving = asyncio.create_task(serve(settings, grace_s=1))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client:
            for _ in range(1200):
                try:
                    ready = await client.get("/ready")
                    if ready.status_code == 200 and "adapter_discord" in ready.json()["checks"]:
                        break
                except httpx.TransportError:
                    pass
                assert not serving.done(), serving
                await asyncio.sleep(0.05)
            assert ready.json()["checks"]["adapter_discord"]["ok"] is True
            interaction = await fake.slash("chat", {"message": "served"}, user=ANN)
            reply = await final_original(fake, interaction.token)
            assert reply.content.strip()
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler takes it
        assert await asyncio.wait_for(serving, 60) == 0
        assert not fake.connected
        assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


async def test_allowed_guilds_and_roles_decide_who_is_answered_where(tiny_models: Any, tmp_path: Path) -> None:
    member, outsider, wanderer = FakeUser(9301, "member", roles=(777,)), FakeUser(9302, "outsider"), FakeUser(9303, "wanderer")
    async with FakeDiscord(guilds={GUILD: [CHANNEL], 222: [2221]}, roles={GUILD: [777]}) as fake:
        settings = discord_settings(
            tiny_models,
            tmp_path,
            fake,
            allowed_chats=[f"discord:{GUILD}"],  # a whole guild
            allowed_roles=["discord:777"],
            allowed_users=[f"discord:{wanderer.id}"],
        )
        async with running_app(settings) as app:
            adapter = build_discord_adapter(app.bot, settings, fast_options())
            await adapter.start()
            welcome = await fake.slash("chat", {"message": "hi"}, user=member, channel_id=CHANNEL)
            assert (await final_original(fake, welcome.token)).content.strip()
            refused = {
                "no role": await fake.slash("chat", {"message": "hi"}, user=outsider, channel_id=CHANNEL),
                "other guild": await fake.slash("chat", {"message": "hi"}, user=wanderer, guild_id=222, channel_id=2221),
                "DM (no roles there)": await fake.slash("chat", {"message": "hi"}, user=member, guild_id=None),
            }
            answers = {why: await ephemeral_answer(fake, i.token) for why, i in refused.items()}
            await adapter.stop()
        assert answers == {
            "no role": "⛔ " + NOT_ALLOWED_USER,
            "other guild": "⛔ " + NOT_ALLOWED_CHAT,
            "DM (no roles there)": "⛔ " + NOT_ALLOWED_USER,
        }
        assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


async def test_without_a_token_serve_builds_no_discord_adapter(tiny_models: Any, tmp_path: Path) -> None:
    settings = discord_settings(tiny_models, tmp_path, FakeDiscord(), discord_token=None)
    assert configured_adapters(object(), settings) == []  # type: ignore[arg-type]
