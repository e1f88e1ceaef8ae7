"""A platform's bad day, for the fake servers: for a while, a share of the calls fail the
way Telegram and Discord fail in practice (429 with ``retry_after``, 500/502/503, a
request that hangs until the client gives up, a connection dropped without an answer).

A fake asks its ``Storms`` for every call whether a fault hits it (``pick``); the storm
picks the calls at random (seeded, so a failing run can be repeated) and cycles
through its kinds of fault, so every kind is injected even in a short storm. Faults hit
before the fake does anything with the call: a failed request changed nothing, which
is what makes a retry by the client correct. One kind, ``lost_answer``, hits after the
fake acted (the answer never arrives): only a platform that deduplicates retried
requests (Discord's message nonce) saves the client from posting twice.

The measuring helpers turn the fakes' call logs into the figures the platforms' rules
are stated in (calls per window, least gap between calls).
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from aiohttp import web

#: the faults a storm injects unless told otherwise: each fails the call before the
#: server acted on it, so retrying is always right
FAULTS = ("429", "500", "502", "503", "timeout", "drop")
#: the server acts on the call and then the answer is lost (the connection drops):
#: a client that retries posts twice unless the platform deduplicates (Discord's
#: message nonce); opt in with ``faults=(LOST_ANSWER,)``
LOST_ANSWER = "lost_answer"
#: how long a "timeout" fault holds a request at most before dropping it (the client
#: normally gives up first; discord.py's own limit is aiohttp's 300 s)
DEFAULT_HANG_S = 8.0


@dataclass
class Storm:
    faults: tuple[str, ...]
    #: share of the matching calls that fail (1.0: all of them)
    fraction: float
    #: the methods or route names it hits; None: all
    routes: frozenset[str] | None
    starts_at: float
    ends_at: float
    retry_after: float
    hang_s: float
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)
    _next: int = 0

    def pick(self, route: str, now: float) -> str | None:
        if not self.starts_at <= now < self.ends_at:
            return None
        if self.routes is not None and route not in self.routes:
            return None
        if self.rng.random() >= self.fraction:
            return None
        fault = self.faults[self._next % len(self.faults)]
        self._next += 1
        self.injected[fault] += 1
        return fault


class Storms:
    """The storms of one fake server, and what they injected in total."""

    def __init__(self) -> None:
        self.history: list[Storm] = []
        #: fault kind -> calls it hit, over every storm
        self.injected: Counter[str] = Counter()

    def start(
        self,
        seconds: float,
        *,
        after_s: float = 0.0,
        faults: Sequence[str] = FAULTS,
        fraction: float = 1.0,
        routes: Collection[str] | None = None,
        retry_after: float = 1.0,
        hang_s: float = DEFAULT_HANG_S,
        seed: int = 14,
    ) -> Storm:
        unknown = set(faults) - {*FAULTS, LOST_ANSWER}
        assert not unknown and faults, f"faults must be among {FAULTS + (LOST_ANSWER,)}, not {sorted(unknown)}"
        assert 0.0 < fraction <= 1.0
        starts_at = time.monotonic() + after_s
        storm = Storm(
            tuple(faults),
            fraction,
            None if routes is None else frozenset(routes),
            starts_at,
            starts_at + seconds,
            retry_after,
            hang_s,
            random.Random(seed),
        )
        self.history.append(storm)
        return storm

    def stop(self) -> None:
        """End every storm now (hanging requests still finish their hang)."""
        now = time.monotonic()
        for storm in self.history:
            storm.ends_at = min(storm.ends_at, now)

    @property
    def ends_at(self) -> float:
        return max((s.ends_at for s in self.history), default=0.0)

    @property
    def raging(self) -> bool:
        now = time.monotonic()
        return any(s.starts_at <= now < s.ends_at for s in self.history)

    def pick(self, route: str, now: float) -> tuple[str, Storm] | None:
        for storm in self.history:
            fault = storm.pick(route, now)
            if fault is not None:
                self.injected[fault] += 1
                return fault, storm
        return None


async def hang_then_drop(request: web.Request, seconds: float) -> None:
    """Hold the request unanswered until the client gives up (a server with
    ``handler_cancellation`` cancels this wait then) or ``seconds`` pass; then drop it."""
    try:
        await asyncio.sleep(seconds)
    finally:
        drop(request)


def drop(request: web.Request) -> None:
    """Close the connection without an answer (the client sees "server disconnected")."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of ``times`` (sorted) that fall within any ``window_s`` seconds."""
    best = 0
    for index, at in enumerate(times):
        best = max(best, index - bisect_left(times, at - window_s + 1e-9) + 1)
    return best


def min_gap(times: Sequence[float]) -> float | None:
    """The least time between two of ``times`` (sorted); None with fewer than two."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    return min(gaps) if gaps else None
