"""The bad-input corpus on Discord (tests/bad_inputs.py): the real discord.py client
against the fake Discord (gateway + REST), the real core on the tiny models. Slash
commands with wrong option types, out-of-range values, unknown options, subcommands and
commands, mentions and DMs full of markup, all sent at once; then each case's answer is
judged: a clear error or a normal reply, never the crash apology, a traceback, over 2000
characters, silence, or a ping (the fake records every mention Discord would notify).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from ovbot.adapters.discord import DiscordAdapter, DiscordOptions, build_discord_adapter
from ovbot.core.app import App
from ovbot.models.tiny import TinyModels
from tests.bad_inputs import DISCORD_CASES, DiscordCase, ids
from tests.corpus_outcomes import ROOMY_SETTINGS, is_error_reply, reply_problems, tapped_logs
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser
from tests.fixtures_app import bot_settings, running_app
from tests.store_checks import job_counts, queue_idle, store_problems

pytestmark = pytest.mark.asyncio(loop_scope="module")

GUILD = 111
CHANNEL = 1111
MESSAGE_LIMIT = 2000
MANAGE_SERVER = 1 << 5
SOMEONE = FakeUser(95_000, "someone")


def user_of(index: int, case: DiscordCase) -> FakeUser:
    return FakeUser(90_000 + index, f"case{index}", permissions=MANAGE_SERVER if case.admin else 0)


ADMINS = [f"discord:{user_of(i, case).id}" for i, case in enumerate(DISCORD_CASES) if case.admin]


@dataclass
class CorpusRun:
    #: case id -> the contents of every message the bot answered it with
    answers: dict[str, list[str]]
    crashes: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory, fake: FakeDiscord) -> AsyncIterator[App]:
    settings = bot_settings(
        tiny_models,
        tmp_path_factory.mktemp("bad-input-discord"),
        admins=ADMINS,
        discord_token=fake.token,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
        discord_guild_ids=[GUILD],
        **ROOMY_SETTINGS,
    )
    async with running_app(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(app: App, fake: FakeDiscord) -> AsyncIterator[DiscordAdapter]:
    options = DiscordOptions(edit_interval_s=0.05, guild_ready_timeout_s=0.05, stop_grace_s=10.0)
    running = build_discord_adapter(app.bot, app.settings, options)
    await running.start()
    yield running
    await running.stop()


def with_users(options: dict[str, Any], user: FakeUser) -> dict[str, Any]:
    names = {"{someone}": SOMEONE, "{self}": user}
    return {key: names.get(value, value) if isinstance(value, str) else value for key, value in options.items()}


async def send(fake: FakeDiscord, index: int, case: DiscordCase) -> str | FakeMessage:
    """Run the case; the interaction's token, or the user's message."""
    user = user_of(index, case)
    if case.message is not None:
        if case.in_dm:
            return await fake.say(user, case.message, guild_id=None)
        return await fake.say(user, case.message, channel_id=CHANNEL, mention_bot=True)
    assert case.command is not None
    interaction = await fake.slash(
        case.command, with_users(case.options, user), user=user, channel_id=CHANNEL, subcommand=case.subcommand
    )
    return interaction.token


def answers_to(fake: FakeDiscord, sent: str | FakeMessage) -> list[FakeMessage]:
    if isinstance(sent, str):
        return [m for m in fake.replies_to(sent) if not m.deleted]
    return [m for m in fake.messages.values() if m.reference_id == sent.id and m.author.get("bot")]


def settled(messages: list[FakeMessage]) -> bool:
    """Answered with text, and a live reply (one that had a cancel button) is final."""
    live = [m for m in messages if any(b.startswith("ovbot:cancel:") for b in m.buttons_seen)]
    return any(m.content.strip() for m in messages) and all(m.finished for m in live)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def corpus(app: App, adapter: DiscordAdapter, fake: FakeDiscord) -> CorpusRun:
    with tapped_logs() as logs:
        sent = {case.id: await send(fake, index, case) for index, case in enumerate(DISCORD_CASES)}

        def unsettled() -> list[str]:
            return [case_id for case_id, what in sent.items() if not settled(answers_to(fake, what))]

        with contextlib.suppress(AssertionError):  # each unanswered case fails on its own
            await fake.wait_for(lambda: not unsettled(), 60, what="an answer to every case")
        await queue_idle(app)
        await asyncio.sleep(0.5)  # the last edits land
        answers = {case_id: [m.content for m in answers_to(fake, what)] for case_id, what in sent.items()}
        return CorpusRun(answers, logs.crashes())


@pytest.mark.parametrize("case", DISCORD_CASES, ids=ids(DISCORD_CASES))
async def test_bad_discord_input_gets_a_clear_answer(case: DiscordCase, corpus: CorpusRun) -> None:
    contents = [text for text in corpus.answers[case.id] if text.strip()]
    assert contents, "no answer"
    for text in contents:
        assert reply_problems(text, MESSAGE_LIMIT) == [], text[:300]


async def test_after_the_corpus_nothing_pinged_or_crashed_and_the_bot_answers(
    app: App, adapter: DiscordAdapter, fake: FakeDiscord, corpus: CorpusRun
) -> None:
    assert fake.pings == []
    assert fake.violations == []
    assert fake.unhandled == []
    assert corpus.crashes == []
    assert adapter.health().ok, adapter.health()
    after = await fake.slash("chat", {"message": "hello after all that"}, user=FakeUser(96_000, "after"), channel_id=CHANNEL)
    await fake.wait_for(lambda: settled(answers_to(fake, after.token)), 60, what="the answer after the corpus")
    await queue_idle(app)
    assert store_problems(app.settings.database_path, app.settings.data_dir) == []

    first = [texts[0] for texts in corpus.answers.values() if texts]
    errors = sum(1 for text in first if is_error_reply(text))
    figures = {
        "cases": len(corpus.answers),
        "answered": len(first),
        "errors": errors,
        "normal answers": len(first) - errors,
        "pings": len(fake.pings),
        "crashes": len(corpus.crashes),
        "jobs": job_counts(app.settings.database_path),
    }
    print("bad-input corpus, Discord:", json.dumps(figures))
