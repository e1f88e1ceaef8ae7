"""Delivering a live reply to an edit-in-place platform, throttled.

Events arrive far faster than a platform accepts edits (Telegram and Discord both limit
edits per chat), and a state that is already outdated is worth nothing. So one task
reads the events as fast as they come and folds them into a ``LiveReply``, and the
driver pushes the *latest* state at most once per interval: states in between are
skipped, never queued; only messages whose text changed are touched; the final state
always gets through, after waiting out the interval or a platform's "retry later".

The platform side is a ``ReplyTarget``: three small methods, no knowledge of events.
Time is injected (``clock``, ``sleep``) so tests run the driver on a virtual clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from typing import Protocol

from ovbot.adapters.common.live_reply import LiveReply, ReplyView
from ovbot.adapters.common.split import Measure
from ovbot.core.turns import ImageReady, TurnEvent

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RetryLater(Exception):
    """A ``ReplyTarget`` raises this when the platform asks to slow down (Telegram's
    ``RetryAfter``, Discord's 429): the driver waits ``retry_after_s`` (at least its own
    interval) and then pushes the latest state; nothing is dropped."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


class ReplyTarget(Protocol):
    """Where one reply is shown: a platform adapter implements this for one chat.
    Any exception other than ``RetryLater`` ends the rendering and reaches the caller
    (the adapter's single place that reports errors)."""

    async def show(self, index: int, text: str) -> None:
        """Make message ``index`` say ``text``: send it when it is new (new indexes come
        in order, from 0), else edit it. ``text`` is never empty and never what the
        message already says."""

    async def delete(self, index: int) -> None:
        """Remove message ``index``: only ever the last one, and only when the final
        reply needs fewer messages than were streamed (rare: the authoritative text
        came out shorter)."""

    async def send_image(self, image: ImageReady) -> None:
        """Send the picture (fetch it through the core facade); it is sent once, after
        the messages holding the text before it."""


async def render_live(
    events: AsyncIterable[TurnEvent],
    target: ReplyTarget,
    *,
    limit: int,
    min_interval_s: float,
    clock: Clock,
    sleep: Sleep,
    show_reasoning: bool = False,
    measure: Measure = len,
    shown: Sequence[str] = (),
) -> ReplyView:
    """Show one turn's events on ``target`` until the stream ends; return the last view
    pushed (``final`` unless the stream ended without a terminal event).

    ``limit`` and ``measure`` are the platform's message length limit and how it counts;
    ``min_interval_s`` is the least time between two pushes; ``shown`` is what the
    target's messages already say (when an adapter continues a reply it started before).
    """
    reply = LiveReply(limit=limit, measure=measure, show_reasoning=show_reasoning)
    driver = _Driver(reply, target, min_interval_s=min_interval_s, clock=clock, sleep=sleep, shown=shown)
    return await driver.run(events)


class _Driver:
    """One reader task folds events; ``run`` pushes the latest view when allowed."""

    def __init__(
        self,
        reply: LiveReply,
        target: ReplyTarget,
        *,
        min_interval_s: float,
        clock: Clock,
        sleep: Sleep,
        shown: Sequence[str],
    ) -> None:
        self._reply = reply
        self._target = target
        self._interval = min_interval_s
        self._clock = clock
        self._sleep = sleep
        #: what each message on the target says now
        self._shown = list(shown)
        self._changed = asyncio.Event()
        #: events folded so far; a view is "as of" the version it was taken at
        self._version = 0
        self._ended = False
        #: (version the picture arrived at, the picture), in order
        self._images: list[tuple[int, ImageReady]] = []
        self._images_sent = 0
        self._next_push_at = -math.inf

    async def run(self, events: AsyncIterable[TurnEvent]) -> ReplyView:
        reader = asyncio.ensure_future(self._read(events))
        try:
            while True:
                await self._changed.wait()
                _raise_if_failed(reader)
                await self._wait_turn()
                _raise_if_failed(reader)
                self._changed.clear()
                view, version = await self._push_latest()
                await self._send_images(version)
                if view.final or (self._ended and version == self._version):
                    return view
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, events: AsyncIterable[TurnEvent]) -> None:
        try:
            async for event in events:
                self._reply.apply(event)
                self._version += 1
                if isinstance(event, ImageReady):
                    self._images.append((self._version, event))
                self._changed.set()
                if event.terminal:
                    break
        finally:
            self._ended = True
            self._changed.set()
            if isinstance(events, AsyncGenerator):
                await events.aclose()  # run its cleanup now, not whenever it is collected

    async def _wait_turn(self) -> None:
        delay = self._next_push_at - self._clock()
        if delay > 0:
            await self._sleep(delay)

    def _mark_push(self) -> None:
        self._next_push_at = self._clock() + self._interval

    async def _back_off(self, signal: RetryLater) -> None:
        delay = max(signal.retry_after_s, self._interval)
        self._next_push_at = self._clock() + delay
        await self._sleep(delay)

    async def _push_latest(self) -> tuple[ReplyView, int]:
        """Push the newest view (taking a newer one after each back-off)."""
        while True:
            version, view = self._version, self._reply.view()
            try:
                await self._show(view)
            except RetryLater as signal:
                await self._back_off(signal)
                continue
            return view, version

    async def _show(self, view: ReplyView) -> None:
        if not view.messages:
            return  # nothing to say yet; never blank out what is shown
        pushing = False
        for index, text in enumerate(view.messages):
            if index < len(self._shown) and self._shown[index] == text:
                continue
            if not pushing:
                self._mark_push()
                pushing = True
            await self._target.show(index, text)
            if index < len(self._shown):
                self._shown[index] = text
            else:
                self._shown.append(text)
        while len(self._shown) > len(view.messages):
            if not pushing:
                self._mark_push()
                pushing = True
            await self._target.delete(len(self._shown) - 1)
            self._shown.pop()

    async def _send_images(self, version: int) -> None:
        """Send the pictures that arrived before the view just pushed."""
        while self._images_sent < len(self._images):
            arrived, image = self._images[self._images_sent]
            if arrived > version:
                return  # the text before it is not shown yet: next round
            await self._wait_turn()
            self._mark_push()
            try:
                await self._target.send_image(image)
            except RetryLater as signal:
                await self._back_off(signal)
                continue
            self._images_sent += 1


def _raise_if_failed(reader: asyncio.Future[None]) -> None:
    """The event stream raised: that is the caller's error, not a state to show."""
    if reader.done() and not reader.cancelled():
        reader.result()
