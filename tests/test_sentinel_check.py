"""The suite-wide sentinel check (``tests/sentinel_check.py``) can fail, and judges a
record by what ovbot's log would show.

Records here are built by hand (``logging.LogRecord``), not logged: a logged sentinel
would (rightly) fail the test that logs it. The hook itself is proven on an inner
pytest run, whose test logs a sentinel and fails for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovbot.core.logging_setup import SafeFormatter, configure_logging
from tests.sentinel_check import SentinelWatch, logged_text
from tests.sentinels import API_KEY, MARK, TELEGRAM_TOKEN, discord_token, sentinels_in

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent


def record(msg: str, *args: object, name: str = "ovbot.test", exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, exc_info)


@pytest.fixture
def watch() -> Iterator[SentinelWatch]:
    """Not installed (fed by hand), on a root logger without ovbot's handler, whatever
    an earlier module left there."""
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers[:] = [h for h in kept if not isinstance(h.formatter, SafeFormatter)]
    yield SentinelWatch()
    root.handlers[:] = kept


def test_a_secret_handed_to_a_logger_is_a_leak_when_no_formatter_knows_it(watch: SentinelWatch) -> None:
    watch.check(record("calling with key %s", API_KEY))
    try:
        raise RuntimeError(f"refused {TELEGRAM_TOKEN[-14:]}")  # a cut token, in a traceback
    except RuntimeError as exc:
        watch.check(record("call failed", exc=exc, name="telegram.ext"))
    leaks = watch.take()
    assert len(leaks) == 2 and "ovbot.test" in leaks[0] and "telegram.ext" in leaks[1]
    assert watch.take() == [] and watch.scanned == 2


def test_token_shaped_values_in_urls_are_redacted_by_the_patterns(watch: SentinelWatch) -> None:
    watch.check(record("HTTP Request: POST http://127.0.0.1:1/bot%s/getMe", TELEGRAM_TOKEN, name="httpx"))
    watch.check(record("logging in with %s", discord_token(876543210987654321), name="discord.client"))
    watch.check(record("plain words without secrets"))
    assert watch.take() == []


def test_when_ovbot_configured_its_logging_its_own_output_is_judged(watch: SentinelWatch) -> None:
    configure_logging("INFO", secrets=[API_KEY])  # undone by conftest after the test
    keyed = record("calling with key %s", API_KEY)
    assert MARK not in logged_text(keyed)
    watch.check(keyed)
    assert watch.take() == []
    assert sentinels_in(f"x{API_KEY[:-3]}") == [MARK]  # a value cut short still shows its mark


def test_the_hook_fails_the_test_in_whose_time_a_sentinel_is_logged(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        "from tests.sentinel_check import pytest_runtest_setup, pytest_runtest_teardown, "
        "pytest_terminal_summary, pytest_unconfigure\n"
    )
    pytester.makepyfile(
        """
        import logging
        from tests.sentinels import API_KEY

        def test_clean():
            logging.getLogger("ovbot.x").debug("nothing secret here")

        def test_leaky():
            logging.getLogger("ovbot.x").debug("the key is %s", API_KEY)

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaky*", "a sentinel secret reached the log:", "ovbot.x DEBUG showed *"]
    )
    result.stdout.fnmatch_lines(["sentinel check: * log records scanned for secrets"])
