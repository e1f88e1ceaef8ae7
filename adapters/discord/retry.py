"""Which Discord failures are worth waiting out, and how long to wait.

discord.py sleeps out short 429s itself and retries 500/502/504 a few times; what it
gives up on reaches ovbot as an exception. A reply must not be abandoned for a bad
minute on Discord's side: a 429 it did not absorb, a 5xx (503 is never retried by
discord.py's bot routes), a dropped connection or a timeout (aiohttp's
``ClientError``, ``ConnectionError``, ``asyncio.TimeoutError``) become ``RetryLater``, so the
live-reply renderer waits and then pushes its newest state. Failures in a row wait
longer (``Backoff``), so a long outage costs one request per reply every 15 s.
Everything else (403, 404, a 400) is a real answer and is raised as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import aiohttp
import discord

from ovbot.adapters.common import RetryLater
from ovbot.adapters.common.backoff import Backoff

log = logging.getLogger("ovbot.discord")

#: when a 429 escapes discord.py without a usable retry_after
DEFAULT_RETRY_S = 1.0
#: what a request that never got an answer raises (connection dropped, reset, timed
#: out); not every OSError: a picture file that cannot be opened is not Discord's trouble
NO_ANSWER = (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError)


def retry_after(exc: discord.HTTPException) -> float:
    header = exc.response.headers.get("Retry-After") if exc.response is not None else None
    try:
        return max(float(header), 0.0) if header else DEFAULT_RETRY_S
    except ValueError:
        return DEFAULT_RETRY_S


def server_trouble(exc: BaseException) -> bool:
    """Discord failed on its side or never answered: the same request may work later."""
    if isinstance(exc, discord.HTTPException):
        return exc.status >= 500
    return isinstance(exc, NO_ANSWER)


@contextlib.contextmanager
def retry_later_on_trouble(backoff: Backoff) -> Iterator[None]:
    """A 429 discord.py gave up on, a 5xx or a request without an answer becomes
    ``RetryLater``; success resets ``backoff``."""
    try:
        yield
    except discord.RateLimited as exc:
        raise RetryLater(exc.retry_after) from None
    except discord.HTTPException as exc:
        if exc.status == 429:
            raise RetryLater(retry_after(exc)) from None
        if not server_trouble(exc):
            raise
        log.info("Discord answered %s; trying again later", exc.status)
        raise RetryLater(backoff.failed()) from None
    except NO_ANSWER as exc:
        log.info("a request to Discord got no answer (%s); trying again later", type(exc).__name__)
        raise RetryLater(backoff.failed()) from None
    backoff.succeeded()
