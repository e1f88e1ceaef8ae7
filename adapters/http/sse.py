"""A turn's events as Server-Sent Events.

Each event goes out as ``id: <seq>``, ``event: <type>``, ``data: <json>``; the stream
ends after the terminal event. While a job waits in the queue nothing may happen for
minutes, so a comment line goes out every ``keepalive_s`` to keep proxies from closing
the connection. A client that reconnects with ``Last-Event-ID`` gets only the events
after that one (a turn replays from its first event, in the same order every time).

The wire names predate the typed events and are kept for existing clients: progress
notes are ``status`` events, a failure is ``error``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from ovbot.core.turns import (
    ImageQueued,
    ImageReady,
    Started,
    Thinking,
    TurnDone,
    TurnEvent,
    TurnFailed,
)

KEEPALIVE = b": keepalive\n\n"
#: wire names that differ from the event's own ``kind``
_WIRE_NAMES: dict[type[TurnEvent], str] = {Started: "status", Thinking: "status", TurnFailed: "error"}
#: the text of status events that carry no text of their own
_STATUS_TEXT: dict[type[TurnEvent], str] = {Started: "running", Thinking: "thinking"}
_TEXT_FIELDS = ("text", "message")

#: turns an image or picture-job id into the URL a client fetches it from
ImageUrl = Callable[[str], str]


def wire_event(event: TurnEvent, image_url: ImageUrl) -> dict[str, Any]:
    """``{"job_id", "type", "text", "data", "seq"}`` as clients of this API read it."""
    data = event.payload()
    text = _STATUS_TEXT.get(type(event), "")
    for name in _TEXT_FIELDS:
        if name in data and not isinstance(event, TurnDone):
            text = str(data.pop(name) or "")
    if isinstance(event, ImageQueued):
        data["job_id"] = event.job_id
        data["url"] = image_url(event.job_id)
    elif isinstance(event, ImageReady):
        data["url"] = image_url(event.image_id)
    elif isinstance(event, TurnDone) and event.image_job_id:
        data["url"] = image_url(event.image_job_id)
    if "error_kind" in data:
        data["kind"] = data.pop("error_kind")
    data = {key: value for key, value in data.items() if value is not None}
    name = _WIRE_NAMES.get(type(event), event.kind)
    return {"job_id": event.job_id, "type": name, "text": text, "data": data, "seq": event.seq}


def format_event(event: TurnEvent, image_url: ImageUrl) -> bytes:
    payload = wire_event(event, image_url)
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    # json.dumps never emits a raw newline, so the data fits on one "data:" line
    return f"id: {event.seq}\nevent: {payload['type']}\ndata: {data}\n\n".encode()


async def sse_stream(
    events: AsyncIterator[TurnEvent],
    image_url: ImageUrl,
    *,
    after_seq: int | None = None,
    keepalive_s: float = 15.0,
) -> AsyncIterator[bytes]:
    iterator = events.__aiter__()
    pending: asyncio.Future[TurnEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            if after_seq is None or event.seq > after_seq or event.terminal:
                yield format_event(event, image_url)
            if event.terminal:
                return
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
