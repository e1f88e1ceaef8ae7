"""Durations as users read them, the same in the core's messages and every adapter's."""

from __future__ import annotations

import math

DAY_S = 86400.0
_NAMED_WINDOWS = {60.0: "minute", 3600.0: "hour", DAY_S: "day"}


def window_text(seconds: float) -> str:
    """A limit's window: "hour" rather than "60 min"."""
    return _NAMED_WINDOWS.get(float(seconds)) or duration_text(seconds)


def duration_text(seconds: float) -> str:
    """Rounded up, so "try again in 1 min" is never too early."""
    total = max(1, math.ceil(seconds))
    if total < 60:
        return f"{total} s"
    minutes = math.ceil(total / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"
