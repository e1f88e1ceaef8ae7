"""How the platform corpus tests judge what came back: a reply is a clear error or a
normal answer (never the apology for a crash, a traceback or nothing), and the logs show
no handler that blew up while the corpus ran."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

from ovbot.adapters.discord.respond import SOMETHING_WENT_WRONG
from ovbot.adapters.telegram.texts import NOT_TEXT, UNEXPECTED

#: settings under which every corpus runs: no limit refuses a case (the refusal would
#: hide what the input does) and answers are a few tokens (their text is not judged)
ROOMY_SETTINGS: dict[str, int] = dict(
    max_new_tokens=4, chat_turns_per_window=10_000, images_per_day=10_000, max_queued_per_user=1_000
)
#: the first characters of the shared error wording (adapters/common/replies.py)
ERROR_MARKS = ("⚠", "⛔", "⏳", "❓")
#: what a user reads when a handler crashed: a bug, whatever the input was
CRASH_REPLIES = (UNEXPECTED, SOMETHING_WENT_WRONG)


def is_error_reply(text: str) -> bool:
    return text.startswith(ERROR_MARKS) or text == NOT_TEXT


def reply_problems(text: str, limit: int) -> list[str]:
    """Why ``text`` is not an acceptable reply (empty when it is)."""
    problems = []
    if not text.strip():
        problems.append("empty reply")
    if text in CRASH_REPLIES:
        problems.append("a crash apology: a handler failed")
    if "Traceback" in text or 'File "' in text:
        problems.append("a traceback reached the user")
    if len(text) > limit:
        problems.append(f"{len(text)} characters (limit {limit})")
    return problems


class LogTap(logging.Handler):
    """Keeps the warnings and errors every logger writes while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def crashes(self) -> list[str]:
        """Errors, and anything logged with an exception: a handler that failed."""
        return [
            f"{record.name}: {record.getMessage()[:200]}{_exception(record)}"
            for record in self.records
            if record.levelno >= logging.ERROR or record.exc_info
        ]


def _exception(record: logging.LogRecord) -> str:
    """`` (KeyError at handlers.py:12)``: where a logged exception was raised."""
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    error = record.exc_info[1]
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f" ({type(error).__name__}{where}: {str(error)[:120]})"


@contextlib.contextmanager
def tapped_logs() -> Iterator[LogTap]:
    tap = LogTap()
    root = logging.getLogger()
    root.addHandler(tap)
    try:
        yield tap
    finally:
        root.removeHandler(tap)
