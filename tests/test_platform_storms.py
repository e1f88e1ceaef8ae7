"""Platform storms: Telegram and Discord having a bad day while people use the bot.

For several seconds the fake servers (tests/fakes/storm.py) answer a share of every
kind of call with 429 (with ``retry_after``), 500/502/503, a request that hangs until
the client gives up, or a dropped connection; the Discord gateway keeps closing, with
codes that resume and codes that force a new session. Meanwhile several people send
chat turns and ask for pictures, through the real python-telegram-bot and discord.py
clients, the real core on the tiny models and a real SQLite file.

After the storm every turn is delivered exactly once: each turn's recorded messages
are there and final, the chat holds no message that no turn recorded (a duplicate or
an error reply), no turn is left undelivered. The fakes measured ovbot's rates against
the platforms' rules and found no breach (per chat, per group, overall, inside a
``retry_after`` window, invalid requests). No task died unnoticed: the event loop's
exception handler, python-telegram-bot's error handlers, discord.py's ``on_error`` and
every ERROR log record are watched.

Narrower storms pin down what the big ones found: a Telegram outage longer than a few
retries (the reply waits it out), a 429 on a call outside the chat's pacing (the retry
waits for ``retry_after``), Discord answers lost after Discord acted (no duplicate, no
orphaned "thinking" message). The last tests check the measuring itself.

Each test prints its figures (``-s`` shows them): faults injected per kind, replies
delivered / lost / duplicated, the highest rates seen, calls inside retry windows, and
the time to deliver everything once the storm ended (docs/reliability.md has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from telegram.ext import ContextTypes

from ovbot.adapters.discord import DiscordOptions, build_discord_adapter
from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.core.app import App
from ovbot.core.domain import Job, JobKind, JobState
from ovbot.models.tiny import TinyModels
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser, snowflake_time
from tests.fakes.fake_telegram import BOT_USERNAME, MESSAGE_METHODS, TOKEN, FakeTelegram
from tests.fakes.storm import FAULTS, LOST_ANSWER, Storms, max_in_window, min_gap
from tests.fixtures_app import running_app
from tests.test_discord import GUILD, discord_settings
from tests.test_telegram import no_proxy  # noqa: F401 - a fixture

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

#: the storm's phases: every call fails (any fault), then most answer 429, then half
#: of them fail (any fault)
OUTAGE_S = 2.5
FLOOD_S = 2.5
STORM_S = 8.0
#: Discord's bucket for creating messages in a channel: 5 per 5 s
SEND_LIMIT = (5, 5.0)
CHANNEL = 1111
PICTURE_CHANNEL = 1112
EVERY_STATE = list(JobState)
#: what a reply shows only while the turn runs
RUNNING_MARKS = ("⏳", "💭", "✍️", "⚙️", "🎨 Picture: ")


# ---------------------------------------------------------------- watching for silent deaths


class _Records(logging.Handler):
    """ERROR records: ovbot's and asyncio's (a task that died) are failures; another
    library's are counted (python-telegram-bot logs a 429 its rate limiter gave up on
    at ERROR, and hands it on to ovbot)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []
        self.libraries: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("ovbot", "asyncio")):
            self.libraries[f"{record.name}: {record.msg}"] += 1
            return
        error = record.exc_info[1] if record.exc_info else None
        cause = "" if error is None else f" ({type(error).__name__}: {str(error)[:120]} at {_where(error)})"
        self.seen.append(f"{record.name}: {record.getMessage()[:200]}{cause}")


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/ovbot/" in f.filename or "/adapters/" in f.filename] or frames
    return ", ".join(f"{Path(f.filename).name}:{f.lineno}" for f in ours[-3:])


@dataclass
class Casualties:
    """Every way a handler task can die without a reply: an exception the event loop
    reports (``Task exception was never retrieved``), one python-telegram-bot hands to
    its error handlers, one discord.py hands to ``on_error``, an ERROR log record."""

    loop: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    logged: _Records = field(default_factory=_Records)

    def all(self) -> list[str]:
        return self.loop + self.handlers + self.logged.seen

    async def telegram_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.handlers.append(f"python-telegram-bot: {type(context.error).__name__}: {context.error}")

    async def discord_error(self, event: str, *args: object, **kwargs: object) -> None:
        self.handlers.append(f"discord.py on_error in {event}")


@contextlib.contextmanager
def watched() -> Iterator[Casualties]:
    casualties = Casualties()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _, context: casualties.loop.append(f"{context.get('message')}: {context.get('exception')!r}")
    )
    root = logging.getLogger()
    root.addHandler(casualties.logged)
    try:
        yield casualties
        gc.collect()  # "Task exception was never retrieved" is reported when a task is collected
    finally:
        root.removeHandler(casualties.logged)
        loop.set_exception_handler(previous)


# ---------------------------------------------------------------- the App both platforms share


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guilds={GUILD: [CHANNEL, PICTURE_CHANNEL]}, send_limit=SEND_LIMIT) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(
    tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory, discord_fake: FakeDiscord
) -> AsyncIterator[App]:
    """One App for both platforms; each Telegram test brings its own fake server
    (``fresh_telegram`` points its adapter there)."""
    data_dir = tmp_path_factory.mktemp("storms")
    settings = discord_settings(tiny_models, data_dir, discord_fake, telegram_token=TOKEN, reasoning_mode="off")
    async with running_app(settings) as running:
        yield running


# ---------------------------------------------------------------- shared bookkeeping


@dataclass
class Tally:
    """What became of the turns of one platform."""

    platform: str
    expected: int
    jobs: list[Job] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    delivered_s: float | None = None

    @property
    def delivered(self) -> int:
        return len(self.jobs) - len(self.lost)


async def platform_jobs(app: App, platform: str, since: float) -> list[Job]:
    """The platform's turns submitted since ``since`` (wall clock): one test's."""
    jobs = await app.store.jobs_in_states(EVERY_STATE)
    return [j for j in jobs if j.chat.platform == platform and j.created_at >= since]


async def all_delivered(app: App, platform: str, expected: int, timeout: float, since: float) -> float | None:
    """Wait until ``expected`` turns exist and none is undelivered: the seconds it took,
    None if that did not happen within ``timeout`` (the tally then says what is missing)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        jobs = await platform_jobs(app, platform, since)
        if len(jobs) >= expected and not await app.store.undelivered_jobs(platform, since):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


def final_text(job: Job) -> str:
    assert job.result is not None, f"job {job.id[:8]} has no result ({job.state.value})"
    return str(job.result.get("text") or "").strip()


def figures(
    fake: FakeTelegram | FakeDiscord, tally: Tally, casualties: Casualties, rates: dict[str, Any], **extra: object
) -> dict[str, object]:
    """What a storm test reports (``-s`` prints it)."""
    return {
        "injected": dict(fake.storms.injected),
        "calls": len(fake.calls),
        "turns": tally.expected,
        "delivered": tally.delivered,
        "lost": len(tally.lost),
        "duplicated": len(tally.duplicated),
        "rates": rates,
        "delivered_s_after_storm": tally.delivered_s and round(tally.delivered_s, 2),
        "casualties": casualties.all(),
        "library_error_logs": dict(casualties.logged.libraries),
        **extra,
    }


def report(name: str, numbers: dict[str, Any]) -> None:
    print(f"\nSTORM FIGURES {name}: {json.dumps(numbers, sort_keys=True, default=str)}")


def start_storm(
    fake: FakeTelegram | FakeDiscord, *, retry_after: float, hang_s: float, outage: frozenset[str] | None = None
) -> None:
    """Every call (of the ``outage`` routes, if given) fails for OUTAGE_S, then 80%
    answer 429 for FLOOD_S, then half of all calls fail until STORM_S. ``hang_s``: how
    long a hung request is held at most (Telegram's client gives up after 5 s;
    discord.py's only after 300 s, so the fake drops it). The outage injects the slow
    faults first, so even a short one has every kind."""
    storms = fake.storms
    slow_first = ("timeout", "drop", "503", "502", "500", "429")
    storms.start(OUTAGE_S, faults=slow_first, routes=outage, retry_after=retry_after, hang_s=hang_s, seed=14)
    storms.start(FLOOD_S, after_s=OUTAGE_S, faults=("429",), fraction=0.8, retry_after=retry_after, seed=15)
    rest = STORM_S - OUTAGE_S - FLOOD_S
    storms.start(rest, after_s=OUTAGE_S + FLOOD_S, fraction=0.5, retry_after=retry_after, hang_s=hang_s, seed=16)


async def at(delay: float, action: Callable[[], Awaitable[object]]) -> None:
    await asyncio.sleep(delay)
    await action()


async def tallied(app: App, fake: FakeTelegram | FakeDiscord, expected: int, since: float) -> Tally:
    platform = "telegram" if isinstance(fake, FakeTelegram) else "discord"
    jobs = await platform_jobs(app, platform, since)
    undelivered = {j.id for j in await app.store.undelivered_jobs(platform, since)}
    if isinstance(fake, FakeTelegram):
        return telegram_tally(fake, jobs, undelivered, expected)
    return discord_tally(fake, jobs, undelivered, expected, since)


# ---------------------------------------------------------------- Telegram


def telegram_adapter(app: App, fake: FakeTelegram) -> TelegramAdapter:
    config = TelegramConfig.from_settings(app.settings, api_base=fake.api_base, poll_timeout_s=1.0, stop_grace_s=10.0)
    assert config is not None
    return TelegramAdapter(app.bot, config)


def telegram_tally(fake: FakeTelegram, jobs: list[Job], undelivered: set[str], expected: int) -> Tally:
    """Every turn's recorded messages are on Telegram and final; every bot message in
    the storm's chats belongs to exactly one turn."""
    tally = Tally("telegram", expected, jobs)
    owners: dict[tuple[int, int], str] = {}
    for job in jobs:
        chat_id = int(job.chat.chat_id)
        texts = [m for m in job.delivery.get("messages") or [] if m]
        photo = job.delivery.get("photo")
        posted = [fake.messages.get((chat_id, m)) for m in texts]
        if job.kind is JobKind.IMAGE:
            picture = fake.messages.get((chat_id, photo)) if photo else None
            ok = picture is not None and picture.kind == "photo" and not picture.deleted and not texts
        else:
            ok = bool(posted) and all(m is not None and not m.deleted for m in posted)
            shown = "".join(m.body for m in posted if m is not None)
            ok = ok and shown == final_text(job) and not any(mark in shown for mark in RUNNING_MARKS)
        if not ok or job.id in undelivered:
            tally.lost.append(f"{job.kind.value} {job.id[:8]} in {chat_id}: {job.delivery}")
        for message_id in [*texts, *([photo] if photo else [])]:
            owners[(chat_id, message_id)] = job.id
    for chat_id in {int(j.chat.chat_id) for j in jobs}:
        for message in fake.bot_messages(chat_id):
            if (chat_id, message.message_id) not in owners:
                where = f"chat {chat_id} message {message.message_id} ({message.kind})"
                tally.duplicated.append(f"{where}: {message.body[:40]!r}")
    return tally


async def test_telegram_storm_delivers_every_reply_once_within_the_flood_limits(app: App, no_proxy: None) -> None:
    since = time.time()
    async with fresh_telegram(app) as (fake, adapter, casualties):
        people = [fake.person(3001 + n, f"P{n}") for n in range(5)]
        group = fake.group_chat(-100300)
        members = [fake.person(3101 + n, f"G{n}") for n in range(2)]

        def private(person: dict[str, Any], text: str) -> Callable[[], Awaitable[object]]:
            async def send() -> object:
                return fake.say(fake.private_chat(person), person, text)

            return send

        def in_group(person: dict[str, Any], text: str) -> Callable[[], Awaitable[object]]:
            async def send() -> object:
                return fake.say(group, person, text)

            return send

        schedule = [
            *(at(0.3 + 0.4 * n, private(p, f"tell me about storm number {n}")) for n, p in enumerate(people)),
            *(at(2.5 + 0.5 * n, private(p, f"/imagine a lighthouse in storm {n}")) for n, p in enumerate(people[:3])),
            at(1.0, in_group(members[0], f"@{BOT_USERNAME} what is thunder?")),
            at(3.0, in_group(members[1], "/imagine lightning over the sea")),
            at(4.0, in_group(members[1], f"@{BOT_USERNAME} and what is lightning?")),
            *(at(5.5 + 0.5 * n, private(p, "and after the storm?")) for n, p in enumerate(people[3:])),
        ]
        expected = len(schedule)
        # the outage spares getUpdates: turns arrive, and their replies meet it
        start_storm(fake, retry_after=1.0, hang_s=8.0, outage=MESSAGE_METHODS | {"deleteMessage"})
        await asyncio.gather(*schedule)
        await asyncio.sleep(max(0.0, fake.storms.ends_at - time.monotonic()))
        delivered_s = await all_delivered(app, "telegram", expected, timeout=40.0, since=since)
        await asyncio.wait_for(adapter.deliveries.idle(), 30.0)

    tally = await tallied(app, fake, expected, since)
    tally.delivered_s = delivered_s
    rates = fake.rates()
    report("telegram", figures(fake, tally, casualties, rates, calls_in_retry_window=fake.calls_in_retry_window))
    assert set(fake.storms.injected) == set(FAULTS), fake.storms.injected
    assert len(tally.jobs) == expected, [j.kind.value for j in tally.jobs]
    assert all(j.state is JobState.DONE for j in tally.jobs), [j.state.value for j in tally.jobs]
    assert tally.lost == [] and tally.duplicated == [], (tally.lost, tally.duplicated)
    assert fake.calls_in_retry_window == 0
    assert casualties.all() == []
    fake.assert_clean()  # per chat >= 0.9 s apart, <= 20/min per group, <= 30/s overall
    assert rates["group_max_per_min"] <= fake.group_per_minute and rates["overall_max_per_s"] <= 30


@contextlib.asynccontextmanager
async def fresh_telegram(app: App) -> AsyncIterator[tuple[FakeTelegram, TelegramAdapter, Casualties]]:
    """A Telegram of its own and an adapter on it, polling, watched for silent deaths."""
    fake = FakeTelegram()
    await fake.start()
    adapter = telegram_adapter(app, fake)
    try:
        with watched() as casualties:
            adapter.application.add_error_handler(casualties.telegram_error)
            await adapter.start()
            try:
                await fake.wait_until(lambda: fake.calls_of("getUpdates"), what="the first long poll")
                yield fake, adapter, casualties
            finally:
                await adapter.stop()
    finally:
        await fake.stop()


async def test_telegram_waits_out_an_outage_longer_than_a_few_retries(app: App, no_proxy: None) -> None:
    """Every message call answers 5xx for 12 s (a dozen failures at the renderer's
    pace): the reply is not abandoned until a restart, it is shown once the outage ends,
    with fewer tries the longer it lasts."""
    since = time.time()
    async with fresh_telegram(app) as (fake, adapter, casualties):
        person = fake.person(3201, "Outage")
        fake.storms.start(12.0, faults=("500", "502", "503"), routes=MESSAGE_METHODS, seed=21)
        fake.say(fake.private_chat(person), person, "are you there?")
        delivered_s = await all_delivered(app, "telegram", 1, timeout=40.0, since=since)
        await asyncio.wait_for(adapter.deliveries.idle(), 30.0)
    tally = await tallied(app, fake, 1, since)
    tries = len(fake.calls_of(chat_id=person["id"]))
    numbers = {"injected": dict(fake.storms.injected), "calls_in_chat": tries, "lost": tally.lost}
    report("telegram outage", {**numbers, "delivered_s_after_asking": delivered_s and round(delivered_s, 2)})
    assert delivered_s is not None and tally.lost == [] and tally.duplicated == []
    assert sum(fake.storms.injected.values()) <= 8, "backs off: fewer tries than a fixed 1 s retry would make"
    assert casualties.all() == []
    fake.assert_clean()


async def test_telegram_waits_out_retry_after_on_calls_outside_the_chat_pacing(app: App, no_proxy: None) -> None:
    """Deleting the picture's status message does not wait for the chat's turn; when
    python-telegram-bot's rate limiter gives up on a 429 there, the next try still
    waits for retry_after to pass."""
    since = time.time()
    async with fresh_telegram(app) as (fake, adapter, casualties):
        person = fake.person(3202, "Flood")
        fake.storms.start(6.0, faults=("429",), routes={"deleteMessage"}, retry_after=1.0, seed=22)
        fake.say(fake.private_chat(person), person, "/imagine a flooded street")
        delivered_s = await all_delivered(app, "telegram", 1, timeout=40.0, since=since)
        await asyncio.wait_for(adapter.deliveries.idle(), 30.0)
    tally = await tallied(app, fake, 1, since)
    numbers = {"injected": dict(fake.storms.injected), "lost": tally.lost, "in_window": fake.calls_in_retry_window}
    report("telegram 429 on deleteMessage", {**numbers, "library_error_logs": dict(casualties.logged.libraries)})
    assert fake.storms.injected["429"] >= 4, "the rate limiter's 3 retries were used up"
    assert delivered_s is not None and tally.lost == [] and tally.duplicated == []
    assert fake.calls_in_retry_window == 0
    assert casualties.all() == []
    fake.assert_clean()


# ---------------------------------------------------------------- Discord


def is_picture(message: FakeMessage) -> bool:
    return bool(message.files or message.attachments)


def discord_tally(fake: FakeDiscord, jobs: list[Job], undelivered: set[str], expected: int, since: float) -> Tally:
    """Every turn's recorded messages are on Discord, final and without their cancel
    button; each channel shows one picture per picture turn and no message that no turn
    recorded; nobody got an error reply. Messages from before ``since`` are another test's."""
    tally = Tally("discord", expected, jobs)

    def visible(channel: int) -> list[FakeMessage]:
        return [m for m in fake.channel_messages(channel) if snowflake_time(m.id) >= since]

    owned: set[int] = set()
    for job in jobs:
        ids = [int(i) for i in job.delivery.get("messages") or []]
        owned.update(ids)
        posted = [fake.messages.get(i) for i in ids]
        shown = "".join(m.content for m in posted if m is not None)
        ok = bool(posted) and all(m is not None and not m.deleted and not m.custom_ids() for m in posted)
        if job.kind is JobKind.CHAT:
            ok = ok and shown == final_text(job)
        else:
            ok = ok and len(job.delivery.get("images") or []) == 1
        if not ok or job.id in undelivered or any(mark in shown for mark in RUNNING_MARKS):
            tally.lost.append(f"{job.kind.value} {job.id[:8]}: {shown[:60]!r} {job.delivery}")
    channels = {int(j.chat.chat_id) for j in jobs}
    for channel in channels:
        pictures = [m for m in visible(channel) if is_picture(m)]
        picture_jobs = [j for j in jobs if j.kind is JobKind.IMAGE and int(j.chat.chat_id) == channel]
        if len(pictures) > len(picture_jobs):
            tally.duplicated.append(f"channel {channel}: {len(pictures)} pictures for {len(picture_jobs)} turns")
        if len(pictures) < len(picture_jobs):
            tally.lost.append(f"channel {channel}: {len(pictures)} pictures for {len(picture_jobs)} turns")
        for message in visible(channel):
            if not is_picture(message) and message.id not in owned:
                tally.duplicated.append(f"channel {channel} message {message.id}: {message.content[:40]!r}")
    errors = [
        m.content[:60]
        for m in fake.messages.values()
        if m.ephemeral and m.author.get("bot") and snowflake_time(m.id) >= since
    ]
    tally.lost.extend(f"an error reply instead: {text!r}" for text in errors)
    return tally


async def test_discord_storm_delivers_every_reply_once_within_the_rate_limits(
    app: App, discord_fake: FakeDiscord
) -> None:
    fake = discord_fake
    since = time.time()
    options = DiscordOptions(guild_ready_timeout_s=0.05, stop_grace_s=10.0)  # production edit pace: 1 s
    adapter = build_discord_adapter(app.bot, app.settings, options)
    chatters = [FakeUser(9301 + n, f"chatter{n}") for n in range(4)]
    painters = [FakeUser(9311 + n, f"painter{n}") for n in range(2)]
    mentioner, dm_user = FakeUser(9321, "mentioner"), FakeUser(9322, "dmuser")

    async def live() -> None:
        """People act while the bot is connected: Discord delivers nothing to a bot that
        is away (and the fake checks that none of their events got lost)."""
        await fake.wait_for(lambda: fake.session_live, 30.0, what="a live gateway session")

    async def chat(user: FakeUser, text: str) -> None:
        await live()
        await fake.slash("chat", {"message": text}, user=user, channel_id=CHANNEL)

    async def imagine(user: FakeUser, prompt: str) -> None:
        await live()
        await fake.slash("imagine", {"prompt": prompt}, user=user, channel_id=PICTURE_CHANNEL)

    async def mention(user: FakeUser, text: str) -> None:
        await live()
        await fake.say(user, text, channel_id=CHANNEL, mention_bot=True)

    async def direct(user: FakeUser, text: str) -> None:
        await live()
        await fake.say(user, text, guild_id=None)

    schedule = [
        *(at(0.3 + 0.6 * n, lambda u=u, n=n: chat(u, f"storm {n}?")) for n, u in enumerate(chatters)),
        *(at(1.2 + 1.5 * n, lambda u=u, n=n: imagine(u, f"storm {n}")) for n, u in enumerate(painters)),
        at(2.0, lambda: mention(mentioner, "what is a squall?")),
        at(3.0, lambda: direct(dm_user, "is the storm over?")),
        at(5.5, lambda: direct(dm_user, "and now?")),
        at(6.0, lambda: chat(chatters[0], "still raining?")),
    ]
    expected = len(schedule)

    with watched() as casualties:
        adapter.client.on_error = casualties.discord_error  # type: ignore[method-assign]
        await adapter.start()
        try:
            # first in line for channel sends and acknowledgements: Discord acts on them
            # and the answer is lost; only the message nonce keeps the retried send from
            # posting twice, and the repeated defer hears "already acknowledged"
            lost = {"channel_send", "callback"}
            fake.storms.start(STORM_S, faults=(LOST_ANSWER,), routes=lost, fraction=0.5, seed=17)
            start_storm(fake, retry_after=0.5, hang_s=3.0)
            gateway = asyncio.ensure_future(fake.gateway_storm(STORM_S, every_s=0.5))
            await asyncio.gather(*schedule)
            await gateway
            await asyncio.sleep(max(0.0, fake.storms.ends_at - time.monotonic()))
            delivered_s = await all_delivered(app, "discord", expected, timeout=40.0, since=since)
        finally:
            await adapter.stop()

    tally = await tallied(app, fake, expected, since)
    tally.delivered_s = delivered_s
    rates = fake.rates()
    gateway = {"drops": fake.gateway_drops, "identifies": fake.identifies, "resumes": fake.resumes}
    extra = {"calls_in_429_window": fake.calls_in_429_window, "nonce_hits": fake.nonce_hits,
             "send_limit_hits": fake.send_limit_hits}  # fmt: skip
    report("discord", figures(fake, tally, casualties, rates, gateway=gateway, lost_events=fake.lost_events, **extra))
    assert set(fake.storms.injected) >= set(FAULTS), fake.storms.injected  # lost answers: timing decides
    assert set(fake.gateway_drops) >= {4000, 4009}, fake.gateway_drops
    assert fake.identifies >= 2 and fake.resumes >= 1, (fake.identifies, fake.resumes)
    assert fake.lost_events == 0
    assert len(tally.jobs) == expected, [j.kind.value for j in tally.jobs]
    assert tally.lost == [] and tally.duplicated == [], (tally.lost, tally.duplicated)
    assert fake.calls_in_429_window == 0 and fake.violations == [] and fake.pings == [] and fake.unhandled == []
    assert rates["invalid_per_10min"] < 1_000  # Discord bans at 10,000
    # Discord's global limit; the channel send bucket comes in headers discord.py keeps
    assert rates["overall_max_per_s"] <= 50
    assert casualties.all() == []


async def test_discord_lost_answers_neither_duplicate_nor_orphan_a_reply(app: App, discord_fake: FakeDiscord) -> None:
    """Discord acts on a request and the answer is lost. A defer sent again hears
    "already acknowledged" and the reply fills the deferred message; a channel send
    sent again carries the same nonce, gets the first message back (with the text it
    had then) and edits it. A defer that never arrived: the reply goes to the channel."""
    fake = discord_fake
    since = time.time()
    adapter = build_discord_adapter(app.bot, app.settings, DiscordOptions(guild_ready_timeout_s=0.05, stop_grace_s=10.0))
    asker, mentioner, unlucky = FakeUser(9331, "asker"), FakeUser(9332, "mentioner2"), FakeUser(9333, "unlucky")
    with watched() as casualties:
        await adapter.start()
        try:
            nonce_hits = fake.nonce_hits
            fake.storms.start(2.0, faults=(LOST_ANSWER,), routes={"callback", "channel_send"}, seed=31)
            acked = await fake.slash("chat", {"message": "answer lost?"}, user=asker, channel_id=CHANNEL)
            mention = await fake.say(mentioner, "and mine?", channel_id=CHANNEL, mention_bot=True)
            await asyncio.sleep(2.0)
            fake.storms.start(1.5, faults=("drop",), routes={"callback"}, seed=32)
            never = await fake.slash("chat", {"message": "never acknowledged?"}, user=unlucky, channel_id=CHANNEL)
            delivered_s = await all_delivered(app, "discord", 3, timeout=40.0, since=since)
        finally:
            await adapter.stop()
    tally = await tallied(app, fake, 3, since)
    assert delivered_s is not None and tally.lost == [] and tally.duplicated == [], (tally.lost, tally.duplicated)
    refused_again = [c for c in fake.calls_of("callback") if acked.token in c.path and c.status == 400]
    assert refused_again, "the repeated defer heard 'already acknowledged'"
    assert fake.original(acked.token) is not None and fake.original(acked.token).finished  # type: ignore[union-attr]
    replies = [m for m in fake.channel_messages(CHANNEL) if m.reference_id == mention.id]
    assert len(replies) == 1 and replies[0].finished and fake.nonce_hits > nonce_hits
    assert fake.original(never.token) is None, "never acknowledged: no deferred message"
    tried = [c.status for c in fake.calls_of("edit_original") if never.token in c.path]
    assert tried == [404] and not fake.replies_to(never.token), "tried the deferred message once, then the channel"
    assert casualties.all() == []
    assert fake.violations == [] and fake.pings == [] and fake.unhandled == []


# ---------------------------------------------------------------- the measuring itself


async def test_storm_windows_gaps_and_fault_cycle() -> None:
    """The figures above come from these: they count what they should."""
    assert max_in_window([0.0, 0.5, 0.9, 1.2, 5.0], 1.0) == 3
    assert max_in_window([], 1.0) == 0
    assert min_gap([0.0, 0.5, 0.9, 1.2]) == pytest.approx(0.3)
    assert min_gap([1.0]) is None
    storms = Storms()
    storm = storms.start(60.0, faults=("429", "drop"), routes={"sendMessage"})
    now = time.monotonic()
    assert [storms.pick("sendMessage", now) for _ in range(3)] == [("429", storm), ("drop", storm), ("429", storm)]
    assert storms.pick("getUpdates", now) is None
    storms.stop()
    assert storms.pick("sendMessage", time.monotonic()) is None and not storms.raging
    assert storms.injected == Counter({"429": 2, "drop": 1})


async def test_the_fakes_catch_a_client_that_ignores_retry_after(no_proxy: None) -> None:
    """A client that calls again inside a 429's window is counted (and fails the storm
    tests); a dropped or hung request reaches the client as a transport error."""
    fake = FakeTelegram()
    await fake.start()
    try:
        url = f"{fake.api_base}/bot{TOKEN}/sendMessage"
        fake.storms.start(30.0, faults=("429", "drop", "timeout"), routes={"sendMessage"}, hang_s=5.0)
        async with httpx.AsyncClient(timeout=1.0) as client:
            refused = await client.post(url, data={"chat_id": "5", "text": "one"})
            assert refused.status_code == 429 and refused.json()["parameters"]["retry_after"] == 1
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url, data={"chat_id": "5", "text": "again"})
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, data={"chat_id": "6", "text": "elsewhere"})
        assert fake.calls_in_retry_window == 1
        assert any("before retry_after passed" in v for v in fake.violations), fake.violations
        assert [c.fault for c in fake.calls] == ["429", "drop", "timeout"]
    finally:
        await fake.stop()

    async with FakeDiscord(send_limit=(2, 5.0)) as discord_server:
        discord_server.fail("channel_send", 429, retry_after=1.0)
        url = f"{discord_server.api_base}/channels/1111/messages"
        headers = {"Authorization": f"Bot {discord_server.token}"}
        async with httpx.AsyncClient() as client:
            sent = [await client.post(url, json={"content": f"{n}"}, headers=headers) for n in range(4)]
        assert [r.status_code for r in sent] == [429, 200, 200, 429]  # injected, then the bucket of 2
        assert sent[0].headers["Via"] and sent[3].headers["Via"]
        assert [r.headers.get("X-RateLimit-Remaining") for r in sent[1:]] == ["1", "0", "0"]
        assert discord_server.calls_in_429_window == 3 and discord_server.send_limit_hits == 1  # all inside 1 s
        assert discord_server.rates()["invalid_per_10min"] == 2
        discord_server.violations.clear()
