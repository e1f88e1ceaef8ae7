"""The bot's commands: what each is called and takes (for ``setMyCommands`` and
``/help``), and pure parsers from a command's text to the arguments of a facade call.

Parsing is translation only: it turns words into typed values and refuses what is not
even well-formed (``--steps lots``) with ``InvalidInput`` naming the field. Whether a
well-formed value is *allowed* (steps 999, a size not on the list, a user who is no
admin) is the core's decision, so it is never checked here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from ovbot.core.domain import ImageParams
from ovbot.core.errors import InvalidInput

PLATFORM = "telegram"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    description: str
    admin: bool = False

    @property
    def synopsis(self) -> str:
        return f"/{self.name}" + (f" {self.usage}" if self.usage else "")


IMAGINE_USAGE = "<prompt> [--neg TEXT] [--steps N] [--cfg X] [--seed N] [--size WxH] [--file]"
LIMITS_USAGE = "show|set|reset <user> [chat=N/period] [images=N/day]"

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("start", "", "what this bot is"),
    CommandSpec("help", "", "the commands"),
    CommandSpec("chat", "[--show-reasoning] <text>", "talk to me (in groups: this, a mention or a reply)"),
    CommandSpec("imagine", IMAGINE_USAGE, "draw a picture"),
    CommandSpec("reset", "[forget]", "start a new conversation (forget: delete the old one)"),
    CommandSpec("persona", "<text>|clear", "how I should behave in this chat"),
    CommandSpec("think", "off|short|full", "how much I reason before answering"),
    CommandSpec("queue", "", "your waiting and running requests"),
    CommandSpec("cancel", "", "cancel your requests in this chat"),
    CommandSpec("usage", "", "your limits and what is left"),
    CommandSpec("limits", LIMITS_USAGE, "see or change a user's limits", admin=True),
    CommandSpec("admins", "[list|add|remove <user>]", "see or change the bot's admins", admin=True),
    CommandSpec("block", "<user>", "block a user everywhere", admin=True),
    CommandSpec("unblock", "<user>", "unblock a user", admin=True),
)
COMMAND_NAMES = frozenset(spec.name for spec in COMMANDS)


# ---------------------------------------------------------------- the command itself


@dataclass(frozen=True, slots=True)
class CommandText:
    """``/name@addressee rest``: ``addressee`` is the bot a command names (groups)."""

    name: str
    addressee: str | None
    rest: str


_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,64})(?:@([A-Za-z0-9_]{1,64}))?(?=\s|$)")


def parse_command(text: str) -> CommandText | None:
    """The command at the start of ``text``, or None when it starts with none. ``rest``
    keeps its line breaks (a persona or a chat message may have several lines)."""
    match = _COMMAND.match(text)
    if match is None:
        return None
    return CommandText(match.group(1).lower(), match.group(2), text[match.end() :].strip())


# ---------------------------------------------------------------- /chat


@dataclass(frozen=True, slots=True)
class ChatArgs:
    text: str
    show_reasoning: bool = False


def parse_chat(rest: str) -> ChatArgs:
    """``[--show-reasoning] <text>``; an empty text is the core's to refuse."""
    words = rest.split(maxsplit=1)
    if words and _flag_name(words[0]) == "show-reasoning":
        return ChatArgs(words[1].strip() if len(words) > 1 else "", show_reasoning=True)
    return ChatArgs(rest)


# ---------------------------------------------------------------- /imagine


@dataclass(frozen=True, slots=True)
class ImagineArgs:
    params: ImageParams
    #: send the PNG as a document: Telegram recompresses photos, a document keeps the
    #: file (and its parameters in the PNG text chunks) intact
    as_file: bool = False


_IMAGINE_FLAGS = ("neg", "steps", "cfg", "seed", "size", "file")
_FLAG_ALIASES = {"negative": "neg", "negative-prompt": "neg", "n": "neg"}
_SIZE = re.compile(r"^(\d{1,6})\s*[x×X*]\s*(\d{1,6})$")
_INT = re.compile(r"^[+-]?\d{1,12}$")


def _flag_name(word: str) -> str | None:
    """``--steps`` (or ``—steps``: phones turn ``--`` into a dash) -> ``steps``; an
    inline value stays as written (``--neg=Blurry`` -> ``neg=Blurry``)."""
    for prefix in ("--", "—", "–"):
        if word.startswith(prefix) and len(word) > len(prefix) and word[len(prefix)].isalpha():
            name, equals, value = word[len(prefix) :].partition("=")
            return name.lower() + equals + value
    return None


def parse_imagine(rest: str) -> ImagineArgs:
    """``<prompt> [--neg TEXT] [--steps N] [--cfg X] [--seed N] [--size WxH] [--file]``.

    Options may come anywhere, as ``--steps 20`` or ``--steps=20``; ``--neg`` takes
    every word up to the next option. Each value must be well-formed; ranges are the
    core's (it names the allowed range)."""
    prompt: list[str] = []
    given: dict[str, str] = {}
    words = rest.split()
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        name = _flag_name(word)
        if name is None:
            prompt.append(word)
            continue
        name, has_inline, inline = name.partition("=")
        name = _FLAG_ALIASES.get(name, name)
        if name not in _IMAGINE_FLAGS:
            options = ", ".join(f"--{flag}" for flag in _IMAGINE_FLAGS)
            raise InvalidInput(word.split("=")[0], f"is not an option of /imagine; use {options}")
        if name in given:
            raise InvalidInput(name, "is given twice")
        if name == "file":
            if has_inline:
                raise InvalidInput("file", "takes no value")
            given[name] = ""
            continue
        if has_inline:
            value = inline
        elif name == "neg":
            taken: list[str] = []
            while index < len(words) and _flag_name(words[index]) is None:
                taken.append(words[index])
                index += 1
            value = " ".join(taken)
        elif index < len(words) and _flag_name(words[index]) is None:
            value = words[index]
            index += 1
        else:
            value = ""
        if not value.strip():
            raise InvalidInput(name, f"needs a value, e.g. {_EXAMPLES[name]}")
        given[name] = value
    width = height = None
    if "size" in given:
        width, height = _size(given["size"])
    params = ImageParams(
        prompt=" ".join(prompt),
        negative_prompt=given.get("neg", ""),
        width=width,
        height=height,
        steps=_whole("steps", given["steps"]) if "steps" in given else None,
        cfg=_number("cfg", given["cfg"]) if "cfg" in given else None,
        seed=_whole("seed", given["seed"]) if "seed" in given else None,
    )
    return ImagineArgs(params, as_file="file" in given)


_EXAMPLES = {
    "neg": "--neg blurry, text",
    "steps": "--steps 20",
    "cfg": "--cfg 7.5",
    "seed": "--seed 42",
    "size": "--size 512x512",
}


def _whole(field: str, text: str) -> int:
    if not _INT.match(text.strip()):
        raise InvalidInput(field, f"must be a whole number (got {_shown(text)})")
    return int(text)


def _number(field: str, text: str) -> float:
    try:
        value = float(text.replace(",", ".", 1)) if len(text) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInput(field, f"must be a number like 7.5 (got {_shown(text)})")
    return value


def _size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text.strip())
    if match is None:
        raise InvalidInput("size", f"must be WIDTHxHEIGHT like 512x512 (got {_shown(text)})")
    return int(match.group(1)), int(match.group(2))


def _shown(text: str, room: int = 30) -> str:
    """A user's value quoted back, bounded and printable."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return repr(clean if len(clean) <= room else clean[:room] + "…")


# ---------------------------------------------------------------- chat settings


def parse_reset(rest: str) -> bool:
    """``/reset`` or ``/reset forget``: whether to delete the old conversation."""
    word = rest.strip().lower()
    if word in ("", "forget"):
        return word == "forget"
    raise InvalidInput("reset", "write /reset, or /reset forget to delete the old conversation too")


@dataclass(frozen=True, slots=True)
class PersonaArgs:
    action: Literal["show", "set", "clear"]
    text: str | None = None


def parse_persona(rest: str) -> PersonaArgs:
    if not rest.strip():
        return PersonaArgs("show")
    if rest.strip().lower() in ("clear", "none", "off"):
        return PersonaArgs("clear")
    return PersonaArgs("set", rest.strip())


@dataclass(frozen=True, slots=True)
class ThinkArgs:
    """``show``: just say the mode in force; else set ``mode`` (None: the default)."""

    show: bool
    mode: str | None = None


def parse_think(rest: str) -> ThinkArgs:
    word = rest.strip().lower()
    if not word:
        return ThinkArgs(show=True)
    return ThinkArgs(show=False, mode=None if word == "default" else word)


# ---------------------------------------------------------------- users (admin commands)


def parse_user(word: str, replied_user_id: int | None) -> str:
    """A user named in an admin command, as the core's ``platform:user_id`` key: a
    numeric Telegram id, a key of any platform (``discord:123``), or, with no word at
    all, the author of the message the command replies to."""
    word = word.strip()
    if not word:
        if replied_user_id is None:
            raise InvalidInput("user", "name the user: their numeric Telegram id, or reply to one of their messages")
        return f"{PLATFORM}:{replied_user_id}"
    if word.isdigit():
        return f"{PLATFORM}:{word}"
    if word.startswith("@"):
        raise InvalidInput(
            "user",
            "Telegram does not tell bots who an @username is; give their numeric id or reply to one of their messages",
        )
    if ":" in word:
        return word  # another platform's key; the core checks its form
    raise InvalidInput("user", f"{_shown(word)} is not a numeric Telegram id or platform:user_id")


@dataclass(frozen=True, slots=True)
class LimitsArgs:
    action: Literal["show", "set", "reset"]
    user_key: str
    chat_per_window: int | None = None
    #: the period the admin wrote after chat=N/ (None: not written)
    chat_period_s: float | None = None
    images_per_day: int | None = None
    images_period_s: float | None = None


def parse_limits(rest: str, replied_user_id: int | None) -> LimitsArgs:
    """``show|set|reset <user> [chat=N/period] [images=N/day]``."""
    words = rest.split()
    if not words or words[0].lower() not in ("show", "set", "reset"):
        raise InvalidInput("limits", f"write /limits {LIMITS_USAGE}")
    action: Literal["show", "set", "reset"] = "show"
    if words[0].lower() == "set":
        action = "set"
    elif words[0].lower() == "reset":
        action = "reset"
    users = [w for w in words[1:] if "=" not in w]
    settings = [w for w in words[1:] if "=" in w]
    if len(users) > 1:
        raise InvalidInput("user", "name one user")
    user_key = parse_user(users[0] if users else "", replied_user_id)
    if action != "set":
        if settings:
            raise InvalidInput("limits", f"/limits {action} takes only the user")
        return LimitsArgs(action, user_key)
    values: dict[str, tuple[int, float | None]] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        name = name.lower()
        if name not in ("chat", "images"):
            raise InvalidInput(name or "limits", "is not a limit; use chat=N/period and images=N/day")
        if name in values:
            raise InvalidInput(name, "is given twice")
        count, _, period = value.partition("/")
        values[name] = (_whole(name, count), parse_period(name, period) if period else None)
    if not values:
        raise InvalidInput("limits", "give chat=N/period and/or images=N/day")
    chat = values.get("chat")
    images = values.get("images")
    return LimitsArgs(
        "set",
        user_key,
        chat_per_window=None if chat is None else chat[0],
        chat_period_s=None if chat is None else chat[1],
        images_per_day=None if images is None else images[0],
        images_period_s=None if images is None else images[1],
    )


_PERIOD = re.compile(r"^(\d+(?:\.\d+)?)?\s*([a-z]+)$")
_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip


def parse_period(field: str, text: str) -> float:
    """``hour``, ``2h``, ``90min``, ``day`` -> seconds."""
    match = _PERIOD.match(text.strip().lower())
    unit = None if match is None else _UNITS.get(match.group(2))
    if match is None or unit is None:
        raise InvalidInput(field, f"{_shown(text)} is not a period like minute, hour, 2h or day")
    return float(match.group(1) or 1) * unit


@dataclass(frozen=True, slots=True)
class AdminsArgs:
    action: Literal["list", "add", "remove"]
    user_key: str | None = None


def parse_admins(rest: str, replied_user_id: int | None) -> AdminsArgs:
    words = rest.split()
    if not words or words[0].lower() == "list":
        if len(words) > 1:
            raise InvalidInput("admins", "/admins list takes nothing more")
        return AdminsArgs("list")
    action = words[0].lower()
    if action not in ("add", "remove"):
        raise InvalidInput("admins", "write /admins, /admins add <user> or /admins remove <user>")
    if len(words) > 2:
        raise InvalidInput("user", "name one user")
    user_key = parse_user(words[1] if len(words) > 1 else "", replied_user_id)
    return AdminsArgs("add" if action == "add" else "remove", user_key)


def parse_block(rest: str, replied_user_id: int | None) -> str:
    words = rest.split()
    if len(words) > 1:
        raise InvalidInput("user", "name one user")
    return parse_user(words[0] if words else "", replied_user_id)
