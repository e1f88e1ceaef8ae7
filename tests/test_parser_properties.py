"""Property-based tests (hypothesis) of everything that turns user text or numbers into
typed values: the Telegram command parsers, 'WxH' sizes, periods, image parameters
(``ImageRequest.resolve``), durations shown to users and the user keys admins name.

The properties: whatever comes in, the only exception is the typed user-facing error
(``InvalidInput`` / ``BadParameter``) with a bounded, printable message; well-formed
input round-trips to exactly the values written; accepted values are within the bounds.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from ovbot.adapters.telegram.commands import (
    COMMAND_NAMES,
    parse_admins,
    parse_block,
    parse_chat,
    parse_command,
    parse_imagine,
    parse_limits,
    parse_period,
    parse_persona,
    parse_reset,
    parse_think,
)
from ovbot.core.access import USER_KEY_MAX, check_user_key
from ovbot.core.durations import duration_text, window_text
from ovbot.core.engines.types import ImageLimits, ImageRequest
from ovbot.core.errors import BadParameter, InvalidInput, OvbotError

LIMITS = ImageLimits(sizes=((64, 64), (512, 512), (512, 768)), default_size=(64, 64), max_steps=500)

#: text as people and attackers write it: any code point, lone surrogates included
any_text = st.one_of(
    st.text(),
    st.text(st.characters(codec=None, categories=None)),
    st.lists(st.sampled_from(["--steps", "--cfg", "--seed", "--size", "--neg", "--file", "—steps", "=", "-1",
                              "nan", "inf", "1e309", "64x64", "0x0", "chat=1/hour", "images=2", "\ud800", " ", "\n",
                              "show", "set", "reset", "add", "remove", "list", "telegram:1", "@x", "9" * 50])).map(" ".join),
    st.text().map(lambda text: text + "\ud800"),
)  # fmt: skip
replied = st.none() | st.integers(min_value=1, max_value=2**40)


def assert_user_facing(error: OvbotError) -> None:
    """A typed error whose text a chat can show: bounded and printable."""
    message = error.user_message
    assert message and len(message) <= 400, message
    assert all(ch.isprintable() or ch in "\n…" for ch in message), repr(message)


# ---------------------------------------------------------------- Telegram commands


@settings(max_examples=300, deadline=None)
@given(any_text)
@example("/imagine cat --steps -1")
@example("/imagine --cfg nan --size 99999999x1")
def test_every_parser_raises_only_invalid_input(text: str) -> None:
    parsers = (parse_imagine, parse_reset, parse_chat, parse_persona, parse_think)
    for parse in parsers:
        try:
            parse(text)
        except InvalidInput as error:
            assert_user_facing(error)
    for parse_with_reply in (parse_limits, parse_admins, parse_block):
        for reply_to in (None, 42):
            try:
                parse_with_reply(text, reply_to)
            except InvalidInput as error:
                assert_user_facing(error)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_command_finds_only_well_formed_commands(text: str) -> None:
    found = parse_command(text)
    if found is None:
        assert not re.match(r"^/[A-Za-z0-9_]{1,64}(@[A-Za-z0-9_]{1,64})?(\s|$)", text)
        return
    assert re.fullmatch(r"[a-z0-9_]{1,64}", found.name)
    assert found.rest == found.rest.strip()
    again = parse_command(f"/{found.name} {found.rest}")
    assert again is not None and (again.name, again.rest) == (found.name, found.rest)


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=6),
    steps=st.none() | st.integers(-(10**11), 10**11),
    cfg=st.none() | st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)),
    seed=st.none() | st.integers(0, 10**11),
    size=st.none() | st.tuples(st.integers(0, 999_999), st.integers(0, 999_999)),
    separator=st.sampled_from(["x", "X", "×", "*", " x "]),
    as_file=st.booleans(),
    inline=st.booleans(),
)
def test_imagine_round_trips_every_well_formed_option(
    prompt: list[str],
    steps: int | None,
    cfg: float | None,
    seed: int | None,
    size: tuple[int, int] | None,
    separator: str,
    as_file: bool,
    inline: bool,
) -> None:
    words = list(prompt)
    glue = "=" if inline else " "
    if steps is not None:
        words.append(f"--steps{glue}{steps}")
    if cfg is not None:
        words.append(f"--cfg{glue}{cfg}")
    if seed is not None:
        words.append(f"--seed{glue}{seed}")
    if size is not None and (separator.strip() or not inline):
        words.append(f"--size{glue}{size[0]}{separator.strip() if inline else separator.strip()}{size[1]}")
    else:
        size = None
    if as_file:
        words.append("--file")
    args = parse_imagine(" ".join(words))
    params = args.params
    assert params.prompt == " ".join(prompt)
    assert (params.steps, params.cfg, params.seed) == (steps, cfg, seed)
    assert (params.width, params.height) == (size if size is not None else (None, None))
    assert args.as_file is as_file


@settings(max_examples=200, deadline=None)
@given(
    count=st.floats(0, 10_000, allow_nan=False).map(lambda x: round(x, 2)) | st.none(),
    unit=st.sampled_from(["s", "sec", "second", "m", "min", "minutes", "h", "hr", "hour", "d", "day", "days"]),
)
def test_periods_round_trip_to_seconds(count: float | None, unit: str) -> None:
    seconds_per = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]]
    text = unit if count is None else f"{count:g}{unit}"
    assume("e" not in text.lower().replace("sec", "").replace("second", ""))  # no 1e+03
    assert parse_period("chat", text) == pytest.approx((1 if count is None else float(f"{count:g}")) * seconds_per)


@settings(max_examples=200, deadline=None)
@given(user=st.integers(1, 10**15), count=st.integers(0, 10**9), images=st.integers(0, 10**9))
def test_limits_set_round_trips_numbers(user: int, count: int, images: int) -> None:
    args = parse_limits(f"set {user} chat={count}/hour images={images}/day", None)
    assert (args.action, args.user_key) == ("set", f"telegram:{user}")
    assert (args.chat_per_window, args.chat_period_s, args.images_per_day, args.images_period_s) == (
        count, 3600.0, images, 86400.0,
    )  # fmt: skip


def test_command_names_are_what_telegram_accepts() -> None:
    assert all(re.fullmatch(r"[a-z0-9_]{1,32}", name) for name in COMMAND_NAMES)


# ---------------------------------------------------------------- image parameters

maybe_int = st.none() | st.integers(-(2**70), 2**70)
maybe_float = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70).map(float)


@settings(max_examples=400, deadline=None)
@given(
    prompt=any_text,
    negative=any_text,
    width=maybe_int | st.sampled_from([64, 512, 768]),
    height=maybe_int | st.sampled_from([64, 512, 768]),
    steps=maybe_int | st.integers(0, 600),
    cfg=maybe_float | st.floats(0, 25),
    seed=maybe_int | st.integers(0, 2**32),
)
@example(prompt="cat", negative="", width=None, height=None, steps=None, cfg=math.nan, seed=None)
@example(prompt="cat", negative="", width=None, height=None, steps=None, cfg=math.inf, seed=None)
@example(prompt="cat\ud800", negative="", width=None, height=None, steps=None, cfg=None, seed=None)
def test_image_parameters_are_refused_with_a_named_field_or_accepted_within_bounds(
    prompt: str, negative: str, width: int | None, height: int | None, steps: int | None, cfg: float | None, seed: int | None
) -> None:
    request = ImageRequest(prompt, negative, width=width, height=height, steps=steps, cfg=cfg, seed=seed)
    try:
        resolved = request.resolve(LIMITS)
    except BadParameter as error:
        assert_user_facing(error)
        assert error.field in ("prompt", "negative_prompt", "size", "steps", "cfg", "seed")
        return
    assert resolved.prompt == prompt.strip() and 0 < len(resolved.prompt) <= LIMITS.max_prompt_chars
    resolved.prompt.encode("utf-8")  # storable
    resolved.negative_prompt.encode("utf-8")
    assert (resolved.width, resolved.height) in LIMITS.sizes
    assert resolved.steps is not None and LIMITS.min_steps <= resolved.steps <= LIMITS.max_steps
    assert resolved.cfg is not None and LIMITS.min_cfg <= resolved.cfg <= LIMITS.max_cfg
    assert resolved.seed is not None and 0 <= resolved.seed < 2**32
    # resolving again changes nothing: the queued job reproduces the same picture
    assert resolved.resolve(LIMITS) == resolved
    assert ImageRequest.from_dict(resolved.to_dict()) == resolved


# ---------------------------------------------------------------- durations and user keys


def seconds_in(text: str) -> int:
    """What a user reads in "1 h 5 min", as seconds."""
    units = {"s": 1, "min": 60, "h": 3600}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+) (s|min|h)\b", text))


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e6, 1e9, allow_nan=False) | st.integers(-10, 10**9))
@example(59.01)
@example(3600.5)
def test_durations_are_never_too_early_and_never_much_later(seconds: float) -> None:
    text = duration_text(seconds)
    shown = seconds_in(text)
    assert re.fullmatch(r"\d+ s|\d+ min|\d+ h( \d+ min)?", text), text
    assert shown >= max(1, seconds), (seconds, text)  # "try again in 1 min" is never too early
    assert shown - max(1, seconds) < 60, (seconds, text)  # and at most a minute late
    assert window_text(seconds)


@settings(max_examples=400, deadline=None)
@given(any_text | st.from_regex(r"[a-z]{1,10}:[^\s]{1,30}", fullmatch=True))
def test_user_keys_are_checked_and_stable(text: str) -> None:
    try:
        key = check_user_key(text)
    except InvalidInput as error:
        assert_user_facing(error)
        assert error.field == "user"
        return
    platform, _, user_id = key.partition(":")
    assert platform.isalpha() and platform.islower() and user_id
    assert len(key) <= USER_KEY_MAX and key.isprintable() and not any(ch.isspace() for ch in key)
    key.encode("utf-8")
    assert check_user_key(key) == key
