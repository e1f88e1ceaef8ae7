"""The bad-input corpus on Telegram (tests/bad_inputs.py): the real python-telegram-bot
client against the fake Bot API server, the real core on the tiny models. Every case
runs in a private chat of its own (so Telegram's per-chat pace never orders them), all
at once; then each case's answers are judged: a clear error or a normal reply, never a
crash apology, a traceback, an over-long or unparsable text (the fake refuses those) or
silence where an answer is due. Afterwards the bot still answers and the store is sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.core.app import App
from ovbot.models.tiny import TinyModels
from tests.bad_inputs import TELEGRAM_CASES, TelegramCase, ids
from tests.corpus_outcomes import ROOMY_SETTINGS, is_error_reply, reply_problems, tapped_logs
from tests.fakes.fake_telegram import TEXT_LIMIT, TOKEN, FakeTelegram
from tests.fixtures_app import bot_settings, running_app
from tests.store_checks import job_counts, queue_idle, store_problems
from tests.test_telegram import fake, no_proxy  # noqa: F401  (the module's fake Bot API server)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def user_id_of(index: int, case: TelegramCase) -> int:
    return (80_000 if case.admin else 70_000) + index


ADMINS = [f"telegram:{user_id_of(i, case)}" for i, case in enumerate(TELEGRAM_CASES) if case.admin]


@dataclass
class Answers:
    """What one case got back: texts in its chat, alerts of its button presses."""

    texts: list[str]
    callback_texts: list[str]

    @property
    def count(self) -> int:
        return len(self.texts) + len(self.callback_texts)


@dataclass
class CorpusRun:
    answers: dict[str, Answers]
    crashes: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory, fake: FakeTelegram) -> AsyncIterator[App]:
    settings = bot_settings(
        tiny_models,
        tmp_path_factory.mktemp("bad-input-telegram"),
        telegram_token=TOKEN,
        telegram_api_base=fake.api_base,
        admins=ADMINS,
        **ROOMY_SETTINGS,
    )
    async with running_app(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(app: App, fake: FakeTelegram) -> AsyncIterator[TelegramAdapter]:
    config = TelegramConfig.from_settings(app.settings, poll_timeout_s=1.0)
    assert config is not None
    running = TelegramAdapter(app.bot, config)
    await running.start()
    yield running
    await running.stop()


def filled(value: Any, names: dict[str, Any]) -> Any:
    """An update template with its ``{chat}``/``{user}``/... placeholders filled."""
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, dict):
        return {key: filled(item, names) for key, item in value.items()}
    return value


def chat_of(index: int, case: TelegramCase) -> int:
    """The chat the case's answers would appear in (a channel for channel posts)."""
    return -(10**12) - index if case.id == "update-channel-post" else user_id_of(index, case)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def corpus(app: App, adapter: TelegramAdapter, fake: FakeTelegram) -> CorpusRun:
    """Send every case at once, wait for every due answer and for the bot to settle."""
    callback_ids: dict[str, str] = {}
    with tapped_logs() as logs:
        for index, case in enumerate(TELEGRAM_CASES):
            user = fake.person(user_id_of(index, case), "Case")
            chat = fake.private_chat(user)
            if case.text is not None:
                fake.say(chat, user, case.text)
                continue
            assert case.update is not None
            channel = {"id": chat_of(index, case), "type": "channel", "title": "news"}
            odd_user = {**user, "first_name": "\ud800\u202e", "last_name": "\x00"}
            names = {"{chat}": chat, "{user}": user, "{bot_user}": fake.bot_user, "{channel}": channel, "{odd_user}": odd_user}
            update = filled(case.update, names)
            if "channel_post" in update:
                update["channel_post"]["chat"] = channel
            if "callback_query" in update:
                update["callback_query"]["id"] = callback_ids[case.id] = f"{update['callback_query']['id']}-{index}"
            fake.inject(update)

        def answers() -> dict[str, Answers]:
            found = {}
            for index, case in enumerate(TELEGRAM_CASES):
                texts = [m.body for m in fake.bot_messages(chat_of(index, case), include_deleted=True)]
                alerts = [a["text"] or "" for a in fake.callback_answers if a["id"] == callback_ids.get(case.id)]
                found[case.id] = Answers(texts, alerts)
            return found

        def unanswered() -> list[str]:
            got = answers()
            return [case.id for case in TELEGRAM_CASES if case.answer == "reply" and not got[case.id].count]

        with contextlib.suppress(AssertionError):  # each unanswered case fails on its own
            await fake.wait_until(lambda: not unanswered(), timeout=60, what="an answer to every case")
        for _ in range(2):  # replies may start jobs whose replies follow
            await queue_idle(app)
            await asyncio.wait_for(adapter.deliveries.idle(), 60)
        await asyncio.sleep(1.0)  # updates that are (rightly) ignored have had their chance
        return CorpusRun(answers(), logs.crashes())


@pytest.fixture(autouse=True)
def rules_kept(fake: FakeTelegram) -> Iterator[None]:
    yield
    try:
        fake.assert_clean()
    finally:
        fake.violations.clear()


@pytest.mark.parametrize("case", TELEGRAM_CASES, ids=ids(TELEGRAM_CASES))
async def test_bad_telegram_input_gets_a_clear_answer(case: TelegramCase, corpus: CorpusRun) -> None:
    got = corpus.answers[case.id]
    if case.answer == "reply":
        assert got.count >= 1, "no answer"
    if case.answer == "silent":
        assert got.count == 0, got
    for text in got.texts:
        assert reply_problems(text, TEXT_LIMIT) == [], text[:300]
    for text in filter(None, got.callback_texts):  # a silent acknowledgement is fine
        assert reply_problems(text, 200) == [], text


async def test_after_the_corpus_the_bot_answers_and_nothing_crashed(
    app: App, adapter: TelegramAdapter, fake: FakeTelegram, corpus: CorpusRun
) -> None:
    assert corpus.crashes == []
    assert adapter.health().ok, adapter.health()
    user = fake.person(99_999, "After")
    fake.say(fake.private_chat(user), user, "hello after all that")
    await fake.wait_until(lambda: fake.bot_messages(99_999), timeout=60, what="the answer after the corpus")
    await queue_idle(app)
    await asyncio.wait_for(adapter.deliveries.idle(), 60)
    assert store_problems(app.settings.database_path, app.settings.data_dir) == []

    first_texts = [answers.texts[0] for answers in corpus.answers.values() if answers.texts]
    errors = sum(1 for text in first_texts if is_error_reply(text))
    figures = {
        "cases": len(corpus.answers),
        "answered in chat": len(first_texts),
        "errors": errors,
        "normal answers": len(first_texts) - errors,
        "button acknowledgements": sum(1 for a in corpus.answers.values() if a.callback_texts),
        "ignored": sum(1 for a in corpus.answers.values() if not a.count),
        "crashes": len(corpus.crashes),
        "jobs": job_counts(app.settings.database_path),
    }
    print("bad-input corpus, Telegram:", json.dumps(figures))
