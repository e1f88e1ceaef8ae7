"""Secrets and users' words stay out of the logs; secrets stay out of errors and replies.

One ``serve`` (HTTP, Telegram and Discord against the fakes, the tiny models) runs with
the sentinel secrets (``tests/sentinels.py``), ovbot's own logging configured as ``ovbot
serve`` configures it, and then every logger (ovbot's, the root, httpx, httpcore,
discord, telegram, aiosqlite, uvicorn, asyncio...) raised to DEBUG, so every record any
part writes is created. Each record is captured and judged three ways:

- its text through ovbot's formatter *without* the configured values (only the
  token-shaped patterns redact): no sentinel fragment, whatever the logger and level;
  redaction must not depend on knowing a value (``ovbot`` commands other than serve,
  interaction tokens, a cut or re-encoded value);
- a record of ovbot's own loggers, raw (before any redaction): no sentinel and no
  canary (a string only users' messages in this module contain);
- the text of a record that ovbot's configuration lets through (its loggers at DEBUG,
  the chatty libraries at WARNING): no canary. Library records below WARNING do carry
  users' words (gateway events, request payloads, SQL parameters): the test counts
  them and so proves they exist and that the loggers writing them are the pinned ones.

Error bodies (HTTP), every call the fakes received (Telegram, Discord) and every SSE
event are checked for sentinels too. ``ovbot serve`` as a subprocess at
OVBOT_LOG_LEVEL=DEBUG (its engine worker included) and the ``ovbot`` commands that fail
on a bad or refused secret are checked line by line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from ovbot.adapters.base import Adapter
from ovbot.adapters.discord import build_discord_adapter
from ovbot.adapters.telegram import TelegramAdapter, TelegramConfig
from ovbot.bots.cli import main
from ovbot.core.logging_setup import QUIET_LOGGERS, SafeFormatter, configure_logging
from ovbot.bots.serve import serve
from ovbot.core.bot import Bot
from ovbot.core.config import Settings
from ovbot.core.engines.local import LocalEngines, WorkerConfig
from ovbot.core.errors import EngineUnavailable
from ovbot.models.tiny import TinyModels
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, FakeUser
from tests.fakes.fake_telegram import FakeTelegram
from tests.fixtures_app import bot_settings
from tests.fixtures_serve import ovbot_serve
from tests.sentinel_check import raw_text
from tests.sentinels import (
    API_KEY,
    HF_TOKEN,
    MARK,
    OTHER_API_KEY,
    REMOTE_API_KEY,
    TELEGRAM_TOKEN,
    TELEGRAM_WEBHOOK_SECRET,
    discord_token,
    sentinels_in,
)
from tests.test_discord import ephemeral_answer, fast_options, final_original
from tests.test_telegram import Person

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: in every message a user sends in this module, and nowhere else
CANARY = "cnry-Vd83Lq"
FORGED = "1999-12-31 23:59:59,000 INFO ovbot.http: FORGED"
GUILD, CHANNEL = 111, 1111
NO_PROXY = "127.0.0.1,localhost"
#: every logger raised to DEBUG ("" is the root); their children inherit it
LOUD = ("", "ovbot", *QUIET_LOGGERS, "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "aiohttp", "websockets")
#: a formatter that knows no secret value: only the token-shaped patterns redact
BARE = SafeFormatter("%(levelname)s %(name)s: %(message)s")


@dataclass(frozen=True)
class Captured:
    name: str
    levelno: int
    raw: str
    logged: str


class LogCapture(logging.Handler):
    """Every record, with its raw text and the text ovbot's formatter writes for it
    when it knows no secret value (``BARE``)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[Captured] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(Captured(record.name, record.levelno, raw_text(record), BARE.format(record)))

    def take(self) -> list[Captured]:
        records, self.records = self.records, []
        return records


def product_emits(name: str, levelno: int) -> bool:
    """Whether ``ovbot serve`` at OVBOT_LOG_LEVEL=DEBUG writes this record."""
    pinned = any(name == quiet or name.startswith(quiet + ".") for quiet in QUIET_LOGGERS)
    return levelno >= logging.WARNING if pinned else True


@dataclass
class Verdict:
    leaks: list[str] = field(default_factory=list)
    redacted: int = 0  # raw records with a sentinel that the formatter redacted
    library_canaries: set[str] = field(default_factory=set)  # pinned loggers seen carrying users' words


def judge(records: Sequence[Captured]) -> Verdict:
    verdict = Verdict()
    for record in records:
        where = f"{record.name} {logging.getLevelName(record.levelno)}: {record.logged[:300]}"
        if sentinels_in(record.logged):
            verdict.leaks.append(f"sentinel {sentinels_in(record.logged)} in {where}")
        elif sentinels_in(record.raw):
            verdict.redacted += 1
        if record.name.startswith("ovbot") and (sentinels_in(record.raw) or CANARY in record.raw):
            verdict.leaks.append(f"ovbot handed a secret or a user's words to logging: {where}")
        if CANARY in record.logged:
            if product_emits(record.name, record.levelno):
                verdict.leaks.append(f"users' words in {where}")
            else:
                verdict.library_canaries.add(record.name)
    return verdict


def loud_logging(settings: Settings, capture: LogCapture) -> None:
    """ovbot serve's logging (``run_serve``), then every logger at DEBUG and captured."""
    configure_logging("DEBUG", settings.secrets())
    for name in LOUD:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)


def quiet_again(capture: LogCapture) -> None:
    """Logging as a fresh process has it, for the modules that run next."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h is not capture and not isinstance(h.formatter, SafeFormatter)]
    root.setLevel(logging.WARNING)
    for name in LOUD[1:]:
        logging.getLogger(name).setLevel(logging.NOTSET)


def assert_no_sentinel(texts: Sequence[str], what: str) -> None:
    shown = [(sentinels_in(text), text[:200]) for text in texts if sentinels_in(text)]
    assert not shown, f"a sentinel in {what}: {shown}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the served system


@dataclass
class System:
    settings: Settings
    telegram_fake: FakeTelegram
    discord_fake: FakeDiscord
    adapters: list[Adapter]
    capture: LogCapture
    url: str
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def telegram(self) -> TelegramAdapter:
        return next(a for a in self.adapters if isinstance(a, TelegramAdapter))

    def scan(self, what: str) -> Verdict:
        records = self.capture.take()
        verdict = judge(records)
        for figure, value in (("records", len(records)), ("redacted", verdict.redacted), ("leaks", len(verdict.leaks))):
            self.figures[figure] = self.figures.get(figure, 0) + value
        print(
            f"{what}: {len(records)} records scanned, {verdict.redacted} held a secret the patterns redacted, "
            f"{len(verdict.leaks)} leaks; users' words only below WARNING in {sorted(verdict.library_canaries)}"
        )
        return verdict


@pytest.fixture(scope="module")
def no_proxy() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", NO_PROXY)
        yield


def platform_settings(tg: FakeTelegram, dc: FakeDiscord) -> dict[str, str]:
    """The settings (each secret among them) both servings run with, by field name."""
    return dict(
        hf_token=HF_TOKEN,
        remote_api_key=REMOTE_API_KEY,
        telegram_token=TELEGRAM_TOKEN,
        telegram_api_base=tg.api_base,
        telegram_webhook_secret=TELEGRAM_WEBHOOK_SECRET,
        discord_token=dc.token,
        discord_api_base=dc.api_base,
        discord_gateway_url=dc.gateway_url,
        discord_guild_ids=str(GUILD),
    )


def system_settings(tiny_models: TinyModels, data_dir: Path, tg: FakeTelegram, dc: FakeDiscord, port: int) -> Settings:
    return bot_settings(
        tiny_models,
        data_dir,
        http_host="127.0.0.1",
        http_port=port,
        api_keys=[API_KEY, OTHER_API_KEY],
        **platform_settings(tg, dc),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory, no_proxy: None
) -> AsyncIterator[System]:
    telegram_fake = FakeTelegram()
    await telegram_fake.start()
    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as discord_fake:
        port = free_port()
        settings = system_settings(tiny_models, tmp_path_factory.mktemp("secrets"), telegram_fake, discord_fake, port)
        capture = LogCapture()
        loud_logging(settings, capture)
        adapters: list[Adapter] = []

        def platform_adapters(bot: Bot, settings: Settings) -> list[Adapter]:
            telegram = TelegramConfig.from_settings(settings, poll_timeout_s=1.0)
            assert telegram is not None
            adapters.extend([TelegramAdapter(bot, telegram), build_discord_adapter(bot, settings, fast_options())])
            return adapters

        serving = asyncio.create_task(serve(settings, grace_s=1, adapters=platform_adapters))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
            for _ in range(1200):
                assert not serving.done(), serving
                try:
                    ready = await client.get("/ready")
                    if ready.status_code == 200 and {"adapter_telegram", "adapter_discord"} <= set(ready.json()["checks"]):
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail("ovbot serve never became ready with both platforms")
        system = System(settings, telegram_fake, discord_fake, adapters, capture, url)
        try:
            yield system
        finally:
            loud_logging(settings, capture)  # the shutdown is judged too
            assert not serving.done(), serving  # else the signal would stop pytest instead
            signal.raise_signal(signal.SIGTERM)  # serve's own handler takes it
            assert await asyncio.wait_for(serving, 60) == 0
            await telegram_fake.stop()
            quiet_again(capture)
            stop = system.scan("start-up, between the tests and shutdown")
            print(f"in all: {system.figures}")
            assert not stop.leaks, "\n".join(stop.leaks)


@pytest.fixture(autouse=True)
def loud(system: System) -> Iterator[None]:
    """conftest undoes ovbot's logging after each test: each test sets it up again."""
    loud_logging(system.settings, system.capture)
    yield
    quiet_again(system.capture)


def assert_clean_logs(system: System, what: str) -> Verdict:
    verdict = system.scan(what)
    assert not verdict.leaks, "\n".join(verdict.leaks)
    return verdict


# ---------------------------------------------------------------- HTTP


async def test_http_chat_stream_and_errors_leak_nothing(system: System) -> None:
    bodies: list[str] = []
    async with httpx.AsyncClient(
        base_url=system.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120, trust_env=False
    ) as client, httpx.AsyncClient(base_url=system.url, timeout=30, trust_env=False) as anonymous:
        chat = await client.post("/chat", json={"user_id": "sec-ann", "message": f"what is a {CANARY}?"})
        assert chat.status_code == 200, chat.text
        async with client.stream(
            "POST", "/chat?stream=true", json={"user_id": "sec-ann", "message": f"stream about {CANARY}"}
        ) as stream:
            assert stream.status_code == 200
            events = [line async for line in stream.aiter_lines()]
        assert any(line.startswith("event: done") for line in events), events[-5:]
        bodies += [chat.text, *events]

        errors = [
            await client.post("/chat", json={"user_id": "sec-ann", "message": CANARY, "stpes": CANARY}),
            await client.post("/chat", content=f'{{"user_id": "sec-ann", "message": "{CANARY}'.encode(),
                              headers={"Content-Type": "application/json"}),
            await client.post("/chat", json={"user_id": "sec ann", "message": f"hi {CANARY}"}),
            await client.get("/jobs/no-such-job"),
            await client.get("/images/no-such-job.png"),
        ]
        wrong_key = f"sk-wrong-{MARK}-guessedKey9"
        for headers in ({}, {"Authorization": f"Bearer {wrong_key}"}, {"Authorization": f"Basic {MARK}"}):
            errors.append(
                await anonymous.post("/chat", json={"user_id": "sec-ann", "message": CANARY}, headers=headers)
            )
    assert [e.status_code for e in errors] == [422, 400, 422, 404, 404, 401, 401, 401]
    assert all(CANARY not in e.text for e in errors), [e.text for e in errors if CANARY in e.text]
    bodies += [e.text + json.dumps(dict(e.headers)) for e in errors]
    assert_no_sentinel(bodies, "an HTTP response")
    verdict = assert_clean_logs(system, "http")
    assert verdict.library_canaries, "aiosqlite at DEBUG logs the stored message: the capture must see it"


# ---------------------------------------------------------------- Telegram


async def test_telegram_chat_commands_and_errors_leak_nothing(system: System) -> None:
    fake = system.telegram_fake
    ann = Person(fake, 9801, "Ann")
    assert (await ann.ask(f"tell me about the {CANARY}")).strip()
    persona = await ann.ask(f"/persona a pirate who loves {CANARY}")
    assert persona.strip()
    fake.too_many_requests("sendMessage", retry_after=1, chat_id=ann.id)  # Telegram asks to wait
    refused = await ann.ask(f"/imagine a {CANARY} --steps 99999")
    assert refused.startswith("⚠️"), refused
    assert (await ann.ask(f"/chat once more, {CANARY}")).strip()
    await asyncio.wait_for(system.telegram.deliveries.idle(), 90)

    sent = [json.dumps(call.params) for call in fake.calls]
    assert_no_sentinel(sent, "a call to Telegram")
    assert_no_sentinel([m.body for m in fake.bot_messages(ann.id, include_deleted=True)], "a Telegram reply")
    fake.assert_clean()
    verdict = assert_clean_logs(system, "telegram")
    assert verdict.redacted > 0, "httpx logs each Bot API URL with the token: the redaction must be exercised"
    assert any(name.startswith("telegram") for name in verdict.library_canaries), verdict.library_canaries


# ---------------------------------------------------------------- Discord


async def test_discord_slash_mention_and_errors_leak_nothing(system: System) -> None:
    fake = system.discord_fake
    bea = FakeUser(9802, "bea")
    fake.fail("edit_original", 429, times=1)  # a rate limit on the interaction's webhook
    chat = await fake.slash("chat", {"message": f"what is a {CANARY}?"}, user=bea, channel_id=CHANNEL)
    assert (await final_original(fake, chat.token)).content.strip()

    mention = await fake.say(bea, f"and a {CANARY} at sea?", channel_id=CHANNEL, mention_bot=True)

    def reply_to(message: FakeMessage) -> FakeMessage | None:
        return next((m for m in fake.messages.values() if m.reference_id == message.id and m.finished), None)

    assert (await fake.wait_for(lambda: reply_to(mention), 90, what="the reply to a mention")).content.strip()
    bad = await fake.slash("imagine", {"prompt": f"a {CANARY}", "steps": 9999}, user=bea, channel_id=CHANNEL)
    assert (await ephemeral_answer(fake, bad.token)).startswith("⚠️ steps:")

    assert_no_sentinel([json.dumps(c.body) for c in fake.calls], "a call to Discord")
    assert_no_sentinel([m.content + json.dumps(m.embeds) for m in fake.messages.values()], "a Discord message")
    assert fake.violations == [] and fake.pings == [] and fake.unhandled == []
    verdict = assert_clean_logs(system, "discord")
    assert verdict.redacted > 0, "discord.py logs interaction tokens at DEBUG: the redaction must be exercised"
    assert any(name.startswith("discord") for name in verdict.library_canaries), verdict.library_canaries


# ---------------------------------------------------------------- ovbot serve, a subprocess


async def test_ovbot_serve_at_debug_prints_no_secret_and_no_users_words(
    tiny_models: TinyModels, tmp_path: Path, no_proxy: None
) -> None:
    """What a user would paste into a bug report: every line ``ovbot serve`` and its
    engine worker print at OVBOT_LOG_LEVEL=DEBUG while all three platforms are used."""
    telegram = FakeTelegram()
    await telegram.start()
    try:
        async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as discord_fake:
            env = {f"OVBOT_{name.upper()}": value for name, value in platform_settings(telegram, discord_fake).items()}
            env.update(OVBOT_LOG_LEVEL="DEBUG", NO_PROXY=NO_PROXY)
            async with ovbot_serve(tiny_models, tmp_path, **env) as server:
                await server.wait_ready()
                async with server.client() as client, server.client(f"sk-wrong-{MARK}-guessedKey9") as wrong:
                    chat = await client.post("/chat", json={"user_id": "sub-ann", "message": f"hi {CANARY}"})
                    assert chat.status_code == 200, chat.text
                    refused = await wrong.post("/chat", json={"user_id": "sub-ann", "message": CANARY})
                    assert refused.status_code == 401
                    assert_no_sentinel([chat.text, refused.text], "an HTTP response")
                cy = Person(telegram, 9803, "Cy")
                assert (await cy.ask(f"tell me about {CANARY}")).strip()
                dee = FakeUser(9804, "dee")
                interaction = await discord_fake.slash("chat", {"message": f"a {CANARY}?"}, user=dee, channel_id=CHANNEL)
                assert (await final_original(discord_fake, interaction.token)).content.strip()
                assert await server.stop() == 0
            lines = server.lines
    finally:
        await telegram.stop()

    assert any("ovbot.engine" in line for line in lines), "the engine's lines are part of the output"
    assert any(" DEBUG " in line for line in lines), "it logged at DEBUG"
    leaked = [line for line in lines if sentinels_in(line) or CANARY in line]
    assert not leaked, "\n".join(leaked[:20])
    print(f"ovbot serve: {len(lines)} output lines scanned, none with a sentinel or the canary")


async def test_the_engine_worker_logs_through_ovbots_formatter(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The worker is a process of its own: its records (here the traceback of a model
    that cannot load, whose path holds a newline, a forged record and a token-shaped
    string) are one escaped line with the token redacted, as the bot's own are."""
    token = "bot987654321:AAH" + "x" * 32
    broken = tmp_path / f"model\n{FORGED} {token}"
    broken.mkdir()
    (broken / "openvino_model.xml").write_text("not a model")
    engines = LocalEngines(WorkerConfig(llm_dir=str(broken), image_dir=None, log_level="INFO"), start_timeout_s=60)
    with pytest.raises(EngineUnavailable):
        await engines.start()
    await engines.close()

    lines = capfd.readouterr().err.splitlines()
    worker = [line for line in lines if " ovbot.engine.worker: " in line]
    assert len(worker) == 1 and "\\n" + FORGED in worker[0], lines[-20:]
    assert not [line for line in lines if line.startswith(FORGED)]
    assert token not in "\n".join(lines) and "[REDACTED]" in worker[0]


# ---------------------------------------------------------------- ovbot commands that fail


@pytest.mark.parametrize(
    "env, argv, expected",
    [
        ({"OVBOT_TELEGRAM_TOKEN": f"not-a-token-{MARK}"}, ["serve"], "OVBOT_TELEGRAM_TOKEN: is not a bot token"),
        ({"OVBOT_TELEGRAM_WEBHOOK_SECRET": f"{MARK} with spaces"}, ["serve"], "OVBOT_TELEGRAM_WEBHOOK_SECRET: must be"),
        ({"OVBOT_API_KEYS": f"{API_KEY},sk-{MARK}"}, ["serve"], "OVBOT_API_KEYS: each API key must be at least 16"),
        (
            {"OVBOT_DISCORD_TOKEN": f"not-a-token-{MARK}", "OVBOT_DISCORD_API_BASE": f"http://127.0.0.1:{free_port()}"},
            ["discord", "invite-url"],
            "cannot reach Discord at http://127.0.0.1:",
        ),
        # a misspelt secret is named, its value is not shown
        ({"OVBOT_TELEGRAM_TOKN": TELEGRAM_TOKEN, "OVBOT_API_KEYS": "short"}, ["serve"], "OVBOT_TELEGRAM_TOKN"),
    ],
)
async def test_a_bad_secret_setting_is_named_never_shown(
    env: dict[str, str],
    argv: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["--log-level", "DEBUG", *argv]) == 2
    out = capsys.readouterr()
    assert expected in out.err, out.err
    assert_no_sentinel([out.out, out.err], f"the output of ovbot {' '.join(argv)}")


async def test_a_refused_discord_token_and_an_unreachable_hub_do_not_print_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], system: System
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVBOT_DISCORD_TOKEN", discord_token(system.discord_fake.app_id + 1))  # not the fake's
    monkeypatch.setenv("OVBOT_DISCORD_API_BASE", system.discord_fake.api_base)
    assert await asyncio.to_thread(main, ["--log-level", "DEBUG", "discord", "invite-url", "--from-api"]) == 2
    refused = capsys.readouterr()
    assert "Discord refused OVBOT_DISCORD_TOKEN" in refused.err, refused.err

    monkeypatch.setenv("OVBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OVBOT_HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert await asyncio.to_thread(main, ["--log-level", "DEBUG", "models", "download", "llm"]) != 0
    offline = capsys.readouterr()
    assert "llm: FAILED" in offline.err, offline.err
    assert_no_sentinel([refused.out, refused.err, offline.out, offline.err], "the output of a failed command")
    assert_clean_logs(system, "cli")
