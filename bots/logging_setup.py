"""Logging with secrets redacted from every record.

Bot tokens travel in URLs (Telegram puts the token in every request path) and libraries
log URLs, so redaction happens in a handler filter, for all loggers, not at call sites.
"""

from __future__ import annotations

import logging
import re
import sys

_PATTERNS = [
    re.compile(r"bot\d{3,}:[A-Za-z0-9_-]{20,}"),  # Telegram bot token in URLs
    re.compile(r"\bhf_[A-Za-z0-9]{10,}"),  # Hugging Face tokens
    re.compile(r"(?i)(authorization: *bearer +)[^\s'\"]+"),
    re.compile(r"[MN][A-Za-z\d_-]{23,25}\.[\w-]{6}\.[\w-]{27,}"),  # Discord bot token
]
_extra_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact this exact value from all log output (settings call it for each secret)."""
    if value and len(value) >= 6:
        _extra_secrets.add(value)


def redact(text: str) -> str:
    for secret in _extra_secrets:
        text = text.replace(secret, "[REDACTED]")
    for pattern in _PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + "[REDACTED]", text
        )
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every URL at INFO, and Telegram URLs contain the bot token
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
