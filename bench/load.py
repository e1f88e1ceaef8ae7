"""The load table: many people at once on HTTP, Telegram and Discord, against one
``ovbot serve`` process, and whether every turn was accounted for.

``ovbot serve`` runs as a user starts it (a subprocess on the tiny models, a real SQLite
file) with its HTTP API, its Telegram adapter (python-telegram-bot polling the fake Bot
API of ``tests/fakes/fake_telegram.py``) and its Discord adapter (discord.py on the
gateway and REST API of ``tests/fakes/fake_discord.py``); the fakes and the sessions run
in this process. Each session is one person in a chat of their own:

- a *steady* session sends its turns one after another, each after the last reply;
- every ``burst_every``-th session is a *burst*: ``burst_size`` messages at once, more than
  ``OVBOT_MAX_QUEUED_PER_USER`` lets wait, so some of them must be refused.

Every turn must end in exactly one of: an answer (delivered once, its question and answer
stored), or a refusal that says why and when to try again. Anything else is counted:
*lost* (no reply, or an accepted turn whose answer never arrived), *duplicated* (an
answer shown more than once, or more answers than the database holds), *failed* (an
error reply that is not a refusal), *bad refusals* (no reason or no retry time). The
database is read after the run: every chat job done, one stored answer per answer seen.

Latency (steady turns only; a burst's turns wait for each other by design): submit to
the first response the person can see (HTTP: the first streamed event, "queued" or
later; Telegram: the first draft or message; Discord: the first content of the
interaction's reply, its status line "queued"/"thinking" or text) and submit to the
final reply (HTTP: ``reply_done``; Telegram: the message after the drafts; Discord: the
reply's last edit, which removes its cancel button). Discord's acknowledgement (the deferral or first answer, due
within 3 s) is reported on its own. Memory: RSS of the serve process and its engine
worker, sampled every 0.1 s, and the sum of each process's own peak (VmHWM).

The test suite runs the same driver (``tests/test_load.py``) and asserts the accounting,
never the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.common import Target, fmt, percentile, table
from bench.platform import _RssSampler
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser
from tests.fakes.fake_telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.fake_telegram import FakeTelegram
from ovbot.models.tiny import TinyModels
from tests.fixtures_serve import KEY, Server, ovbot_serve

PLATFORMS = ("http", "telegram", "discord")
GUILD = 111
NO_PROXY = "127.0.0.1,localhost"
#: a refusal names its reason and then when to try again, e.g. "You already have 5
#: requests waiting. Please try again in ~3 s." (core/jobs/queue.py, core/limits.py)
RETRY_TIME = re.compile(r"try again in ~?\s*\d", re.IGNORECASE)
#: how long the chats stay watched after the last reply, for late duplicates
SETTLE_S = 2.0

Outcome = Literal["answered", "refused", "bad_refusal", "failed", "lost"]


@dataclass(frozen=True)
class LoadConfig:
    sessions: int = 200
    turns_per_session: int = 2
    #: every n-th session sends a burst instead of steady turns
    burst_every: int = 10
    #: messages a burst sends at once (above the per-user queue bound of 5)
    burst_size: int = 7
    max_new_tokens: int = 12
    #: seconds a turn may take before it counts as lost
    turn_timeout_s: float = 240.0
    #: extra OVBOT_* settings for the served process (e.g. a lower OVBOT_MAX_QUEUED_TOTAL)
    settings: tuple[tuple[str, str], ...] = ()


def smoke_load_config() -> LoadConfig:
    return LoadConfig(sessions=30, turns_per_session=1, burst_every=10, burst_size=7)


# --------------------------------------------------------------------------- records


@dataclass
class TurnRecord:
    platform: str
    session: int
    burst: bool
    submitted: float
    outcome: Outcome = "lost"
    #: refusal kind (HTTP error kind, or the reply's first sentence on chat platforms)
    reason: str = ""
    first_s: float | None = None
    final_s: float | None = None


@dataclass
class ChatTally:
    """What one session's chat showed, to compare with what the database stored."""

    platform: str
    session: int
    chat_id: str
    answers_seen: int = 0
    duplicates_seen: int = 0


@dataclass
class StoredChat:
    done_jobs: int = 0
    other_jobs: Counter[str] = field(default_factory=Counter)
    answers: int = 0


@dataclass
class LoadResult:
    cfg: LoadConfig
    turns: list[TurnRecord]
    chats: list[ChatTally]
    stored: dict[tuple[str, str], StoredChat]
    wall_s: float
    rss_ready_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    rss_hwm_mb: float
    processes: int
    discord_ack_s: list[float]
    violations: list[str]
    serving_after: bool
    exit_code: int | None

    def of(self, platform: str) -> list[TurnRecord]:
        return [t for t in self.turns if t.platform == platform]

    def stored_of(self, platform: str) -> list[StoredChat]:
        """What the database holds for the sessions' chats on ``platform``."""
        return [stored for _, stored in self._compared(platform)]

    def _compared(self, platform: str) -> list[tuple[ChatTally, StoredChat]]:
        return [(c, self.stored.get((platform, c.chat_id), StoredChat())) for c in self.chats if c.platform == platform]

    def lost(self, platform: str) -> int:
        """Turns without any reply, plus accepted turns whose answer never showed (or
        whose job never ended)."""
        unanswered = sum(1 for t in self.of(platform) if t.outcome == "lost")
        for chat, stored in self._compared(platform):
            unanswered += max(0, stored.answers - chat.answers_seen)
            unanswered += sum(count for state, count in stored.other_jobs.items() if state in ("queued", "running"))
        return unanswered

    def duplicated(self, platform: str) -> int:
        """Answers shown twice, or more answers shown than the database stored."""
        return sum(
            chat.duplicates_seen + max(0, chat.answers_seen - stored.answers) for chat, stored in self._compared(platform)
        )

    def failed_jobs(self, platform: str) -> int:
        return sum(
            count
            for stored in self.stored_of(platform)
            for state, count in stored.other_jobs.items()
            if state not in ("queued", "running")
        )


# --------------------------------------------------------------------------- classification


def refusal_ok(text: str) -> bool:
    """A reason (some words) before a retry time."""
    match = RETRY_TIME.search(text)
    return match is not None and len(text[: match.start()].strip(" ⏳.")) >= 8


def classify_chat_reply(text: str) -> tuple[Outcome, str]:
    """A chat platform's reply to one message: an answer, a refusal (⏳, the one reply
    shape of QueueFull and RateLimited, adapters/common/replies.py) or another error."""
    if text.startswith("⏳"):
        reason = text.removeprefix("⏳").strip().split(".")[0]
        return ("refused" if refusal_ok(text) else "bad_refusal"), _reason_kind(reason)
    if text.startswith(("⚠️", "⛔")):
        return "failed", text[:60]
    return "answered", ""


def _reason_kind(sentence: str) -> str:
    """The refusal's reason without its numbers, so equal reasons count together."""
    return re.sub(r"\d+", "N", sentence)


# --------------------------------------------------------------------------- HTTP


class HttpSessions:
    """``POST /chat?stream=true``: the first event (queued, a status, text) is the first
    visible response, the ``reply_done`` event the final reply; a refusal is an error
    body with a kind and a message, and a ``Retry-After`` header."""

    def __init__(self, base_url: str, sessions: int) -> None:
        limits = httpx.Limits(max_connections=sessions * 8 + 16, max_keepalive_connections=sessions + 16)
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600, limits=limits,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def chat_id(self, session: int) -> str:
        return f"load-http-{session}"

    async def turn(self, session: int, text: str, record: TurnRecord) -> None:
        body = {"user_id": self.chat_id(session), "message": text}
        try:
            async with self._client.stream("POST", "/chat", params={"stream": "true"}, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    self._refusal(response, record)
                    return
                async for name, data in _sse(response):
                    now = time.monotonic()
                    if record.first_s is None:  # queued, a status or text: a client shows each
                        record.first_s = now - record.submitted
                    if name == "reply_done":
                        record.final_s = now - record.submitted
                        record.outcome = "answered"
                    elif name == "error":
                        record.outcome, record.reason = "failed", str(data.get("data", {}).get("kind", "error"))
        except httpx.HTTPError as exc:
            record.outcome, record.reason = "lost", type(exc).__name__

    @staticmethod
    def _refusal(response: httpx.Response, record: TurnRecord) -> None:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        kind, message = str(error.get("kind") or ""), str(error.get("message") or "")
        retry = response.headers.get("Retry-After")
        if kind in ("queue_full", "rate_limited"):
            good = bool(message) and retry is not None and int(retry) > 0 and refusal_ok(message)
            reason = f"{kind}: {_reason_kind(message.split('.')[0])}"
            record.outcome, record.reason = ("refused" if good else "bad_refusal"), reason
        else:
            record.outcome, record.reason = "failed", f"{response.status_code} {kind}"
        record.final_s = record.first_s = time.monotonic() - record.submitted

    def tally(self, session: int, records: list[TurnRecord]) -> ChatTally:
        tally = ChatTally("http", session, self.chat_id(session))
        tally.answers_seen = sum(1 for r in records if r.outcome == "answered")
        return tally


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and name:
            yield name, json.loads(data or "{}")
            name, data = "", ""


# --------------------------------------------------------------------------- watching the fakes


class Watch:
    """Wakes the waiting sessions after one pass over a fake's state every ``every_s``.

    The fakes' own waits re-check every waiter on every request; with ~70 sessions a
    platform, each check scanning every message, the driver would spend the machine's
    CPU on bookkeeping and stamp the fakes' calls late, the very times it measures. Here
    ``refresh`` indexes the fake once a pass and each check is a lookup."""

    def __init__(self, refresh: Callable[[], None], every_s: float = 0.05) -> None:
        self._refresh = refresh
        self._every_s = every_s
        self._pass = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresh()
        self._task = asyncio.create_task(self._run(), name="load-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._refresh()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            self._refresh()
            self._pass.set()
            self._pass = asyncio.Event()

    async def until(self, check: Callable[[], bool], timeout: float) -> bool:
        """True once ``check()`` holds after a pass; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pass.wait(), remaining)
        return True


# --------------------------------------------------------------------------- Telegram


class TelegramSessions:
    """One private chat a session. A private reply is drafts, then one message
    (adapters/telegram): the session's n-th text message from the bot answers its n-th
    message (steady turns wait for it; a burst waits for as many as it sent)."""

    def __init__(self, fake: FakeTelegram) -> None:
        self._fake = fake
        self._texts: dict[int, list[str]] = {}
        self.watch = Watch(self._index)

    @staticmethod
    def _chat(session: int) -> int:
        return 800_000 + session

    def chat_id(self, session: int) -> str:
        return str(self._chat(session))

    def _index(self) -> None:
        """The bot's text messages per chat, oldest first (message ids grow per chat)."""
        texts: dict[int, list[str]] = {}
        for (chat_id, _), message in self._fake.messages.items():
            if message.from_bot and message.kind == "text":
                texts.setdefault(chat_id, []).append(message.body)
        self._texts = texts

    def _replies(self, session: int) -> list[str]:
        return self._texts.get(self._chat(session), [])

    async def turns(self, session: int, texts: list[str], records: list[TurnRecord], timeout: float) -> None:
        """Send ``texts`` at once and wait for as many replies."""
        user = self._fake.person(self._chat(session), f"Load{session}")
        chat = self._fake.private_chat(user)
        before = len(self._replies(session))
        for text, record in zip(texts, records):
            record.submitted = time.monotonic()
            self._fake.say(chat, user, text)
        await self.watch.until(lambda: len(self._replies(session)) >= before + len(texts), timeout)
        for record, reply in zip(records, self._replies(session)[before:]):
            record.outcome, record.reason = classify_chat_reply(reply)

    def time_turns(self, records: list[TurnRecord]) -> None:
        """First and final times of the steady turns, from the fake's calls (one pass):
        a chat's first draft or message after the submit, and its first message."""
        calls: dict[int, list[Any]] = {}
        for call in self._fake.calls:
            if call.chat_id is not None and call.status == 200 and call.method in ("sendMessage", "sendMessageDraft"):
                calls.setdefault(call.chat_id, []).append(call)  # an empty draft shows "Thinking…"
        for record in records:
            if record.burst or record.outcome != "answered":
                continue
            after = [c for c in calls.get(self._chat(record.session), []) if c.at >= record.submitted]
            final = next((c for c in after if c.method == "sendMessage"), None)
            if after:
                record.first_s = after[0].at - record.submitted
            if final is not None:
                record.final_s = final.at - record.submitted

    def tally(self, session: int, records: list[TurnRecord]) -> ChatTally:
        tally = ChatTally("telegram", session, self.chat_id(session))
        replies = [classify_chat_reply(text)[0] for text in self._replies(session)]
        tally.answers_seen = replies.count("answered")
        tally.duplicates_seen = max(0, len(replies) - len(records))  # more replies than messages
        return tally


# --------------------------------------------------------------------------- Discord

#: the interaction token in a callback or webhook route
_TOKEN_IN_PATH = re.compile(r"/(?:interactions/\d+|webhooks/\d+)/([^/]+)")


class DiscordSessions:
    """``/chat`` in a guild channel of the session's own. An answer is the interaction's
    reply made final (its cancel button removed); a refusal is a message of that
    interaction starting with ⏳ (ephemeral, or the deferred reply filled with it)."""

    def __init__(self, fake: FakeDiscord, channels: list[int]) -> None:
        self._fake = fake
        self._channels = channels
        self._shown: dict[str, list[FakeMessage]] = {}
        self.watch = Watch(self._index)
        self.tokens: dict[int, list[str]] = {}
        #: interaction token -> the turn it carried
        self.turn_of: dict[str, TurnRecord] = {}

    def chat_id(self, session: int) -> str:
        return str(self._channels[session])

    def _index(self) -> None:
        """Per interaction, its messages that are done (text, no cancel button left)."""
        shown: dict[str, list[FakeMessage]] = {}
        for message in self._fake.messages.values():
            if message.interaction_token and message.content and not message.components:
                shown.setdefault(message.interaction_token, []).append(message)
        self._shown = shown

    def _answers(self, token: str) -> list[FakeMessage]:
        shown = self._shown.get(token, [])
        return [m for m in shown if not m.ephemeral and classify_chat_reply(m.content)[0] == "answered"]

    async def turns(self, session: int, texts: list[str], records: list[TurnRecord], timeout: float) -> None:
        user = FakeUser(700_000 + session, f"load{session}")
        channel = self._channels[session]
        tokens: list[str] = []
        for text, record in zip(texts, records):
            record.submitted = time.monotonic()
            interaction = await self._fake.slash("chat", {"message": text}, user=user, channel_id=channel, guild_id=GUILD)
            tokens.append(interaction.token)
            self.turn_of[interaction.token] = record
        self.tokens.setdefault(session, []).extend(tokens)
        await self.watch.until(lambda: all(token in self._shown for token in tokens), timeout)
        for token, record in zip(tokens, records):
            shown = self._shown.get(token)
            if shown:
                record.outcome, record.reason = classify_chat_reply(shown[0].content)

    def _calls_by_token(self) -> dict[str, list[Any]]:
        calls: dict[str, list[Any]] = {}
        for call in self._fake.calls:
            match = _TOKEN_IN_PATH.search(call.path)
            if match and call.status < 300:
                calls.setdefault(match.group(1), []).append(call)
        return calls

    def time_turns(self) -> None:
        """First and final times of the steady turns: the first call that showed the
        reply some content, and the reply's last call (the edit that made it final)."""
        calls = self._calls_by_token()
        for token, record in self.turn_of.items():
            if record.burst or record.outcome != "answered":
                continue
            made = calls.get(token, [])
            shown = [c for c in made if isinstance(c.body, dict) and (c.body.get("content") or (c.body.get("data") or {}).get("content"))]
            if shown:
                record.first_s = shown[0].at - record.submitted
            if made:
                record.final_s = made[-1].at - record.submitted

    def ack_times(self) -> list[float]:
        """Seconds from each interaction to its first callback (Discord's 3 s deadline)."""
        calls = self._calls_by_token()
        return [
            next(c.at for c in calls[token] if c.route == "callback") - record.submitted
            for token, record in self.turn_of.items()
            if any(c.route == "callback" for c in calls.get(token, []))
        ]

    def tally(self, session: int, records: list[TurnRecord]) -> ChatTally:
        tally = ChatTally("discord", session, self.chat_id(session))
        for token in self.tokens.get(session, []):
            answers = len(self._answers(token))
            tally.answers_seen += min(1, answers)
            tally.duplicates_seen += max(0, answers - 1)
        return tally


# --------------------------------------------------------------------------- the run


def platform_of(session: int) -> str:
    return PLATFORMS[session % len(PLATFORMS)]


def is_burst(session: int, cfg: LoadConfig) -> bool:
    return cfg.burst_every > 0 and session % cfg.burst_every == cfg.burst_every - 1


def message(session: int, turn: int) -> str:
    return f"Session {session}, message {turn}: suggest a book about rivers."


class Sessions:
    """The three platforms' session drivers behind one call per session."""

    def __init__(self, http: HttpSessions, telegram: TelegramSessions, discord: DiscordSessions, cfg: LoadConfig) -> None:
        self.http, self.telegram, self.discord, self.cfg = http, telegram, discord, cfg
        self.records: dict[int, list[TurnRecord]] = {}

    async def run(self, session: int) -> None:
        platform, burst = platform_of(session), is_burst(session, self.cfg)
        count = self.cfg.burst_size if burst else self.cfg.turns_per_session
        records = [TurnRecord(platform, session, burst, time.monotonic()) for _ in range(count)]
        self.records[session] = records
        texts = [message(session, turn) for turn in range(count)]
        groups = [list(range(count))] if burst else [[turn] for turn in range(count)]
        for group in groups:
            await self._send([texts[i] for i in group], [records[i] for i in group])

    async def _send(self, texts: list[str], records: list[TurnRecord]) -> None:
        timeout = self.cfg.turn_timeout_s
        platform, session = records[0].platform, records[0].session
        if platform == "http":
            async def one(text: str, record: TurnRecord) -> None:
                record.submitted = time.monotonic()
                try:
                    await asyncio.wait_for(self.http.turn(session, text, record), timeout)
                except asyncio.TimeoutError:
                    record.outcome, record.reason = "lost", "no reply in time"

            await asyncio.gather(*(one(t, r) for t, r in zip(texts, records)))
        elif platform == "telegram":
            await self.telegram.turns(session, texts, records, timeout)
        else:
            await self.discord.turns(session, texts, records, timeout)

    def tallies(self) -> list[ChatTally]:
        drivers = {"http": self.http, "telegram": self.telegram, "discord": self.discord}
        return [drivers[platform_of(s)].tally(s, records) for s, records in sorted(self.records.items())]


def serve_settings(cfg: LoadConfig, telegram: FakeTelegram, discord: FakeDiscord) -> dict[str, str]:
    env = dict(
        OVBOT_MAX_NEW_TOKENS=str(cfg.max_new_tokens),
        OVBOT_LOG_LEVEL="INFO",
        OVBOT_TELEGRAM_TOKEN=TELEGRAM_TOKEN,
        OVBOT_TELEGRAM_API_BASE=telegram.api_base,
        OVBOT_DISCORD_TOKEN=discord.token,
        OVBOT_DISCORD_API_BASE=discord.api_base,
        OVBOT_DISCORD_GATEWAY_URL=discord.gateway_url,
        OVBOT_DISCORD_GUILD_IDS=str(GUILD),
        NO_PROXY=NO_PROXY,
    )
    env.update(dict(cfg.settings))
    return env


async def wait_all_ready(server: Server, timeout: float = 120.0) -> None:
    """``/ready`` is 200 and both platform adapters report in."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await client.get("/ready")
                checks = response.json().get("checks", {})
                if response.status_code == 200 and all(
                    checks.get(f"adapter_{name}", {}).get("ok") for name in ("telegram", "discord")
                ):
                    return
            if server.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("ovbot serve never became ready:\n" + server.output[-3000:])
            await asyncio.sleep(0.1)


async def still_serving(server: Server) -> bool:
    """After the load: ``/ready`` is 200 and a new HTTP turn is answered."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120, trust_env=False) as client:
        ready = await client.get("/ready")
        turn = await client.post("/chat", json={"user_id": "load-after", "message": "Still there?"})
    return ready.status_code == 200 and turn.status_code == 200 and bool(turn.json().get("text") is not None)


def stored_chats(db: Path) -> dict[tuple[str, str], StoredChat]:
    """Per (platform, chat id): chat jobs by state and stored answers, read as another
    process would (the served one has exited). HTTP chat ids are ``<key id>:<user id>``."""
    found: dict[tuple[str, str], StoredChat] = {}

    def key(platform: str, chat_id: str) -> tuple[str, str]:
        return platform, chat_id.split(":", 1)[1] if platform == "http" else chat_id

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs = conn.execute("SELECT chat_platform, chat_id, state, count(*) FROM jobs WHERE kind = 'chat' GROUP BY 1, 2, 3")
        for platform, chat_id, state, count in jobs:
            stored = found.setdefault(key(platform, chat_id), StoredChat())
            if state == "done":
                stored.done_jobs += count
            else:
                stored.other_jobs[state] += count
        answers = conn.execute(
            "SELECT j.chat_platform, j.chat_id, count(*) FROM turns t JOIN jobs j ON t.job_id = j.id "
            "WHERE t.role = 'assistant' AND j.kind = 'chat' GROUP BY 1, 2"
        )
        for platform, chat_id, count in answers:
            found.setdefault(key(platform, chat_id), StoredChat()).answers += count
    finally:
        conn.close()
    return found


async def run_load(tiny_models: TinyModels, workdir: Path, cfg: LoadConfig, log: Callable[[str], None] = print) -> LoadResult:
    """Start the fakes and ``ovbot serve``, run every session at once, stop the server
    (SIGTERM), read its database; the result holds every turn's outcome."""
    discord_sessions = [s for s in range(cfg.sessions) if platform_of(s) == "discord"]
    channels = {s: 5_000_000 + s for s in discord_sessions}
    telegram = FakeTelegram()
    await telegram.start()
    try:
        async with FakeDiscord(guilds={GUILD: list(channels.values()) or [5_000_000]}) as discord:
            result = await _run_served(tiny_models, workdir, cfg, telegram, discord, channels, log)
    finally:
        await telegram.stop()
    return result


@dataclass
class Measured:
    wall_s: float
    ready_mb: float
    peak_mb: float
    after_mb: float
    hwm_mb: float
    processes: int
    serving_after: bool


async def _drive(server: Server, sessions: Sessions) -> Measured:
    """Every session at once while RSS is sampled; then a pause for late duplicates,
    and whether ovbot still answers."""
    sessions.telegram.watch.start()
    sessions.discord.watch.start()
    try:
        with _RssSampler(server.process.pid) as rss:
            ready_mb = rss.sample()
            began = time.monotonic()
            try:
                await asyncio.gather(*(sessions.run(s) for s in range(sessions.cfg.sessions)))
            finally:
                await sessions.http.aclose()
            wall = time.monotonic() - began
            await asyncio.sleep(SETTLE_S)  # a late second copy of a reply would land now
            serving_after = await still_serving(server)
            after_mb = rss.sample()
    finally:
        await sessions.telegram.watch.stop()  # with a last pass: what the tallies count
        await sessions.discord.watch.stop()
    return Measured(wall, ready_mb, rss.peak_mb, after_mb, sum(rss.hwm_mb.values()), len(rss.hwm_mb), serving_after)


async def _run_served(
    tiny_models: TinyModels, workdir: Path, cfg: LoadConfig, telegram: FakeTelegram, discord: FakeDiscord,
    channels: dict[int, int], log: Callable[[str], None],
) -> LoadResult:
    channel_list = [channels.get(s, 0) for s in range(cfg.sessions)]
    async with ovbot_serve(tiny_models, workdir, **serve_settings(cfg, telegram, discord)) as server:
        await wait_all_ready(server)
        log(f"  load: serving at {server.url}; {cfg.sessions} sessions start")
        http = HttpSessions(server.url, cfg.sessions)
        sessions = Sessions(http, TelegramSessions(telegram), DiscordSessions(discord, channel_list), cfg)
        measured = await _drive(server, sessions)
        exit_code = await server.stop(signal.SIGTERM, timeout=120)
    turns = [record for _, records in sorted(sessions.records.items()) for record in records]
    sessions.telegram.time_turns(turns)
    sessions.discord.time_turns()
    result = LoadResult(
        cfg, turns, sessions.tallies(), stored_chats(server.data_dir / "ovbot.db"), measured.wall_s,
        measured.ready_mb, measured.peak_mb, measured.after_mb, measured.hwm_mb, measured.processes,
        sessions.discord.ack_times(), [*telegram.violations, *discord.violations, *discord.unhandled],
        measured.serving_after, exit_code,
    )
    log(f"  load: {len(turns)} turns in {measured.wall_s:.1f} s, " + ", ".join(
        f"{p}: {sum(t.outcome == 'answered' for t in result.of(p))} answered, {result.lost(p)} lost" for p in PLATFORMS
    ))
    return result


# --------------------------------------------------------------------------- section

TITLE = "### Load table"


def _latency(values: list[float | None], q: float) -> str:
    found = [v for v in values if v is not None]
    return fmt(percentile(found, q), 2) if found else "n/a"


def _reasons(turns: list[TurnRecord]) -> str:
    counted = Counter(t.reason for t in turns if t.outcome in ("refused", "bad_refusal"))
    return "; ".join(f"{count}× {reason}" for reason, count in counted.most_common()) or "-"


def render(result: LoadResult) -> str:
    cfg = result.cfg
    rows = []
    for platform in PLATFORMS:
        turns = result.of(platform)
        sessions = len({t.session for t in turns})
        steady = [t for t in turns if not t.burst and t.outcome == "answered"]
        finals = [t.final_s for t in steady]
        rows.append([
            platform, str(sessions), str(len(turns)),
            str(sum(t.outcome == "answered" for t in turns)),
            str(sum(t.outcome == "refused" for t in turns)),
            str(result.lost(platform)), str(result.duplicated(platform)),
            str(sum(t.outcome in ("failed", "bad_refusal") for t in turns) + result.failed_jobs(platform)),
            _latency([t.first_s for t in steady], 0.5), _latency([t.first_s for t in steady], 0.95),
            _latency(finals, 0.5), _latency(finals, 0.95), _latency(finals, 1.0),
            _reasons(turns),
        ])
    acks = result.discord_ack_s
    late = sum(1 for a in acks if a >= 3.0)
    summary = [
        ["sessions (HTTP / Telegram / Discord)", " / ".join(str(len({t.session for t in result.of(p)})) for p in PLATFORMS)],
        ["turns sent", str(len(result.turns))],
        ["duration (first submit to last reply)", fmt(result.wall_s, 1, " s")],
        ["RSS of serve + engine worker: ready / peak / after the load", " / ".join(
            fmt(mb, 0) for mb in (result.rss_ready_mb, result.rss_peak_mb, result.rss_after_mb)) + " MB"],
        [f"sum of per-process peaks (VmHWM, {result.processes} processes)", fmt(result.rss_hwm_mb, 0, " MB")],
        ["Discord acknowledgement p50 / p95 / max (deadline 3 s)",
         " / ".join(_latency(list(acks), q) for q in (0.5, 0.95, 1.0)) + " s"],
        ["Discord interactions acknowledged after 3 s", str(late)],
        ["platform rule breaches seen by the fakes", str(len(result.violations))],
        ["still serving after (ready + a new turn)", "yes" if result.serving_after else "NO"],
        ["exit code after SIGTERM", str(result.exit_code)],
    ]
    settings = ", ".join(f"`{k}={v}`" for k, v in cfg.settings) or "product defaults (5 waiting per user, 200 overall)"
    parts = [
        TITLE,
        f"`ovbot serve` in a subprocess (tiny models, `OVBOT_MAX_NEW_TOKENS={cfg.max_new_tokens}`, real SQLite) with "
        "HTTP, Telegram (python-telegram-bot against tests/fakes/fake_telegram.py) and Discord (discord.py against "
        f"tests/fakes/fake_discord.py). {cfg.sessions} sessions at once, one person and chat each, spread evenly "
        f"over the platforms: steady sessions send {cfg.turns_per_session} messages one after another; every "
        f"{cfg.burst_every}th session sends {cfg.burst_size} at once (more than may wait per user, so some are "
        f"refused). Queue bounds: {settings}. Lost = no reply, or an accepted turn whose answer never showed; "
        "duplicated = an answer shown twice or more answers shown than stored; failed = an error that is not a "
        "refusal, a refusal without reason or retry time, or a chat job that did not end done. Latency (s) over "
        "steady answered turns: submit to the first visible response (HTTP: first SSE event; Telegram: first draft; "
        "Discord: the reply's first status line or text) and to the final reply. The fakes run in the driver's "
        "process on the same 2 cores.",
        table(
            ["platform", "sessions", "turns", "answered", "refused", "lost", "duplicated", "failed",
             "first p50", "first p95", "final p50", "final p95", "final max", "refusal reasons"],
            rows, "lrrrrrrrrrrrrl",
        ),
        table(["load run", ""], summary, "lr"),
    ]
    if result.violations:
        parts.append("Breaches: " + "; ".join(result.violations[:5]) + ".")
    return "\n\n".join(parts)


async def load_section(tiny_models: TinyModels, cfg: LoadConfig, log: Callable[[str], None]) -> tuple[str, list[Target]]:
    with tempfile.TemporaryDirectory(prefix="ovbot-bench-load3-") as tmp:
        result = await run_load(tiny_models, Path(tmp), cfg, log)
    lost = sum(result.lost(p) for p in PLATFORMS)
    duplicated = sum(result.duplicated(p) for p in PLATFORMS)
    targets = [
        Target(f"lost turns at {cfg.sessions} sessions on 3 platforms", "0", str(lost), lost == 0),
        Target(f"duplicated replies at {cfg.sessions} sessions", "0", str(duplicated), duplicated == 0),
    ]
    return render(result), targets
