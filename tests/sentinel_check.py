"""Suite-wide check: no log record shows a sentinel secret (``tests/sentinels.py``).

Every test runs with the sentinel tokens and keys, so a secret that reaches a log is one
of them. A log record factory sees every record any logger creates, whichever handlers
a test installed or ``configure_logging`` replaced; the root logger is at DEBUG during
each test, so every record of every logger without a level of its own (all of them,
unless a test or ovbot's configuration pinned one) is created and seen. A record is judged by
what ovbot's log would show: the text its own formatter writes when a test configured
ovbot's logging (redacting the values it was given), else the text a formatter that
knows no value writes (only the token-shaped patterns are redacted), since no part of
ovbot may hand a secret to a logger and count on the handler. A test in whose time a
record shows one fails at its teardown, naming the logger and the fragment.

The cost is one ``getMessage()`` and a few substring searches per record; formatting
happens only for the rare record whose raw text holds a fragment.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Generator
from typing import Any

import pytest

from ovbot.core.logging_setup import SafeFormatter
from tests.sentinels import sentinels_in

_BARE = SafeFormatter("%(levelname)s %(name)s: %(message)s")


def raw_text(record: logging.LogRecord) -> str:
    """The record's message with its arguments and exception, unredacted."""
    try:
        text = record.getMessage()
    except Exception:  # bad arguments: logging reports those itself when it emits
        text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return text


def logged_text(record: logging.LogRecord) -> str:
    """What ovbot's log writes for ``record``: through ovbot's formatter on the root
    logger when one is installed, else through one that knows no secret value."""
    formatter = next(
        (h.formatter for h in logging.getLogger().handlers if isinstance(h.formatter, SafeFormatter)), _BARE
    )
    return formatter.format(record)


class SentinelWatch:
    """Scans every record created while installed; ``leaks`` lists what showed a sentinel."""

    def __init__(self) -> None:
        self.scanned = 0
        self.leaks: list[str] = []
        self._previous: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        if self._previous is None:
            self._previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(self._make)

    def uninstall(self) -> None:
        if self._previous is not None:
            logging.setLogRecordFactory(self._previous)
            self._previous = None

    def _make(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        assert self._previous is not None
        record = self._previous(*args, **kwargs)
        self.check(record)
        return record

    def check(self, record: logging.LogRecord) -> None:
        self.scanned += 1
        if not sentinels_in(raw_text(record)):
            return
        try:
            shown = sentinels_in(logged_text(record))
        except Exception as exc:  # never break the logging call; report it instead
            shown = [f"unformattable ({type(exc).__name__})"]
        if shown:
            self.leaks.append(f"{record.name} {record.levelname} showed {shown}: {record.msg!r:.200}")

    def take(self) -> list[str]:
        leaks, self.leaks = self.leaks, []
        return leaks


def watch_of(config: pytest.Config) -> SentinelWatch:
    watch = config.stash.get(_WATCH, None)
    if watch is None:
        watch = config.stash[_WATCH] = SentinelWatch()
    return watch


_WATCH = pytest.StashKey[SentinelWatch]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    watch_of(item.config).install()
    logging.getLogger().setLevel(logging.DEBUG)  # every record of every logger is created
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    result = yield
    leaks = watch_of(item.config).take()
    if leaks:
        pytest.fail("a sentinel secret reached the log:\n" + "\n".join(leaks), pytrace=False)
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    watch_of(config).uninstall()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    watch = watch_of(config)
    terminalreporter.write_line(f"sentinel check: {watch.scanned} log records scanned for secrets")
