"""Text from users must be real Unicode before anything stores or tokenizes it.

Telegram and Discord deliver JSON, and JSON can carry a lone UTF-16 surrogate
(``"\\ud800"``) that Python decodes into a ``str`` no UTF-8 encoder accepts: SQLite, the
tokenizer and every log line would fail on it later, far from the input. So texts a
user chose are refused up front with a clear error, and names the platform gives are
repaired (the user did not type those with this request).
"""

from __future__ import annotations


def is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: why a text with a lone surrogate is refused, after its field name
NOT_UNICODE = "contains characters that are not valid text (a broken emoji?); paste it again as plain text"


def repaired(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (for display names)."""
    return text if is_unicode(text) else text.encode("utf-8", "replace").decode("utf-8")
