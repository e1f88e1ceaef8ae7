"""A bound on the Server-Sent Event streams each API key holds open at once.

A stream holds a connection (and a subscription to its turn) for as long as the turn
runs, minutes when the queue is long; without a bound one key could take every
connection the server allows (``OVBOT_HTTP_MAX_CONNECTIONS``) and lock every other
client out. The bound is per key because a key is a tenant: one noisy integration
must not starve the others. A slot is taken before the turn is queued (a refused
stream costs the user nothing) and given back when the response ends, however it
ends: finished, failed, or the client hung up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ovbot.adapters.http.errors import ApiError

#: what a refused client is told to wait: streams end when their turn does, which the
#: server cannot foresee; a few seconds lets a client retry without hammering
STREAM_RETRY_S = 5.0


class StreamSlot:
    """One open stream of one key; ``release`` is safe to call more than once."""

    def __init__(self, slots: StreamSlots, key_id: str) -> None:
        self._slots = slots
        self._key_id = key_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self._key_id)


class StreamSlots:
    """Counts the open streams of each key (keys with none take no memory)."""

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError("per_key must be at least 1")
        self.per_key = per_key
        self._open: Counter[str] = Counter()

    def acquire(self, key_id: str) -> StreamSlot:
        """A slot for a new stream, or ApiError ``too_many_streams`` (429, Retry-After)."""
        held = self._open[key_id]
        if held >= self.per_key:
            raise ApiError(
                "too_many_streams",
                f"This API key already has {held} event streams open (the limit is {self.per_key}). "
                f"Close one, or poll GET /jobs/{{job_id}} instead; try again in ~{STREAM_RETRY_S:g} s.",
                retry_after_s=STREAM_RETRY_S,
            )
        self._open[key_id] += 1
        return StreamSlot(self, key_id)

    def _give_back(self, key_id: str) -> None:
        self._open[key_id] -= 1
        if self._open[key_id] <= 0:
            del self._open[key_id]


class SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its slot back when it ends: Starlette cancels
    the response when the client disconnects, so a ``finally`` here runs in every case
    (the body generator itself may be left suspended and closed only later)."""

    def __init__(
        self, slot: StreamSlot, content: AsyncIterable[bytes], *, media_type: str, headers: Mapping[str, str]
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
