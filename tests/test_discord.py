"""The Discord adapter end to end: the real discord.py client against a fake Discord
(gateway + REST, ``tests/fakes/fake_discord.py``) on 127.0.0.1, the real core on the
tiny models, a real SQLite file. One App and one connected adapter serve the module;
each test uses its own users so their limits do not meet.

After every test the fake must have seen no message without ``AllowedMentions.none()``,
no ping, nothing over 2000 characters and no route it does not serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio

from ovbot.adapters.common import render_live, utf16_length
from ovbot.adapters.discord import DiscordAdapter, DiscordOptions, build_discord_adapter
from ovbot.adapters.discord.target import DiscordReplyTarget
from ovbot.core.app import App
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, JobState, UserRef
from ovbot.core.turns import ReplyDone, TextDelta, TurnDone, TurnEvent
from tests.fakes.fake_discord import EPHEMERAL, FakeDiscord, FakeMessage, FakeUser
from tests.fixtures_app import ADMIN_KEY, bot_settings, running_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

GUILD = 111
CHANNEL = 1111
OTHER_CHANNEL = 1112
ADMIN = FakeUser(9001, "root", permissions=1 << 5)  # Manage Server
SLOW_STEPS = 400  # ~6 s of tiny-model steps: long enough to act while it runs


class WallClock:
    """The adapter's wall clock, movable: interaction tokens expire by it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def discord_settings(tiny_models: Any, data_dir: Path, fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        admins=[ADMIN_KEY, f"discord:{ADMIN.id}"],
        discord_token=fake.token,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
        discord_guild_ids=[GUILD],
        reasoning_mode="short",  # a "thinking" state to stream
    )
    values.update(overrides)
    return bot_settings(tiny_models, data_dir, **values)


def fast_options(clock: WallClock | None = None, **overrides: Any) -> DiscordOptions:
    values: dict[str, Any] = dict(edit_interval_s=0.05, guild_ready_timeout_s=0.05, stop_grace_s=10.0)
    if clock is not None:
        values["wall_clock"] = clock
    values.update(overrides)
    return DiscordOptions(**values)


async def final_original(fake: FakeDiscord, token: str, timeout: float = 90.0) -> FakeMessage:
    """The interaction's reply once it is final (its cancel button removed)."""

    def done() -> FakeMessage | None:
        message = fake.original(token)
        return message if message is not None and message.finished else None

    return await fake.wait_for(done, timeout, what=f"the final reply of {token[:20]}")


async def ephemeral_answer(fake: FakeDiscord, token: str, timeout: float = 30.0) -> str:
    def answered() -> FakeMessage | None:
        return next((m for m in fake.replies_to(token) if m.ephemeral and m.content), None)

    message = await fake.wait_for(answered, timeout, what="an ephemeral answer")
    return message.content


# ---------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guilds={GUILD: [CHANNEL, OTHER_CHANNEL]}) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory, fake: FakeDiscord) -> AsyncIterator[App]:
    async with running_app(discord_settings(tiny_models, tmp_path_factory.mktemp("discord"), fake)) as running:
        yield running


@pytest.fixture(scope="module")
def clock() -> WallClock:
    return WallClock()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(app: App, fake: FakeDiscord, clock: WallClock) -> AsyncIterator[DiscordAdapter]:
    running = build_discord_adapter(app.bot, app.settings, fast_options(clock))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def nothing_unsafe_reached_discord(fake: FakeDiscord, clock: WallClock) -> Iterator[None]:
    yield
    clock.offset = fake.clock_offset = 0.0
    assert fake.violations == []
    assert fake.pings == []
    assert fake.unhandled == []


# ---------------------------------------------------------------- start-up


async def test_login_ready_and_command_sync(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    assert adapter.health().ok, adapter.health()
    assert [c.route for c in fake.calls[:3]] == ["get_me", "app_info", "sync_guild"]
    identify = next(op["d"] for op in fake.gateway_ops if op["op"] == 2)
    assert identify["token"] == fake.token
    privileged = discord.Intents(members=True, presences=True, message_content=True).value
    assert identify["intents"] & privileged == 0, "no privileged intent is needed"
    assert discord.Intents._from_value(identify["intents"]).guild_messages

    commands = {c["name"]: c for c in fake.commands[str(GUILD)]}
    assert set(commands) == {
        "chat", "imagine", "reset", "persona", "think", "queue", "cancel", "usage", "help",
        "limits", "admins", "block", "unblock",
    }  # fmt: skip
    for command in commands.values():
        assert command["description"], command["name"]
    message = commands["chat"]["options"][0]
    assert (message["name"], message["required"], message["min_length"], message["max_length"]) == (
        "message", True, 1, app.settings.max_message_chars,
    )  # fmt: skip
    imagine = {o["name"]: o for o in commands["imagine"]["options"]}
    assert imagine["prompt"]["required"] and not imagine["steps"]["required"]
    assert (imagine["steps"]["min_value"], imagine["steps"]["max_value"]) == (1, app.settings.image_max_steps)
    assert (imagine["cfg"]["min_value"], imagine["cfg"]["max_value"]) == (1.0, 20.0)
    assert (imagine["seed"]["min_value"], imagine["seed"]["max_value"]) == (0, 2**32 - 1)
    assert imagine["size"]["choices"] == [{"name": "64x64", "value": "64x64"}]
    assert [c["value"] for c in commands["think"]["options"][0]["choices"]] == ["off", "short", "full", "default"]
    # the admin commands: hidden behind Manage Server, guild-only; the rest for everyone
    for name in ("limits", "admins", "block", "unblock"):
        assert int(commands[name]["default_member_permissions"]) == 1 << 5, name
        assert commands[name]["dm_permission"] is False, name
    assert commands["chat"]["default_member_permissions"] is None
    assert {o["name"] for o in commands["limits"]["options"]} == {"show", "set", "reset"}
    assert {o["name"] for o in commands["admins"]["options"]} == {"add", "remove", "list"}


# ---------------------------------------------------------------- chat turns


async def test_chat_is_deferred_then_streamed_then_final(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    ann = FakeUser(9101, "ann")
    interaction = await fake.slash("chat", {"message": "hello there"}, user=ann, channel_id=CHANNEL)
    reply = await final_original(fake, interaction.token)

    calls = [c for c in fake.calls if interaction.token in c.path]
    assert calls[0].route == "callback" and calls[0].body == {"type": 5}, "deferred first"
    assert calls[1].route == "edit_original"
    states = [s for s in reply.history if s]
    assert len(set(states)) >= 3, states  # queued / thinking / ... then the answer
    assert states[0].startswith("⏳ Queued: #1")
    assert any(s.startswith("💭 Thinking") for s in states), states
    job_id = reply.job_id()
    status = await app.bot.status(job_id, UserRef("discord", str(ann.id)))
    assert status.state is JobState.DONE
    assert reply.content == (status.text or "🤷 (no answer)").strip()
    assert not any(mark in reply.content for mark in ("⏳", "💭", "✍️"))
    assert not reply.ephemeral and reply.interaction_token == interaction.token


async def test_mentions_replies_and_dms_are_turns(adapter: DiscordAdapter, fake: FakeDiscord) -> None:
    bob = FakeUser(9102, "bob")
    mention = await fake.say(bob, "what is a lighthouse?", channel_id=CHANNEL, mention_bot=True)

    def reply_to(message: FakeMessage) -> FakeMessage | None:
        return next((m for m in fake.messages.values() if m.reference_id == message.id and m.finished), None)

    first = await fake.wait_for(lambda: reply_to(mention), 60, what="the reply to a mention")
    assert first.channel_id == CHANNEL and first.content.strip()

    follow_up = await fake.say(bob, "tell me more", channel_id=CHANNEL, reply_to=first)
    second = await fake.wait_for(lambda: reply_to(follow_up), 60, what="the reply to a reply")
    assert second.content.strip()

    quiet = await fake.say(bob, "no ping this time", channel_id=CHANNEL, reply_to=first, ping=False)
    hint = await fake.wait_for(lambda: next((m for m in fake.messages.values() if m.reference_id == quiet.id), None), 30)
    assert hint.content.startswith("I cannot read replies that do not ping me")

    dm = await fake.say(bob, "hi in private", guild_id=None)
    private = await fake.wait_for(lambda: reply_to(dm), 60, what="the reply to a DM")
    assert private.channel_id == fake.dm_channel(bob) and private.guild_id is None

    # not addressed to the bot: no reply, whatever it says (@everyone included); the
    # mention after them is answered, so by then they were handled (in gateway order)
    before = len(fake.calls)
    ignored = [
        await fake.say(bob, "@everyone look at this", channel_id=CHANNEL),
        await fake.say(bob, "just chatting", channel_id=OTHER_CHANNEL),
    ]
    barrier = await fake.say(bob, "are you there?", channel_id=OTHER_CHANNEL, mention_bot=True)
    await fake.wait_for(lambda: reply_to(barrier), 60, what="the reply after the ignored messages")
    assert not [m for m in fake.messages.values() if m.reference_id in {i.id for i in ignored}]
    sends = [c for c in fake.calls[before:] if c.route == "channel_send"]
    assert [int(c.body["message_reference"]["message_id"]) for c in sends] == [barrier.id]


# ---------------------------------------------------------------- pictures


async def test_imagine_posts_the_picture_with_its_parameters(adapter: DiscordAdapter, fake: FakeDiscord) -> None:
    carol = FakeUser(9103, "carol")
    options = {"prompt": "a red boat", "negative": "fog", "steps": 12, "cfg": 5.5, "seed": 42, "size": "64x64"}
    interaction = await fake.slash("imagine", options, user=carol, channel_id=CHANNEL)
    reply = await final_original(fake, interaction.token)

    assert any("step" in state and "/12" in state for state in reply.history), reply.history
    pictures = [m for m in fake.replies_to(interaction.token) if m.files]
    assert len(pictures) == 1
    picture = pictures[0]
    name, png = picture.files[0]
    assert png.startswith(b"\x89PNG") and name.endswith(".png")
    upload = next(c for c in fake.calls_of("followup") if c.files and interaction.token in c.path)
    assert upload.files[0][0] == name  # sent as multipart: payload_json + files[0]
    embed = picture.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["description"] == "a red boat"
    assert fields == {"Negative prompt": "fog", "Size": "64x64", "Steps": "12", "CFG": "5.5", "Seed": "42"}
    assert embed["image"]["url"] == f"attachment://{name}"
    assert picture.custom_ids() == [f"ovbot:reroll:{reply.job_id()}"]


async def test_invalid_options_get_one_ephemeral_error(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    dave = FakeUser(9104, "dave")
    cases = [
        ({"prompt": "a boat", "steps": 9999}, f"⚠️ steps: must be between 1 and {app.settings.image_max_steps}"),
        ({"prompt": "a boat", "size": "13x13"}, "⚠️ "),
        ({"prompt": "a boat", "size": "huge"}, "⚠️ size: 'huge' is not a size like 512x512"),
        ({"prompt": "a boat", "cfg": 500.0}, "⚠️ cfg: "),
    ]
    for options, expected in cases:
        interaction = await fake.slash("imagine", options, user=dave, channel_id=CHANNEL)
        text = await ephemeral_answer(fake, interaction.token)
        assert text.startswith(expected), (options, text)
        callback = next(c for c in fake.calls_of("callback") if interaction.token in c.path)
        assert callback.body["type"] == 4 and callback.body["data"]["flags"] & EPHEMERAL
        assert len(fake.replies_to(interaction.token)) == 1  # one reply, nothing else
    assert await app.bot.queue(UserRef("discord", str(dave.id)), ChatRef("discord", str(CHANNEL))) == []


async def test_reroll_and_cancel_buttons(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    erin, frank = FakeUser(9105, "erin"), FakeUser(9106, "frank")
    first = await fake.slash("imagine", {"prompt": "a lighthouse", "steps": 3}, user=erin, channel_id=CHANNEL)
    first_job = (await final_original(fake, first.token)).job_id()
    picture = next(m for m in fake.replies_to(first.token) if m.files)
    seed = next(f["value"] for f in picture.embeds[0]["fields"] if f["name"] == "Seed")

    reroll = await fake.click(picture, picture.custom_ids()[0], user=frank)
    again = await final_original(fake, reroll.token)
    second = next(m for m in fake.replies_to(reroll.token) if m.files)
    fields = {f["name"]: f["value"] for f in second.embeds[0]["fields"]}
    assert fields["Steps"] == "3" and second.embeds[0]["description"] == "a lighthouse"
    assert fields["Seed"] != seed  # same settings, new seed
    assert again.job_id() != first_job and again.content == "🎨 Here is your picture."

    slow = await fake.slash("imagine", {"prompt": "a slow one", "steps": SLOW_STEPS}, user=erin, channel_id=CHANNEL)
    running = await fake.wait_for(lambda: (m := fake.original(slow.token)) is not None and "step" in m.content and m, 60)
    cancel_id = running.custom_ids()[0]
    assert cancel_id.startswith("ovbot:cancel:")
    refused = await fake.click(running, cancel_id, user=frank)  # not frank's to cancel
    assert await ephemeral_answer(fake, refused.token) == "⛔ You can only cancel your own requests."
    pressed = await fake.click(running, cancel_id, user=erin)
    assert await ephemeral_answer(fake, pressed.token) == "🚫 Cancelled."
    cancelled = await final_original(fake, slow.token)
    assert cancelled.content.endswith("🚫 Cancelled.") and not cancelled.components


# ---------------------------------------------------------------- admins and limits


async def test_admin_commands_as_admin_and_as_non_admin(adapter: DiscordAdapter, fake: FakeDiscord) -> None:
    gina, hank, ivan = FakeUser(9107, "gina"), FakeUser(9108, "hank"), FakeUser(9109, "ivan")
    refused = await fake.slash("limits", {"user": hank}, subcommand="show", user=gina)
    assert await ephemeral_answer(fake, refused.token) == "⛔ Only the bot's admins can do that."
    refused = await fake.slash("admins", {"user": gina}, subcommand="add", user=gina)
    assert await ephemeral_answer(fake, refused.token) == "⛔ Only the bot's admins can do that."

    set_ = await fake.slash("limits", {"user": hank, "images_per_day": 3}, subcommand="set", user=ADMIN)
    text = await ephemeral_answer(fake, set_.token)
    assert text.startswith(f"Usage of discord:{hank.id}") and "Pictures: 0 of 3 per day used (set by an admin)" in text

    added = await fake.slash("admins", {"user": gina}, subcommand="add", user=ADMIN)
    assert await ephemeral_answer(fake, added.token) == f"👑 discord:{gina.id} is now an admin."
    shown = await fake.slash("limits", {"user": hank}, subcommand="show", user=gina)  # now she may
    assert "(set by an admin)" in await ephemeral_answer(fake, shown.token)
    listed = await fake.slash("admins", {}, subcommand="list", user=gina)
    assert f"discord:{gina.id}" in await ephemeral_answer(fake, listed.token)

    blocked = await fake.slash("block", {"user": ivan}, user=gina)
    assert await ephemeral_answer(fake, blocked.token) == f"⛔ discord:{ivan.id} is blocked on every platform."
    attempt = await fake.slash("chat", {"message": "let me in"}, user=ivan)
    assert await ephemeral_answer(fake, attempt.token) == "⛔ You have been blocked from using this bot."
    unblocked = await fake.slash("unblock", {"user": ivan}, user=ADMIN)
    assert await ephemeral_answer(fake, unblocked.token) == f"discord:{ivan.id} is no longer blocked."
    removed = await fake.slash("admins", {"user": gina}, subcommand="remove", user=ADMIN)
    assert await ephemeral_answer(fake, removed.token) == f"discord:{gina.id} is no longer an admin."
    reset = await fake.slash("limits", {"user": hank}, subcommand="reset", user=gina)
    assert await ephemeral_answer(fake, reset.token) == "⛔ Only the bot's admins can do that."


async def test_over_the_limit_the_user_is_told_how_long_to_wait(adapter: DiscordAdapter, fake: FakeDiscord) -> None:
    jane = FakeUser(9110, "jane")
    limited = await fake.slash("limits", {"user": jane, "chat_per_window": 1}, subcommand="set", user=ADMIN)
    await ephemeral_answer(fake, limited.token)
    first = await fake.slash("chat", {"message": "one"}, user=jane)
    await final_original(fake, first.token)
    second = await fake.slash("chat", {"message": "two"}, user=jane)
    text = await ephemeral_answer(fake, second.token)
    assert text.startswith("⏳ You reached your limit of 1 chat messages"), text
    assert "Try again in 59 min" in text or "Try again in 1 h" in text, text
    usage = await fake.slash("usage", {}, user=jane)
    assert "Chat messages: 1 of 1 per hour used, next in" in await ephemeral_answer(fake, usage.token)


# ---------------------------------------------------------------- Discord misbehaving


async def test_rate_limited_edits_are_retried_and_delivered(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    kate = FakeUser(9111, "kate")
    # 7 in a row: discord.py sleeps out the first 5 itself, then raises; the live
    # reply backs off (RetryLater) and pushes its newest state
    fake.fail("edit_original", 429, times=7, retry_after=0.05)
    interaction = await fake.slash("chat", {"message": "rate limit me"}, user=kate)
    reply = await final_original(fake, interaction.token)
    limited = [c for c in fake.calls_of("edit_original") if interaction.token in c.path and c.status == 429]
    assert len(limited) == 7
    status = await app.bot.status(reply.job_id(), UserRef("discord", str(kate.id)))
    assert reply.content == (status.text or "🤷 (no answer)").strip()


async def test_a_gateway_drop_mid_answer_resumes_and_the_turn_completes(adapter: DiscordAdapter, fake: FakeDiscord) -> None:
    liam = FakeUser(9112, "liam")
    resumes = fake.resumes
    slow = await fake.slash("imagine", {"prompt": "a resumed boat", "steps": 120}, user=liam)
    await fake.wait_for(lambda: (m := fake.original(slow.token)) is not None and "step" in m.content, 60)
    await fake.drop_gateway()
    # sent while the client is away: delivered when it resumes
    during = await fake.slash("chat", {"message": "sent during the drop"}, user=liam)
    await fake.wait_for(lambda: fake.resumes == resumes + 1 and fake.connected, 30, what="a RESUME")
    resume = [op for op in fake.gateway_ops if op["op"] == 6][-1]["d"]
    assert resume["token"] == fake.token and resume["seq"] >= 1
    assert (await final_original(fake, slow.token)).content == "🎨 Here is your picture."
    assert (await final_original(fake, during.token)).content.strip()
    assert adapter.health().ok


async def test_after_the_token_expires_the_reply_continues_in_the_channel(
    adapter: DiscordAdapter, fake: FakeDiscord, clock: WallClock
) -> None:
    mia = FakeUser(9113, "mia")
    slow = await fake.slash("imagine", {"prompt": "a patient boat", "steps": 100}, user=mia, channel_id=OTHER_CHANNEL)
    original = await fake.wait_for(lambda: (m := fake.original(slow.token)) is not None and "step" in m.content and m, 60)
    webhook_calls = len(fake.calls_of("edit_original", "followup"))
    clock.offset = fake.clock_offset = 15 * 60 + 1  # 15 minutes later

    reply = await final_original(fake, slow.token)
    assert reply is original and reply.content == "🎨 Here is your picture."
    assert len(fake.calls_of("edit_original", "followup")) == webhook_calls, "no webhook call with a dead token"
    edits = [c for c in fake.calls_of("channel_edit") if c.path.endswith(f"/{original.id}")]
    assert edits and all(c.status == 200 for c in edits)
    picture = next(m for m in fake.channel_messages(OTHER_CHANNEL) if m.files and m.interaction_token is None)
    assert picture.custom_ids()[0].startswith("ovbot:reroll:")


# ---------------------------------------------------------------- what users and models write


async def test_empty_huge_and_odd_unicode_input(adapter: DiscordAdapter, fake: FakeDiscord, app: App) -> None:
    nora = FakeUser(9114, "nora")
    empty = await fake.say(nora, "   ", channel_id=CHANNEL, mention_bot=True)
    answer = await fake.wait_for(
        lambda: next((m for m in fake.messages.values() if m.reference_id == empty.id), None), 30, what="the empty reply"
    )
    assert answer.content == "⚠️ message: is empty; write something to send"

    limit = app.settings.max_message_chars
    huge = await fake.slash("chat", {"message": "x" * (limit + 1000)}, user=nora)
    assert await ephemeral_answer(fake, huge.token) == f"⚠️ message: is {limit + 1000} characters long; the limit is {limit}"

    odd = "z\u0351\u0352\u0353algo \u202eevil\u202c 👩‍👩‍👧‍👦 \U0001f600\u200d 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \ufeff «ok»"
    interaction = await fake.slash("chat", {"message": odd}, user=nora)
    reply = await final_original(fake, interaction.token)
    assert reply.content.strip()


async def test_model_text_with_mentions_pings_nobody_and_long_replies_continue_in_follow_ups(
    adapter: DiscordAdapter, fake: FakeDiscord, app: App, clock: WallClock
) -> None:
    """The live reply's target on its own (events written here, not by the model):
    hostile text stays text, and a reply over 2000 characters continues in follow-ups."""
    olga = FakeUser(9115, "olga")
    registered = await fake.slash("chat", {"message": "unused"}, user=olga, dispatch=False)
    # what discord.py does with an INTERACTION_CREATE it receives: an Interaction bound
    # to the client's connection state (its REST calls go to the fake)
    interaction = discord.Interaction(data=registered.payload, state=adapter.client._connection)  # type: ignore[arg-type]
    await interaction.response.defer(thinking=True)
    recorded: dict[str, list[str]] = {}

    async def record(key: str, values: list[str]) -> None:
        recorded[key] = values

    target = DiscordReplyTarget(
        bot=app.bot,
        owner=UserRef("discord", str(olga.id)),
        channel=adapter.client.get_partial_messageable(CHANNEL, guild_id=GUILD),
        record=record,
        wall_clock=clock,
        interaction=interaction,
        cancel_job_id="0" * 32,
    )
    hostile = f"@everyone @here <@{ADMIN.id}> <@!{ADMIN.id}> <@&{GUILD}> look! "
    text = hostile + ("All work and no play makes a long answer. " * 120)

    async def events() -> AsyncIterator[TurnEvent]:
        for start in range(0, len(text), 300):
            yield TextDelta("job", text=text[start : start + 300])
        yield ReplyDone("job", text=text)
        yield TurnDone("job", text=text)

    view = await render_live(
        events(), target, limit=2000, measure=utf16_length, min_interval_s=0.01, clock=time.monotonic, sleep=asyncio.sleep
    )
    await target.finish()
    assert view.outcome == "done" and len(view.messages) >= 3
    messages = fake.replies_to(registered.token)
    assert [m.content for m in messages] == list(view.messages)
    assert messages[0].content.startswith(hostile.strip())  # shown as written, pinging nobody
    assert all(utf16_length(m.content) <= 2000 for m in messages)
    assert fake.calls_of("followup") and recorded["messages"] == [str(m.id) for m in messages]
    assert messages[0].finished
