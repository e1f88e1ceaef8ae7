"""How one turn's job events become typed turn events (no engine: a scripted event log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from ovbot.core.domain import ReplyEvent
from ovbot.core.jobs.queue import RETRY_NOTICE
from ovbot.core.turn_stream import follow_turn
from ovbot.core.turns import (
    ImageReady,
    Queued,
    ReplyDone,
    Retrying,
    Started,
    TextDelta,
    TurnDone,
    TurnInterrupted,
)


def scripted(logs: dict[str, list[ReplyEvent]]) -> Callable[[str], AsyncIterator[ReplyEvent]]:
    async def subscribe(job_id: str) -> AsyncIterator[ReplyEvent]:
        for event in logs[job_id]:
            yield event

    return subscribe


async def collect(events: AsyncIterator[object]) -> list[object]:
    return [event async for event in events]


@pytest.mark.asyncio
async def test_a_lost_run_is_told_as_retrying_before_the_run_that_counts() -> None:
    log = [
        ReplyEvent("c", "queued", data={"position": 1, "eta_s": 0.0}, seq=1),
        ReplyEvent("c", "status", "running", {"position": 0, "eta_s": 3.0}, seq=2),
        ReplyEvent("c", "text", "half", seq=3),
        ReplyEvent("c", "status", RETRY_NOTICE, {"retry": True, "attempt": 2}, seq=4),
        ReplyEvent("c", "status", "running", {"position": 0, "eta_s": 3.0}, seq=5),
        ReplyEvent("c", "text", "whole", seq=6),
        ReplyEvent("c", "done", data={"text": "whole"}, seq=7),
    ]
    events = await collect(follow_turn("c", scripted({"c": log}), asyncio.Event()))
    assert [type(e) for e in events] == [Queued, Started, TextDelta, Retrying, Started, TextDelta, ReplyDone, TurnDone]
    retry = events[3]
    assert isinstance(retry, Retrying) and retry.attempt == 2 and retry.message == RETRY_NOTICE
    assert [e.seq for e in events] == list(range(1, 9))  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_stopping_bot_interrupts_the_stream() -> None:
    stop = asyncio.Event()

    async def subscribe(job_id: str) -> AsyncIterator[ReplyEvent]:
        yield ReplyEvent(job_id, "queued", data={"position": 2, "eta_s": 9.0}, seq=1)
        await asyncio.Event().wait()  # nothing more until the bot stops
        yield ReplyEvent(job_id, "done", seq=2)  # pragma: no cover

    stream = follow_turn("c", subscribe, stop)
    first = await stream.__anext__()
    assert isinstance(first, Queued) and first.position == 2
    stop.set()
    last = await stream.__anext__()
    assert isinstance(last, TurnInterrupted) and last.message
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


@pytest.mark.asyncio
async def test_a_replayed_end_still_announces_the_picture() -> None:
    """After a restart only the jobs' ends replay: the picture is announced from the
    stored result before the turn ends, once."""
    picture = {"image_id": "img1", "params": {"prompt": "a boat", "seed": 3}}
    logs = {
        "c": [ReplyEvent("c", "done", data={"text": "Here.", "image_job_id": "p"}, seq=1)],
        "p": [ReplyEvent("p", "done", data=picture, seq=1)],
        "bare": [ReplyEvent("bare", "done", data=picture, seq=1)],
    }
    turn = await collect(follow_turn("c", scripted(logs), asyncio.Event()))
    assert [type(e) for e in turn] == [ReplyDone, ImageReady, TurnDone]
    ready = turn[1]
    assert isinstance(ready, ImageReady) and ready.job_id == "p" and ready.image_id == "img1"
    assert ready.params["seed"] == 3
    bare = await collect(follow_turn("bare", scripted(logs), asyncio.Event()))
    assert [type(e) for e in bare] == [ImageReady, TurnDone]

    live = {
        "p": [
            ReplyEvent("p", "image_ready", data=picture, seq=1),
            ReplyEvent("p", "done", data=picture, seq=2),
        ],
        "c": logs["c"],
    }
    once = await collect(follow_turn("c", scripted(live), asyncio.Event()))
    assert [type(e) for e in once].count(ImageReady) == 1
