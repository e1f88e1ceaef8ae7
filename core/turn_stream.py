"""Following one user turn: the events of its chat job, then of the picture that job's
answer asked for, translated into the typed events of ``ovbot.core.turns``.

The order is deterministic (the whole chat job, then the picture job, each replayed from
its first event), so two readers of the same turn, or a reader that comes back later,
see the same sequence numbers. Following stops with ``TurnInterrupted`` when the bot
stops before the turn ends: the queue released the job and it runs again after the
restart, where ``Bot.resume`` picks it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from ovbot.core.chat.answering import THINKING_STATUS
from ovbot.core.chat.images import GENERATING_STATUS
from ovbot.core.domain import ReplyEvent
from ovbot.core.jobs.queue import RESTART_NOTICE
from ovbot.core.turns import (
    ImageFailed,
    ImageProgress,
    ImageQueued,
    ImageReady,
    Queued,
    ReasoningDelta,
    ReplyDone,
    Retrying,
    Started,
    Status,
    TextDelta,
    Thinking,
    TurnCancelled,
    TurnDone,
    TurnEvent,
    TurnFailed,
    TurnInterrupted,
)

#: subscribe(job_id) -> the job's reply events from its first one, ending after its end
Subscribe = Callable[[str], AsyncIterator[ReplyEvent]]
PICTURE_CANCELLED = "The picture was cancelled."
#: statuses a turn tells otherwise: Started already says the picture runs, and the
#: interruption is told by TurnInterrupted
_UNTOLD_STATUSES = frozenset({GENERATING_STATUS, RESTART_NOTICE})


async def until_stopped(events: AsyncIterator[ReplyEvent], stop: asyncio.Event) -> AsyncIterator[ReplyEvent | None]:
    """``events`` up to the terminal one; ``None`` once if ``stop`` is set first. Closes
    the subscription however it ends (finished, stopped, or the reader went away)."""
    iterator = events.__aiter__()
    stopped = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[ReplyEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            await asyncio.wait({pending, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if pending.done():
                finished, pending = pending, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    return
                yield event
                if event.terminal:
                    return
            else:
                yield None
                return
    finally:
        for future in (pending, stopped):
            if future is not None:
                future.cancel()
        await asyncio.gather(*(f for f in (pending, stopped) if f is not None), return_exceptions=True)
        with contextlib.suppress(Exception):
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()


class _Numbered:
    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, event: TurnEvent) -> TurnEvent:
        self.seq += 1
        return _with_seq(event, self.seq)


def _with_seq(event: TurnEvent, seq: int) -> TurnEvent:
    return dataclasses.replace(event, seq=seq)


async def follow_turn(job_id: str, subscribe: Subscribe, stop: asyncio.Event) -> AsyncIterator[TurnEvent]:
    """The turn that starts with ``job_id`` (a chat job, or a bare picture job), ending
    with exactly one terminal event."""
    number = _Numbered()
    reply: ReplyDone | None = None
    reasoning: str | None = None
    image_job_id: str | None = None
    shown = False  # whether the picture was announced (a replayed end carries only the result)
    async for event in until_stopped(subscribe(job_id), stop):
        if event is None:
            yield number(TurnInterrupted(job_id, message=RESTART_NOTICE))
            return
        if event.type == "done":
            result = event.data
            if "text" not in result:  # a bare picture job: the turn is the picture
                image_id = result.get("image_id")
                if not shown and image_id is not None:
                    yield number(_ready_from_result(job_id, result))
                yield number(TurnDone(job_id, image_job_id=job_id, image_id=None if image_id is None else str(image_id)))
                return
            reasoning = result.get("reasoning")
            image_job_id = result.get("image_job_id")
            note = result.get("image_note")
            reply = ReplyDone(job_id, text=str(result["text"]), reasoning=reasoning, image_job_id=image_job_id, note=note)
            yield number(reply)
            if not image_job_id:
                yield number(TurnDone(job_id, text=reply.text, reasoning=reasoning, note=note))
                return
            break
        translated = _translate(event, image=False)
        if translated is not None:
            shown = shown or isinstance(translated, ImageReady)
            yield number(translated)
            if translated.terminal:
                return
    if reply is None or not image_job_id:
        return  # the subscription ended without an end: nothing more to tell
    async for event in until_stopped(subscribe(image_job_id), stop):
        if event is None:
            yield number(TurnInterrupted(image_job_id, message=RESTART_NOTICE))
            return
        if event.type == "done":
            image_id = event.data.get("image_id")
            if not shown and image_id is not None:
                yield number(_ready_from_result(image_job_id, event.data))
            yield number(
                TurnDone(
                    job_id,
                    text=reply.text,
                    reasoning=reasoning,
                    image_job_id=image_job_id,
                    image_id=None if image_id is None else str(image_id),
                )
            )
            return
        if event.type in ("error", "cancelled"):
            message = event.text if event.type == "error" else PICTURE_CANCELLED
            kind = str(event.data.get("kind", "error")) if event.type == "error" else "cancelled"
            yield number(ImageFailed(image_job_id, message=message, error_kind=kind))
            yield number(TurnDone(job_id, text=reply.text, reasoning=reasoning, image_job_id=image_job_id, note=message))
            return
        translated = _translate(event, image=True)
        if translated is not None:
            shown = shown or isinstance(translated, ImageReady)
            yield number(translated)


def _ready_from_result(picture_job_id: str, result: dict[str, Any]) -> ImageReady:
    """The picture announcement rebuilt from a finished picture job's stored result
    (``image_id``, ``params``): after a restart, or once the live log is gone, the end
    is all that replays, and adapters post the picture on ImageReady."""
    return ImageReady(picture_job_id, image_id=str(result["image_id"]), params=dict(result.get("params") or {}))


def _translate(event: ReplyEvent, *, image: bool) -> TurnEvent | None:
    """One job event as the turn event a user would care about; None for internal ones."""
    job_id, data = event.job_id, event.data
    if event.type in ("queued", "status") and _position(data) is not None:
        position = _position(data)
        eta = float(data.get("eta_s") or 0.0)
        if position == 0:
            return Started(job_id)
        return ImageQueued(job_id, position=position, eta_s=eta) if image else Queued(job_id, position=position, eta_s=eta)
    if event.type == "status" and data.get("retry"):
        return Retrying(job_id, attempt=int(data.get("attempt", 1)), message=event.text)
    if event.type == "status":
        if event.text == THINKING_STATUS:
            return Thinking(job_id)
        if event.text in _UNTOLD_STATUSES or not event.text:
            return None
        return Status(job_id, text=event.text)
    if event.type == "reasoning":
        return ReasoningDelta(job_id, text=event.text)
    if event.type == "text":
        return TextDelta(job_id, text=event.text)
    if event.type == "image_queued":
        return ImageQueued(str(data.get("job_id", job_id)), position=int(data.get("position", 1)), eta_s=float(data.get("eta_s", 0.0)))
    if event.type == "image_progress":
        return ImageProgress(job_id, step=int(data.get("step", 0)), total=int(data.get("total", 0)))
    if event.type == "image_ready":
        return ImageReady(job_id, image_id=str(data.get("image_id", "")), params=dict(data.get("params") or {}))
    if event.type == "error":
        return TurnFailed(job_id, message=event.text, error_kind=str(data.get("kind", "error")))
    if event.type == "cancelled":
        return TurnCancelled(job_id)
    return None


def _position(data: dict[str, Any]) -> int | None:
    value = data.get("position")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
