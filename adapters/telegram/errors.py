"""The one place where the Telegram adapter decides what a failure tells the user.

Core refusals and failures (``OvbotError``: a limit with its wait time, a full queue, a
bad parameter with its allowed range, the engine down, not allowed) become the shared
platform wording from ``adapters/common/replies``; anything else is a bug on our side,
and the user gets a plain apology instead of silence. How the text is delivered (a
message, or the alert of a pressed button) is the handlers' business, not the wording.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ovbot.adapters.common.replies import error_text
from ovbot.adapters.telegram.texts import UNEXPECTED
from ovbot.core.errors import OvbotError


class TelegramUnavailable(OvbotError):
    """The adapter cannot start: the token is refused or the Bot API cannot be reached.
    ``ovbot serve`` stops with this one line."""

    kind = "telegram"


def error_reply(exc: BaseException) -> str:
    """What the user reads when handling their message or button failed."""
    if isinstance(exc, OvbotError):
        return error_text(exc)
    return UNEXPECTED


def where(exc: BaseException) -> str:
    """``KeyError at reply.py:123 in _post``: enough to find a bug in the log, without
    the exception's message (which may quote what a user wrote)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    frame = frames[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno} in {frame.name}"
