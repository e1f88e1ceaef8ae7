"""Logging with secrets redacted and control characters escaped in every record.

Bot tokens travel in URLs (Telegram puts the token in every request path) and libraries
log URLs, so redaction happens in the handler's formatter, for all loggers, not at call
sites. Log values come from strangers too (a request path, an HTTP method, a library's
error text): a CR/LF in one would start a forged log line, a NUL or an ANSI escape would
reach the log file or the terminal as is. The same formatter escapes them once for
every logger, so no call site has to remember. Both work on the formatted text only and
never change the record, which other handlers (pytest's capture, say) see unchanged.

User content must not reach the logs at any level: libraries that log their arguments
(aiosqlite logs SQL parameters, i.e. message text, at DEBUG; httpx logs URLs with bot
tokens at INFO; the Telegram and Discord clients log request payloads at DEBUG) are
held at WARNING even when ovbot runs at DEBUG.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_PATTERNS = [
    re.compile(r"bot\d{3,}:[A-Za-z0-9_-]{20,}"),  # Telegram bot token in URLs
    re.compile(r"\bhf_[A-Za-z0-9]{10,}"),  # Hugging Face tokens
    re.compile(r"(?i)(authorization: *bearer +)[^\s'\"]+"),
    # Discord bot token: base64 of the bot's id (M, N or O for ids starting 1-3, 4-7, 8-9)
    re.compile(r"[MNO][A-Za-z\d_-]{23,25}\.[\w-]{6}\.[\w-]{27,}"),
    # Discord interaction tokens (base64 "interaction:..."): discord.py logs them inside
    # gateway events and webhook URLs; each lets anyone post as the bot for 15 minutes
    re.compile(r"\baW50ZXJhY3Rpb24[A-Za-z0-9_-]{20,}"),
    re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.-]{20,}"),  # any webhook token in a URL
    re.compile(r"""(['"][\w-]*token['"]: *['"])[^'"]+"""),  # a payload's "token", "secret_token"
    re.compile(r"\b\d{5,}:AA[A-Za-z0-9_-]{30,}"),  # a Telegram bot token outside a URL
]

#: loggers that print arguments, payloads or URLs (message text, tokens) below WARNING
QUIET_LOGGERS: tuple[str, ...] = (
    "aiosqlite",
    "httpx",
    "httpcore",
    "hpack",
    "telegram",
    "discord",
    "urllib3",
    "multipart",
    "python_multipart",
)

#: C0/C1 controls (CR, LF, NUL, ESC, DEL...), Unicode line/paragraph separators and
#: bidi overrides: anything that could end a log line or disguise what follows
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: continuation lines (tracebacks, stack info) start with this, so only the first line
#: of a record can begin at column 0 and nothing inside one can pass for a new record
CONTINUATION = "    "


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove known secret values and anything shaped like a token from ``text``."""
    for secret in secrets:
        text = text.replace(secret, "[REDACTED]")
    for pattern in _PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + "[REDACTED]", text
        )
    return text


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``,
    ``\\x00``, ``\\u2028``): one log record stays one line, whatever a value holds."""
    return _UNSAFE_CHARS.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class SafeFormatter(logging.Formatter):
    """Secrets redacted, then the record's line (message and arguments included) with
    control characters escaped; a traceback or stack keeps its line structure, each of
    its lines escaped and indented by ``CONTINUATION``, so an exception message cannot
    forge a record. ``secrets`` (tokens, API keys) are redacted verbatim."""

    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._secrets = tuple(s for s in secrets if s and len(s) >= 6)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(redact(self.formatMessage(record), self._secrets))
        blocks: list[str] = []
        if record.exc_info and record.exc_info[1] is not None:
            blocks.append(self.formatException(record.exc_info))
        elif record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            for line in redact(block, self._secrets).splitlines():
                text += "\n" + CONTINUATION + escape_controls(line)
        return text


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Log to stderr; ``secrets`` (tokens, API keys from settings) are redacted verbatim."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # a logger's own level decides for its records even below a stricter root, so the
    # floor is WARNING or the root's level, whichever is higher
    floor = max(logging.WARNING, root.level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(floor)
