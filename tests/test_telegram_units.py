"""The Telegram adapter's pure parts: command parsing (bad flags are refused with the
field named, ranges are left to the core), the picture caption, the per-chat pacer on a
virtual clock, and the draft/edit reply target against a recording outbox."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ovbot.adapters.common import utf16_length
from ovbot.adapters.common.live_reply import PICTURE_ONLY, THINKING
from ovbot.adapters.common.replies import unknown_command_text
from ovbot.adapters.telegram.commands import (
    COMMANDS,
    parse_admins,
    parse_chat,
    parse_command,
    parse_imagine,
    parse_limits,
    parse_period,
    parse_persona,
    parse_reset,
    parse_think,
    parse_user,
)
from ovbot.adapters.telegram.errors import error_reply
from ovbot.adapters.telegram.outbox import DraftsRefused, MessageGone, Place
from ovbot.adapters.telegram.pacing import ChatPacer
from ovbot.adapters.telegram.reply import TelegramReply
from ovbot.adapters.telegram.texts import UNEXPECTED, caption_for, help_text, reroll_data, reroll_job_id
from ovbot.core.domain import ImageParams
from ovbot.core.errors import BadParameter, InvalidInput, RateLimited
from ovbot.core.turns import ImageReady, ReplyDone, TurnDone

# ---------------------------------------------------------------- commands


def test_command_text_keeps_lines_and_addressee() -> None:
    command = parse_command("/Chat@ovbot_test_bot  line one\nline two ")
    assert command is not None
    assert (command.name, command.addressee, command.rest) == ("chat", "ovbot_test_bot", "line one\nline two")
    assert parse_command("hello /chat") is None
    assert parse_command("/imagine") == parse_command("/imagine   ")


def test_every_command_is_listed_once_with_a_valid_name() -> None:
    names = [spec.name for spec in COMMANDS]
    assert len(names) == len(set(names))
    assert all(name.isascii() and name.islower() and len(name) <= 32 for name in names)
    assert {spec.name for spec in COMMANDS if spec.admin} == {"limits", "admins", "block", "unblock"}
    assert "/limits" in help_text(admin=True, group=False) and "/limits" not in help_text(admin=False, group=False)


def test_imagine_takes_every_option_anywhere() -> None:
    args = parse_imagine("a red --steps 12 boat --neg blurry, dark --cfg=6,5 --seed 42 --size 64X64 --file at dawn")
    assert args.as_file
    assert args.params == ImageParams(
        prompt="a red boat at dawn", negative_prompt="blurry, dark", width=64, height=64, steps=12, cfg=6.5, seed=42
    )
    # phones turn "--" into a dash; aliases; values as written
    assert parse_imagine("x —steps 3 —negative=Blurry").params == ImageParams(
        prompt="x", negative_prompt="Blurry", steps=3
    )
    assert parse_imagine("  ").params == ImageParams(prompt="")  # empty: the core says so


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat --steps lots", "steps: must be a whole number (got 'lots')"),
        ("cat --steps 2.5", "steps: must be a whole number (got '2.5')"),
        ("cat --cfg high", "cfg: must be a number like 7.5 (got 'high')"),
        ("cat --cfg nan", "cfg: must be a number like 7.5 (got 'nan')"),
        ("cat --seed x", "seed: must be a whole number (got 'x')"),
        ("cat --size big", "size: must be WIDTHxHEIGHT like 512x512 (got 'big')"),
        ("cat --neg", "neg: needs a value, e.g. --neg blurry, text"),
        ("cat --steps --cfg 3", "steps: needs a value, e.g. --steps 20"),
        ("cat --wat 3", "--wat: is not an option of /imagine; use --neg, --steps, --cfg, --seed, --size, --file"),
        ("cat --steps 3 --steps 4", "steps: is given twice"),
        ("cat --file=yes", "file: takes no value"),
    ],
)
def test_imagine_refuses_malformed_options(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_imagine(text)
    assert caught.value.user_message == message


def test_imagine_leaves_ranges_to_the_core() -> None:
    params = parse_imagine("cat --steps 999 --cfg 500 --seed -1 --size 9x9").params
    assert (params.steps, params.cfg, params.seed, params.width, params.height) == (999, 500.0, -1, 9, 9)


def test_chat_settings_commands() -> None:
    assert parse_chat("--show-reasoning\nwhy?").show_reasoning and parse_chat("--show-reasoning why?").text == "why?"
    assert parse_chat("plain --show-reasoning").text == "plain --show-reasoning"
    assert parse_reset("") is False and parse_reset(" FORGET ") is True
    with pytest.raises(InvalidInput, match="reset: write /reset"):
        parse_reset("sometimes")
    assert parse_persona("").action == "show" and parse_persona("Clear").action == "clear"
    assert parse_persona(" a pirate\nwho rhymes ").text == "a pirate\nwho rhymes"
    assert parse_think("").show and parse_think("FULL").mode == "full" and parse_think("default").mode is None
    assert parse_think("loud").mode == "loud"  # the core refuses it, naming the modes


def test_users_by_id_by_reply_or_by_key() -> None:
    assert parse_user("42", None) == "telegram:42"
    assert parse_user("", 77) == "telegram:77"
    assert parse_user("discord:9", None) == "discord:9"
    for word, fragment in [("", "name the user"), ("@ann", "does not tell bots"), ("ann", "not a numeric")]:
        with pytest.raises(InvalidInput, match=fragment):
            parse_user(word, None)


def test_limits_arguments() -> None:
    args = parse_limits("set 42 chat=10/hour images=3/day", None)
    assert (args.action, args.user_key, args.chat_per_window, args.chat_period_s, args.images_per_day) == (
        "set", "telegram:42", 10, 3600.0, 3
    )
    assert parse_limits("show", 5).user_key == "telegram:5"
    assert parse_limits("set chat=4", 5).chat_period_s is None
    assert parse_period("chat", "90min") == 5400.0 and parse_period("chat", "2h") == 7200.0
    for text, fragment in [
        ("", "write /limits show|set|reset"),
        ("set 42", "give chat=N/period"),
        ("set 42 chat=many", "chat: must be a whole number"),
        ("set 42 chat=3/fortnight", "is not a period"),
        ("set 42 votes=3", "votes: is not a limit"),
        ("show 42 chat=3", "takes only the user"),
        ("show 1 2", "name one user"),
    ]:
        with pytest.raises(InvalidInput, match=fragment):
            parse_limits(text, None)
    assert parse_admins("", None).action == "list"
    assert parse_admins("add 9", None).user_key == "telegram:9"
    with pytest.raises(InvalidInput, match="write /admins"):
        parse_admins("promote 9", None)


def test_error_replies_come_from_one_place() -> None:
    assert error_reply(BadParameter("steps", "must be between 1 and 50 (got 99)")) == (
        "⚠️ steps: must be between 1 and 50 (got 99)"
    )
    assert error_reply(RateLimited("You reached your limit. Try again in 3 min.", 170, "chat")).startswith("⏳ ")
    assert error_reply(KeyError("boom")) == UNEXPECTED
    assert unknown_command_text("/frobnicate") == "❓ Unknown command /frobnicate. /help lists what I can do."


# ---------------------------------------------------------------- pictures


def test_caption_carries_every_parameter_within_the_limit() -> None:
    params = {"prompt": "a boat", "negative_prompt": "fog", "seed": 42, "steps": 3, "cfg": 5.5}
    params.update(width=64, height=64)
    caption = caption_for(params)
    assert caption.splitlines() == ["🎨 a boat", "🚫 fog", "🌱 seed 42 · 3 steps · CFG 5.5 · 64x64"]
    long = caption_for({**params, "prompt": "🌊 wave " * 400, "negative_prompt": "x" * 900})
    assert utf16_length(long) <= 1024 and long.endswith("🌱 seed 42 · 3 steps · CFG 5.5 · 64x64")
    job_id = "0123456789abcdef0123456789abcdef"
    assert len(reroll_data(job_id).encode()) <= 64 and reroll_job_id(reroll_data(job_id)) == job_id
    assert reroll_job_id("reroll:../../etc") is None and reroll_job_id(None) is None


# ---------------------------------------------------------------- pacing


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


async def _calls(pacer: ChatPacer, clock: VirtualClock, chat_id: int, count: int) -> list[float]:
    starts: list[float] = []
    for _ in range(count):
        async with pacer.turn(chat_id):
            starts.append(clock.now)
            clock.now += 0.05  # the request takes a while
    return starts


async def test_pacer_spaces_calls_per_chat_and_keeps_the_group_minute() -> None:
    clock = VirtualClock()
    pacer = ChatPacer(interval_s=1.0, group_per_minute=20, clock=clock, sleep=clock.sleep)
    private = await _calls(pacer, clock, 7, 5)
    assert all(b - a >= 1.0 for a, b in zip(private, private[1:]))
    group = await _calls(pacer, clock, -100, 45)
    assert all(b - a >= 1.0 for a, b in zip(group, group[1:]))
    for start in group:  # never more than 20 in any minute
        assert sum(1 for t in group if start <= t < start + 60) <= 20
    assert group[9] - group[0] < 10  # the first half of the minute streams at 1/s
    assert group[11] - group[10] >= 3.0  # then at 60/20 s, so it never stalls for long
    # another chat is not slowed down by this one
    assert pacer.delay(8) == 0


async def test_pacer_serves_callers_in_order_and_honours_retry_after() -> None:
    clock = VirtualClock()
    pacer = ChatPacer(interval_s=1.0, group_per_minute=20, clock=clock, sleep=clock.sleep)
    served: list[str] = []

    async def call(name: str) -> None:
        async with pacer.turn(5):
            served.append(name)
            await asyncio.sleep(0)

    await asyncio.gather(*(call(name) for name in "abcd"))
    assert served == list("abcd")  # first come, first served
    assert pacer.delay(5) == pytest.approx(1.0)
    pacer.hold(5, 7)
    assert pacer.delay(5) == pytest.approx(7.0)
    starts = await _calls(pacer, clock, 5, 1)
    assert starts[0] >= 1007.0


# ---------------------------------------------------------------- the reply target


class RecordingOutbox:
    """Stands in for ``Outbox``: records calls; can refuse drafts or lose messages."""

    def __init__(self, *, drafts: bool = True) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.drafts = drafts
        self.gone: set[int] = set()
        self._ids = iter(range(100, 1000))

    async def send_text(self, place: Place, text: str, *, wait: bool = True, markup: Any = None) -> int:
        message_id = next(self._ids)
        self.calls.append(("send", message_id, text))
        return message_id

    async def edit_text(self, place: Place, message_id: int, text: str, *, wait: bool = False) -> None:
        if message_id in self.gone:
            raise MessageGone("message to edit not found")
        self.calls.append(("edit", message_id, text))

    async def draft(self, place: Place, draft_id: int, text: str, *, wait: bool = False) -> None:
        if not self.drafts:
            raise DraftsRefused("method not found")
        self.calls.append(("draft", draft_id, text))

    async def delete(self, place: Place, message_id: int) -> None:
        self.calls.append(("delete", message_id))

    async def send_picture(self, place: Place, png: bytes, **kwargs: Any) -> int:
        message_id = next(self._ids)
        self.calls.append(("picture", message_id, kwargs["caption"]))
        return message_id


class Journal:
    def __init__(self) -> None:
        self.messages: list[list[int]] = []
        self.photos: list[int] = []

    async def messages_posted(self, message_ids: list[int]) -> None:
        self.messages.append(message_ids)

    async def photo_posted(self, message_id: int) -> None:
        self.photos.append(message_id)

    async def picture_bytes(self, image: ImageReady) -> bytes:
        return b"\x89PNG fake"


def _reply(outbox: RecordingOutbox, journal: Journal, **kwargs: Any) -> TelegramReply:
    return TelegramReply(outbox, Place(7), journal, draft_refresh_s=0, **kwargs)  # type: ignore[arg-type]


async def test_draft_mode_animates_then_persists_once() -> None:
    outbox, journal = RecordingOutbox(), Journal()
    reply = _reply(outbox, journal, drafts=True)
    await reply.show(0, THINKING)
    await reply.show(0, "Hel")
    await reply.show(0, "Hello")
    reply.observe(ReplyDone("job", text="Hello!"))
    await reply.show(0, "Hello!")
    await reply.finish(None)
    kinds = [call[0] for call in outbox.calls]
    assert kinds == ["draft", "draft", "draft", "send"]
    assert outbox.calls[0][2] == ""  # Telegram's own "Thinking…" placeholder
    assert outbox.calls[-1][2] == "Hello!" and journal.messages == [[100]]


async def test_draft_mode_persists_finished_chunks_and_falls_back_when_refused() -> None:
    outbox, journal = RecordingOutbox(), Journal()
    reply = _reply(outbox, journal, drafts=True)
    await reply.show(0, "first chunk")
    await reply.show(1, "second, growing")
    assert [c[0] for c in outbox.calls] == ["draft", "send", "draft"]  # chunk 0 is final
    refused = []
    outbox2 = RecordingOutbox(drafts=False)
    reply2 = TelegramReply(
        outbox2,  # type: ignore[arg-type]
        Place(8),
        Journal(),
        drafts=True,
        on_drafts_refused=lambda: refused.append(1),
        draft_refresh_s=0,
    )
    await reply2.show(0, "hi")
    await reply2.show(0, "hi there")
    assert [c[0] for c in outbox2.calls] == ["send", "edit"] and refused == [1] and not reply2.drafting


async def test_draft_is_refreshed_while_nothing_changes() -> None:
    outbox, journal = RecordingOutbox(), Journal()
    clock = VirtualClock()
    waits: list[float] = []
    reached = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds
        if len(waits) >= 3:
            reached.set()
            await asyncio.Event().wait()  # park: the test has seen enough
        await asyncio.sleep(0)

    reply = TelegramReply(
        outbox, Place(7), journal, drafts=True, draft_refresh_s=20, clock=clock, sleep=sleep  # type: ignore[arg-type]
    )
    await reply.show(0, "⏳ Queued: #4, ~2 min")
    await asyncio.wait_for(reached.wait(), 5)
    reply.close()
    drafts = [c for c in outbox.calls if c[0] == "draft"]
    assert len(drafts) >= 2 and {c[2] for c in drafts} == {"⏳ Queued: #4, ~2 min"}
    assert waits[0] == pytest.approx(20)


async def test_edit_mode_reposts_a_deleted_message_and_drops_the_status_of_a_picture() -> None:
    outbox, journal = RecordingOutbox(), Journal()
    reply = _reply(outbox, journal, drafts=False, message_ids=[55], picture_turn=True)
    outbox.gone.add(55)
    await reply.show(0, "🎨 Picture: step 1/3")
    assert outbox.calls == [("send", 100, "🎨 Picture: step 1/3")] and journal.messages == [[100]]
    params = {"seed": 1, "steps": 3, "cfg": 7, "width": 64, "height": 64, "prompt": "p"}
    await reply.send_image(ImageReady("a" * 32, image_id="i", params=params))
    reply.observe(TurnDone("a" * 32))
    await reply.show(0, PICTURE_ONLY)
    assert [c[0] for c in outbox.calls] == ["send", "picture", "delete"] and journal.photos == [101]
    assert journal.messages[-1] == []
    # a picture sent before a restart is not sent again
    again = _reply(RecordingOutbox(), Journal(), drafts=False, photo_sent=True)
    await again.send_image(ImageReady("b" * 32, image_id="i", params={}))



# ---------------------------------------------------------------- settings


def test_settings_build_the_config_and_keep_the_token_secret() -> None:
    from ovbot.adapters.telegram.config import TelegramConfig
    from ovbot.core.config import Settings

    assert TelegramConfig.from_settings(Settings(_env_file=None)) is None  # no token: no adapter
    token = "123456789:AAHsecret-part_0123456789abcdef"
    settings = Settings(
        _env_file=None, telegram_token=token, telegram_api_base="http://127.0.0.1:8081/", telegram_drafts=False
    )
    config = TelegramConfig.from_settings(settings)
    assert config is not None and config.token == token and not config.drafts
    assert config.base_url == "http://127.0.0.1:8081/bot" and config.base_file_url == "http://127.0.0.1:8081/file/bot"
    assert token not in repr(config) and token not in repr(settings)
    assert token in settings.secrets()  # redacted from every log line by ovbot serve
    hooked = TelegramConfig(token=token, webhook_url="https://bot.example.org/tg/hook")
    assert hooked.webhook_path == "/tg/hook"


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"telegram_token": "not a token"}, "OVBOT_TELEGRAM_TOKEN: is not a bot token like 123456789:AAE"),
        ({"telegram_api_base": "api.telegram.org"}, "OVBOT_TELEGRAM_API_BASE: must be an http:// or https:// URL"),
        ({"telegram_mode": "webhook"}, "OVBOT_TELEGRAM_MODE=webhook needs OVBOT_TELEGRAM_WEBHOOK_URL and"),
        ({"telegram_webhook_secret": "no spaces allowed"}, "OVBOT_TELEGRAM_WEBHOOK_SECRET: must be 1-256 characters"),
    ],
)
def test_bad_telegram_settings_are_named(values: dict[str, str], fragment: str) -> None:
    from ovbot.core.config import load_settings
    from ovbot.core.errors import SettingsError

    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **values)
    assert fragment in caught.value.user_message
    assert "not a token'" not in caught.value.user_message  # a token is never echoed
