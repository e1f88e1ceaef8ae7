"""Following a job's reply events from an HTTP request: as Server-Sent Events, or
until the end for a blocking ``POST /chat``.

Each SSE event goes out as ``id: <seq>``, ``event: <type>``, ``data: <json>``; the
stream ends after the terminal event. While a job waits in the queue nothing may happen
for minutes, so a comment line goes out every ``keepalive_s`` to keep proxies from
closing the connection. A client that reconnects with ``Last-Event-ID`` gets only the
events after that one (the queue replays a job's events from the first).

Both ways stop following when the App stops: a job the queue released at shutdown
will run again after the restart, and the request must end now rather than hang.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from ovbot.core.domain import ReplyEvent

KEEPALIVE = b": keepalive\n\n"


def format_event(event: ReplyEvent) -> bytes:
    payload = {"job_id": event.job_id, "type": event.type, "text": event.text, "data": event.data, "seq": event.seq}
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    # json.dumps never emits a raw newline, so the data fits on one "data:" line
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


def with_data(event: ReplyEvent, **extra: Any) -> ReplyEvent:
    return replace(event, data={**event.data, **extra})


async def follow(
    events: AsyncIterator[ReplyEvent], stop: asyncio.Event, keepalive_s: float | None = None
) -> AsyncIterator[ReplyEvent | None]:
    """``events`` up to the terminal one, ``None`` after each ``keepalive_s`` of
    silence; ends early once ``stop`` is set. Closes the subscription however it ends
    (finished, stopped, or the consumer went away)."""
    iterator = events.__aiter__()
    stopped = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending, stopped}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED)
            if pending in done:
                finished, pending = pending, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    return
                yield event
                if event.terminal:
                    return
            elif stopped in done:
                return
            else:
                yield None
    finally:
        for future in (pending, stopped):
            if future is not None:
                future.cancel()
        await asyncio.gather(*(f for f in (pending, stopped) if f is not None), return_exceptions=True)
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


async def sse_stream(
    events: AsyncIterator[ReplyEvent],
    stop: asyncio.Event,
    *,
    translate: Callable[[ReplyEvent], ReplyEvent] = lambda event: event,
    after_seq: int | None = None,
    keepalive_s: float = 15.0,
) -> AsyncIterator[bytes]:
    followed = follow(events, stop, keepalive_s)
    try:
        async for event in followed:
            if event is None:
                yield KEEPALIVE
            elif after_seq is None or event.seq > after_seq or event.terminal:
                yield format_event(translate(event))
    finally:
        await followed.aclose()
