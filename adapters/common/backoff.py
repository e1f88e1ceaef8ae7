"""How long a reply waits after a platform failed to answer: one ladder for every
edit-in-place adapter, so a long outage costs each waiting reply one request every
15 s on Telegram and Discord alike, and a short hiccup is retried after a second."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ovbot.adapters.common.render import RetryLater, Sleep

#: seconds to wait after the 1st, 2nd, ... failure in a row (then the last, again)
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)


def backoff_delay(failures: int, steps: tuple[float, ...] = BACKOFF_S) -> float:
    """The wait after ``failures`` failures in a row (at least one)."""
    return steps[min(max(failures, 1), len(steps)) - 1]


class Backoff:
    """Failures in a row, and the wait the next retry should take."""

    def __init__(self, steps: tuple[float, ...] = BACKOFF_S) -> None:
        self._steps = steps
        self._failures = 0

    def failed(self) -> float:
        self._failures += 1
        return backoff_delay(self._failures, self._steps)

    def succeeded(self) -> None:
        self._failures = 0


async def until_done(attempt: Callable[[], Awaitable[None]], sleep: Sleep, min_wait_s: float = 0.0) -> None:
    """Run ``attempt`` until it does not ask to be retried later: the last step of a
    reply (persisting a draft, taking a button off) must not be abandoned for a bad
    minute on the platform's side. A stop cancels the wait; the next start finishes."""
    while True:
        try:
            await attempt()
            return
        except RetryLater as signal:
            await sleep(max(signal.retry_after_s, min_wait_s))
