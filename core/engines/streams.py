"""Engine-agnostic stream objects handed to the chat service.

An engine implementation is only a producer: it calls ``feed``/``finish``/``fail`` (or
``progress``/``finish``/``fail`` for images) on the event loop. The consumer side —
ordering, timeouts, cancellation, splitting reasoning from the answer and checking
structured output — lives here once, so the local worker and the remote engine behave
identically.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from ovbot.core.engines.types import (
    ImageProgress,
    ImageRequest,
    ImageResult,
    LLMMetrics,
    LLMResult,
    TextDelta,
)
from ovbot.core.errors import Cancelled, EngineError, EngineTimeout, InvalidStructuredOutput

OPEN_THINK = "<think>"
CLOSE_THINK = "</think>"


class ThinkSplitter:
    """Incrementally splits model output into reasoning and answer.

    DeepSeek-R1 style models either get ``<think>\\n`` at the end of the prompt (so the
    output starts inside the reasoning) or emit ``<think>`` themselves. Tags may arrive
    split across chunks, so a possible tag prefix is held back until it is decided.
    """

    def __init__(self, starts_in_reasoning: bool) -> None:
        self._in_reasoning = starts_in_reasoning
        self._seen_text = starts_in_reasoning  # an opening tag only counts at the start
        self._pending = ""
        self._content_started = False

    def feed(self, text: str) -> list[TextDelta]:
        self._pending += text
        out: list[TextDelta] = []
        while self._pending:
            if not self._in_reasoning and not self._seen_text:
                stripped = self._pending.lstrip()
                if not stripped:
                    return out
                if stripped.startswith(OPEN_THINK):
                    self._pending = stripped[len(OPEN_THINK) :]
                    self._in_reasoning = True
                    self._seen_text = True
                    continue
                if OPEN_THINK.startswith(stripped):
                    return out  # could still become "<think>"
                self._seen_text = True
            tag = CLOSE_THINK if self._in_reasoning else None
            if tag is None:
                self._emit(out, "content", self._pending)
                self._pending = ""
                break
            index = self._pending.find(tag)
            if index >= 0:
                self._emit(out, "reasoning", self._pending[:index])
                self._pending = self._pending[index + len(tag) :]
                self._in_reasoning = False
                continue
            keep = _partial_suffix(self._pending, tag)
            self._emit(out, "reasoning", self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        return out

    def flush(self) -> list[TextDelta]:
        out: list[TextDelta] = []
        if self._pending:
            self._emit(out, "reasoning" if self._in_reasoning else "content", self._pending)
            self._pending = ""
        return out

    def _emit(self, out: list[TextDelta], kind: str, text: str) -> None:
        if kind == "content" and not self._content_started:
            text = text.lstrip()  # the answer follows "</think>\n\n"
            if text:
                self._content_started = True
        if text:
            out.append(TextDelta(kind, text))  # type: ignore[arg-type]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


_T = TypeVar("_T")


async def _get_before(queue: "asyncio.Queue[_T]", deadline: float) -> _T | None:
    """``queue.get()`` with a deadline; None when it passes. Not ``asyncio.wait_for``:
    on Python < 3.12 it swallows a cancellation of the waiting task when an item arrives
    at the same moment (CPython gh-86296), so a stopped job would keep running."""
    getter = asyncio.ensure_future(queue.get())
    try:
        done, _ = await asyncio.wait({getter}, timeout=max(deadline - time.monotonic(), 0))
    except asyncio.CancelledError:
        getter.cancel()
        raise
    if getter in done:
        return getter.result()
    getter.cancel()
    return None


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class LLMStream:
    """Text deltas of one request, in order, then either the end or a typed error.

    Iterate it (``async for delta in stream``) and/or ``await stream.result()``. After
    ``cancel()`` the engine frees the request's slot and iteration raises ``Cancelled``.
    """

    def __init__(
        self,
        *,
        request_id: str,
        on_cancel: Callable[[], None],
        starts_in_reasoning: bool,
        expects_json: bool,
        timeout_s: float | None,
    ) -> None:
        self.request_id = request_id
        self._on_cancel = on_cancel
        self._expects_json = expects_json
        self._splitter = ThinkSplitter(starts_in_reasoning)
        self._queue: asyncio.Queue[TextDelta | _End] = asyncio.Queue()
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._result: LLMResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self._consumed_end = False
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    # ------------------------------------------------------------- producer side
    @property
    def done(self) -> bool:
        return self._done

    def set_starts_in_reasoning(self, value: bool) -> None:
        """Engines learn whether the prompt opened a think block only after applying the
        chat template; this must be called before the first ``feed``."""
        if not self._content and not self._reasoning:
            self._splitter = ThinkSplitter(value)

    def feed(self, text: str) -> None:
        if not self._done:
            for delta in self._splitter.feed(text):
                self._push(delta)

    def finish(self, metrics: LLMMetrics) -> None:
        if self._done:
            return
        for delta in self._splitter.flush():
            self._push(delta)
        content = "".join(self._content)
        data = None
        error: BaseException | None = None
        if self._expects_json:
            try:
                data = json.loads(content, strict=False)
            except ValueError as exc:
                truncated = metrics.finish_reason == "length"
                why = "was cut off by the token limit" if truncated else f"is not valid JSON ({exc})"
                error = InvalidStructuredOutput(
                    f"The model's structured answer {why}.", raw_text=content, truncated=truncated
                )
        self._result = LLMResult(content, "".join(self._reasoning), metrics, data)
        self._close(error)

    def fail(self, error: EngineError) -> None:
        self._close(error)

    def _push(self, delta: TextDelta) -> None:
        (self._reasoning if delta.kind == "reasoning" else self._content).append(delta.text)
        self._queue.put_nowait(delta)

    def _close(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        self._queue.put_nowait(_End(error))

    # ------------------------------------------------------------- consumer side
    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self

    async def __anext__(self) -> TextDelta:
        if self._consumed_end:
            raise StopAsyncIteration
        item = await self._next_item()
        if isinstance(item, _End):
            self._consumed_end = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def _next_item(self) -> TextDelta | _End:
        if self._deadline is None:
            return await self._queue.get()
        item = await _get_before(self._queue, self._deadline)
        if item is None:
            self._abort(EngineTimeout("The model took too long to answer."))
            return await self._queue.get()
        return item

    async def result(self) -> LLMResult:
        """Wait for the end (draining unread deltas) and return the whole answer."""
        async for _ in self:
            pass
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def partial_text(self) -> str:
        """The answer produced so far (useful after an error to keep what arrived)."""
        return "".join(self._content)

    async def cancel(self) -> None:
        self._abort(Cancelled("The request was cancelled."))

    def _abort(self, error: EngineError) -> None:
        if self._done:
            return
        self._on_cancel()
        self._close(error)


class ImageJob:
    """Progress events of one image request, then its result or a typed error."""

    def __init__(
        self, *, request: ImageRequest, on_cancel: Callable[[], None], timeout_s: float | None
    ) -> None:
        self.request = request
        self._on_cancel = on_cancel
        self._queue: asyncio.Queue[ImageProgress | _End] = asyncio.Queue()
        self._future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        self._consumed_end = False
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.last_progress: ImageProgress | None = None

    # ------------------------------------------------------------- producer side
    @property
    def done(self) -> bool:
        return self._future.done()

    def progress(self, step: int, total: int) -> None:
        if not self.done:
            self.last_progress = ImageProgress(step, total)
            self._queue.put_nowait(self.last_progress)

    def finish(self, result: ImageResult) -> None:
        if not self.done:
            self._future.set_result(result)
            self._queue.put_nowait(_End(None))

    def fail(self, error: EngineError) -> None:
        if not self.done:
            self._future.set_exception(error)
            self._future.exception()  # mark retrieved: the consumer may only iterate
            self._queue.put_nowait(_End(error))

    # ------------------------------------------------------------- consumer side
    def __aiter__(self) -> AsyncIterator[ImageProgress]:
        return self

    async def __anext__(self) -> ImageProgress:
        if self._consumed_end:
            raise StopAsyncIteration
        if self._deadline is None:
            item = await self._queue.get()
        else:
            waited = await _get_before(self._queue, self._deadline)
            if waited is None:
                self._abort(EngineTimeout("The image took too long to generate."))
                waited = await self._queue.get()
            item = waited
        if isinstance(item, _End):
            self._consumed_end = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def result(self) -> ImageResult:
        async for _ in self:
            pass
        return await self._future

    async def cancel(self) -> None:
        self._abort(Cancelled("The image was cancelled."))

    def _abort(self, error: EngineError) -> None:
        if self.done:
            return
        self._on_cancel()
        self.fail(error)
