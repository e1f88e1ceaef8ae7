"""The logging setup every command uses: one record is one line whatever its values
hold, secrets stay redacted, and chatty libraries stay quiet even at DEBUG.

``configure_logging`` is the real one, writing to the stream pytest captures; the
root logger and the pinned loggers are restored after each test.
"""

from __future__ import annotations

import logging
import re

import pytest

from ovbot.core.logging_setup import CONTINUATION, configure_logging, escape_controls, redact

RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def test_control_characters_are_escaped_visibly() -> None:
    assert escape_controls("a\nb\r\x00\x1b[1m\t\u2028\u202e\x85ok") == (
        "a\\nb\\r\\x00\\x1b[1m\\t\\u2028\\u202e\\x85ok"
    )
    assert escape_controls("plain text, ümlaut, 日本, C:\\path") == "plain text, ümlaut, 日本, C:\\path"


def test_an_exception_message_cannot_forge_a_record(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    forged = "1999-12-31 23:59:59,000 INFO ovbot.http: FORGED"
    try:
        raise ValueError(f"bad value\n{forged}\x00")
    except ValueError:
        logging.getLogger("ovbot.test").exception("request %s failed", f"/x\n{forged}")

    lines = capsys.readouterr().err.splitlines()
    assert RECORD_START.match(lines[0]), lines
    assert all(line.startswith(CONTINUATION) for line in lines[1:]), lines
    assert not [line for line in lines if line.startswith("1999")]
    assert any("Traceback (most recent call last):" in line for line in lines)  # still readable
    assert any(line.endswith("FORGED\\x00") for line in lines), lines


def test_secrets_are_still_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", secrets=["my-api-key-0123456789"])
    log = logging.getLogger("ovbot.test")
    log.info("GET https://api.telegram.org/bot123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAA/getMe key=%s", "my-api-key-0123456789")

    err = capsys.readouterr().err
    assert "my-api-key-0123456789" not in err and "AAAAAAAAAAAA" not in err
    assert err.count("[REDACTED]") == 2


@pytest.mark.parametrize("name", ["aiosqlite", "httpx", "httpcore", "telegram.ext.ExtBot", "discord.http"])
def test_chatty_libraries_stay_at_warning_when_ovbot_runs_at_debug(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG")
    logging.getLogger(name).debug("executing INSERT (..., 'the user message')")
    logging.getLogger(name).info("HTTP Request: POST https://api.telegram.org/bot1/sendMessage")
    logging.getLogger(name).warning("a warning %s", name)
    logging.getLogger("ovbot.test").debug("ovbot's own debug line")

    err = capsys.readouterr().err
    assert "the user message" not in err and "sendMessage" not in err
    assert f"a warning {name}" in err and "ovbot's own debug line" in err


def test_a_stricter_root_level_also_holds_for_the_pinned_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("ERROR")
    logging.getLogger("aiosqlite").warning("should not show")
    logging.getLogger("aiosqlite").error("shows")

    err = capsys.readouterr().err
    assert "should not show" not in err and "shows" in err


def test_redaction_and_escaping_leave_the_record_to_other_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the formatted text changes: a handler added after (pytest's capture, a
    future file handler) still gets the exception to format itself."""
    configure_logging("INFO", secrets=["my-api-key-0123456789"])
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(keep)
    try:
        raise RuntimeError("key my-api-key-0123456789 rejected\nsecond line")
    except RuntimeError:
        logging.getLogger("ovbot.test").exception("call failed")

    err = capsys.readouterr().err
    assert "my-api-key-0123456789" not in err and "key [REDACTED] rejected" in err
    assert records and records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize(
    "line, secret, kept",
    [
        # discord.py at DEBUG: gateway events carry the interaction token, webhook URLs too
        ("Event: {'d': {'token': 'aW50ZXJhY3Rpb246MTIzOmFiY2RlZmdoaWprbG1ub3A'}}", "aW50ZXJhY3Rpb24", "'token': '"),
        ("PATCH https://x/api/v10/webhooks/876/aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmFi/messages/@original", "aW50", "/876/"),
        ("POST https://x/api/v10/interactions/123/some-other-shape_of-token-123456/callback", "some-other", "/123/"),
        # a bot token of an application whose id starts with 8 or 9 (base64 head "O...")
        ("token ODc2NTQzMjEwOTg3NjU0MzIx.GfAkEd.abcdefghijklmnopqrstuvwxyz0123", "abcdefghijklmnop", "token "),
        ('setWebhook {"url": "https://x", "secret_token": "whsec-value"}', "whsec-value", '"secret_token": "'),
        ("a Telegram token outside a URL: 123456789:AAHdefghijklmnopqrstuvwxyz012345678", "AAHdefghijklmnop", "URL: "),
    ],
)
def test_token_shapes_are_redacted_without_knowing_the_value(line: str, secret: str, kept: str) -> None:
    redacted = redact(line)
    assert secret not in redacted and kept + "[REDACTED]" in redacted, redacted
