"""The live reply shared by edit-in-place platforms: splitting, the state fold and the
throttled driver, run on a virtual clock against a recording fake target (no platform,
no real waiting)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovbot.adapters.common import (
    LiveReply,
    ReplyView,
    RetryLater,
    render_live,
    split_message,
    utf16_length,
)
from ovbot.adapters.common.live_reply import format_eta, progress_status, queued_status
from ovbot.adapters.common.split import Measure
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

T = TypeVar("T")
JOB = "job1"
RESTART = "The bot is restarting; your request will run again when it is back."


# ---------------------------------------------------------------- virtual time


class VirtualTime:
    """A clock and a ``sleep`` that advance virtual time: ``run`` lets every task run
    until all of them wait, then wakes the earliest sleeper at its due time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), future))
        await future

    async def run(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        while True:
            for _ in range(50):  # let everything that can run, run
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            live = [t for t in self._timers if not t[2].done()]
            if not live:
                task.cancel()
                raise AssertionError("deadlock: every task waits and no timer is due")
            when, _, future = heapq.heappop(self._timers)
            if future.done():
                continue
            self.now = max(self.now, when)
            future.set_result(None)


async def timed(
    time: VirtualTime, steps: Iterable[tuple[float, TurnEvent]], closed: list[bool] | None = None
) -> AsyncIterator[TurnEvent]:
    """Yield each event at its (virtual) time."""
    try:
        for at, event in steps:
            if at > time.now:
                await time.sleep(at - time.now)
            yield event
    finally:
        if closed is not None:
            closed.append(True)


# ---------------------------------------------------------------- recording target


@dataclass
class Call:
    at: float
    op: str  # "show", "delete", "image", "retry" (a call answered with RetryLater)
    index: int
    text: str


@dataclass
class RecordingTarget:
    """Keeps the messages as a platform would, and fails the test on anything a
    platform would refuse or a user would see as noise: empty or over-long text,
    an edit to the same text, a gap in message indexes."""

    time: VirtualTime
    limit: int
    measure: Measure = len
    #: call number (0-based, every method) -> answer it with RetryLater(seconds)
    retry: dict[int, float] = field(default_factory=dict)
    error: Exception | None = None
    #: how long each call takes (virtual seconds)
    latency: float = 0.0
    messages: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    _count: int = 0

    async def _refuse(self, op: str, index: int, text: str) -> None:
        if self.latency:
            await self.time.sleep(self.latency)
        number = self._count
        self._count += 1
        if self.error is not None:
            raise self.error
        if number in self.retry:
            self.calls.append(Call(self.time.now, "retry", index, text))
            raise RetryLater(self.retry[number])

    async def show(self, index: int, text: str) -> None:
        await self._refuse("show", index, text)
        assert text.strip(), "an empty message"
        assert self.measure(text) <= self.limit, f"{self.measure(text)} > {self.limit}"
        assert index <= len(self.messages), "a gap in message indexes"
        if index < len(self.messages):
            assert self.messages[index] != text, f"message {index} edited to the text it has"
            self.messages[index] = text
        else:
            self.messages.append(text)
        self.calls.append(Call(self.time.now, "show", index, text))

    async def delete(self, index: int) -> None:
        await self._refuse("delete", index, "")
        assert index == len(self.messages) - 1, "only the last message is deleted"
        self.messages.pop()
        self.calls.append(Call(self.time.now, "delete", index, ""))

    async def send_image(self, image: ImageReady) -> None:
        await self._refuse("image", -1, image.image_id)
        self.calls.append(Call(self.time.now, "image", -1, image.image_id))

    def shows(self) -> list[Call]:
        return [c for c in self.calls if c.op == "show"]


async def render(
    steps: list[tuple[float, TurnEvent]],
    *,
    limit: int | None = None,
    interval: float = 1.0,
    show_reasoning: bool = False,
    target: RecordingTarget | None = None,
    time: VirtualTime | None = None,
) -> tuple[ReplyView, RecordingTarget]:
    time = time or (target.time if target else VirtualTime())
    limit = limit or (target.limit if target else 4096)
    target = target or RecordingTarget(time, limit)
    assert target.limit == limit
    view = await time.run(
        render_live(
            timed(time, steps),
            target,
            limit=limit,
            min_interval_s=interval,
            clock=time.clock,
            sleep=time.sleep,
            show_reasoning=show_reasoning,
        )
    )
    return view, target


def no_space(text: str) -> str:
    return "".join(text.split())


def paragraphs_text(seed: int, size: int) -> str:
    """Paragraphs of 2-6 sentences of 4-14 words, about ``size`` characters."""
    rng = random.Random(seed)
    words = "the model answers every question with care and a little bit of humor today".split()
    paragraphs: list[str] = []
    while sum(len(p) + 2 for p in paragraphs) < size:
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + rng.choice(".!?")
            for _ in range(rng.randint(2, 6))
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------- split


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("", 10, []),
        ("  \n\n  ", 10, []),
        ("  short  ", 10, ["short"]),
        ("aaaa aaaa\n\nbbbb\ncccc dddd", 20, ["aaaa aaaa", "bbbb\ncccc dddd"]),  # paragraph over line
        ("aaaa aaaa\nbbbb. cccc dddd", 20, ["aaaa aaaa", "bbbb. cccc dddd"]),  # line over sentence
        ("aaaa aaaa. bbbb cccc dddd", 20, ["aaaa aaaa.", "bbbb cccc dddd"]),  # sentence over space
        ('He said "stop." Then he left', 20, ['He said "stop."', "Then he left"]),
        ("今天天气很好。我们去公园吧", 10, ["今天天气很好。", "我们去公园吧"]),
        ("aaaa bbbb cccc dddd eeee", 12, ["aaaa bbbb", "cccc dddd", "eeee"]),  # any space
        ("x" * 25, 10, ["x" * 10, "x" * 10, "x" * 5]),  # hard cut
        ("ab\n\ncccc ccc. dddd dddd dddd", 20, ["ab\n\ncccc ccc.", "dddd dddd dddd"]),  # early break skipped
        ("aaaa\r\nbbbb", 4, ["aaaa", "bbbb"]),
        ("aaaa\r\nbbbb", 5, ["aaaa", "bbbb"]),
    ],
)
def test_split_cuts_at_the_strongest_boundary(text: str, limit: int, expected: list[str]) -> None:
    assert split_message(text, limit) == expected


def test_split_never_tears_combining_marks_surrogates_or_joined_emoji() -> None:
    accented = split_message("e\u0301" * 10, 5)
    assert all(not unicodedata.combining(chunk[0]) for chunk in accented)
    assert "".join(accented) == "e\u0301" * 10
    paired = split_message("a" + "\ud83d\ude00" * 5, 4)
    assert all(not ("\ud800" <= chunk[-1] <= "\udbff") for chunk in paired)
    assert split_message("ab\U0001f468\u200d\U0001f469\u200d\U0001f467", 4)[0] == "ab"
    assert split_message("ab" + "\u2764\ufe0f" * 3, 3)[0] == "ab"


def test_split_counts_utf16_units_when_asked() -> None:
    text = "\U0001f600" * 10  # 10 code points, 20 UTF-16 units
    assert split_message(text, 10) == [text]
    chunks = split_message(text, 10, measure=utf16_length)
    assert [utf16_length(c) for c in chunks] == [10, 10]


@pytest.mark.parametrize("limit", [4096, 2000])
def test_split_long_answer_at_paragraphs(limit: int) -> None:
    text = paragraphs_text(seed=limit, size=10_000)
    paragraphs = set(text.split("\n\n"))
    chunks = split_message(text, limit)
    assert len(chunks) >= 10_000 // limit + 1
    assert all(len(c) <= limit for c in chunks)
    assert no_space("".join(chunks)) == no_space(text)
    for chunk in chunks:  # whole paragraphs only: no paragraph is longer than limit / 4
        assert set(chunk.split("\n\n")) <= paragraphs


@pytest.mark.parametrize("limit", [4096, 2000])
def test_split_one_long_paragraph_at_sentences(limit: int) -> None:
    text = paragraphs_text(seed=7, size=10_000).replace("\n\n", " ")
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    assert all(c[-1] in ".!?" for c in chunks)
    assert no_space("".join(chunks)) == no_space(text)


_ALPHABET = st.sampled_from(list("ab .!?\n\r\t。") + ["\u0301", "\U0001f600", "\u200d", "xyz", "Mr. "])
_TEXTS = st.lists(_ALPHABET, max_size=120).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_TEXTS, limit=st.integers(2, 40), utf16=st.booleans())
def test_split_properties(text: str, limit: int, utf16: bool) -> None:
    measure: Measure = utf16_length if utf16 else len
    chunks = split_message(text, limit, measure=measure)
    for chunk in chunks:
        assert chunk.strip() == chunk != ""
        assert measure(chunk) <= limit
    assert no_space("".join(chunks)) == no_space(text)


@settings(max_examples=300, deadline=None)
@given(text=_TEXTS, limit=st.integers(2, 40), utf16=st.booleans())
def test_split_is_prefix_stable(text: str, limit: int, utf16: bool) -> None:
    """Every chunk but the growing last one stays exactly as it is when text is added."""
    measure: Measure = utf16_length if utf16 else len
    whole = split_message(text, limit, measure=measure)
    for end in range(len(text) + 1):
        part = split_message(text[:end], limit, measure=measure)
        assert len(part) <= len(whole)
        assert part[:-1] == whole[: max(len(part) - 1, 0)]


# ---------------------------------------------------------------- status texts


def test_status_texts() -> None:
    assert queued_status(3, 40.0) == "⏳ Queued: #3, ~40 s"
    assert queued_status(1, 0.0) == "⏳ Queued: #1"
    assert [format_eta(s) for s in (0, 0.4, 40, 59.4, 185, 3600, 4800)] == [
        None, "~1 s", "~40 s", "~1 min", "~4 min", "~1 h", "~1 h 20 min",
    ]  # fmt: skip
    assert progress_status(0, 20) == "🎨 Picture: step 0/20 ▱▱▱▱▱▱▱▱▱▱"
    assert progress_status(3, 20) == "🎨 Picture: step 3/20 ▰▱▱▱▱▱▱▱▱▱"
    assert progress_status(10, 20) == "🎨 Picture: step 10/20 ▰▰▰▰▰▱▱▱▱▱"
    assert progress_status(19, 20) == "🎨 Picture: step 19/20 ▰▰▰▰▰▰▰▰▰▱"
    assert progress_status(20, 20) == "🎨 Picture: step 20/20 ▰▰▰▰▰▰▰▰▰▰"
    assert progress_status(0, 0) == "🎨 Picture: drawing…"


# ---------------------------------------------------------------- the driver


async def test_throttle_coalesces_deltas_and_waits_out_the_interval_for_the_final() -> None:
    steps: list[tuple[float, TurnEvent]] = [(i / 10, TextDelta(JOB, text=f"w{i} ")) for i in range(10)]
    full = "".join(f"w{i} " for i in range(10))
    steps += [(0.95, ReplyDone(JOB, text=full)), (0.95, TurnDone(JOB, text=full))]
    view, target = await render(steps, interval=1.0)
    assert [(c.at, c.text) for c in target.shows()] == [(0.0, "w0\n\n✍️ Writing…"), (1.0, full.strip())]
    assert view.final and view.outcome == "done" and view.messages == (full.strip(),)


async def test_status_lines_follow_the_turn() -> None:
    steps: list[tuple[float, TurnEvent]] = [
        (0, Queued(JOB, position=3, eta_s=40)),
        (5, Queued(JOB, position=2, eta_s=20)),
        (10, Queued(JOB, position=1, eta_s=5)),
        (12, Started(JOB)),
        (13, Thinking(JOB)),
        (15, TextDelta(JOB, text="Hi")),
        (16, ReplyDone(JOB, text="Hi")),
        (16, TurnDone(JOB, text="Hi")),
    ]
    view, target = await render(steps)
    assert [c.text for c in target.shows()] == [
        "⏳ Queued: #3, ~40 s",
        "⏳ Queued: #2, ~20 s",
        "⏳ Queued: #1, ~5 s",
        "⚙️ Starting…",
        "💭 Thinking…",
        "Hi\n\n✍️ Writing…",
        "Hi",
    ]
    assert view.status is None and view.notes == ()


async def test_an_unchanged_state_is_not_pushed_again() -> None:
    steps: list[tuple[float, TurnEvent]] = [
        (0, Queued(JOB, position=3, eta_s=40)),
        (2, Queued(JOB, position=3, eta_s=40)),
        (3, Thinking(JOB)),
        (5, Thinking(JOB)),
        (6, TextDelta(JOB, text="Hello")),
        (8, TextDelta(JOB, text="")),
        (10, ReplyDone(JOB, text="Hello")),
        (10, TurnDone(JOB, text="Hello")),
    ]
    _, target = await render(steps)
    assert [(c.at, c.text) for c in target.shows()] == [
        (0, "⏳ Queued: #3, ~40 s"),
        (3, "💭 Thinking…"),
        (6, "Hello\n\n✍️ Writing…"),
        (10, "Hello"),
    ]


async def test_picture_progress_is_shown_throttled_and_the_picture_sent_once() -> None:
    image = ImageReady(JOB, image_id="img1", params={"prompt": "a lighthouse"})
    steps: list[tuple[float, TurnEvent]] = [(0, Queued(JOB, position=1, eta_s=60)), (0.5, Started(JOB))]
    steps += [(1.05 + k / 10, ImageProgress(JOB, step=k + 1, total=20)) for k in range(20)]
    steps += [(3.1, image), (3.1, TurnDone(JOB, image_job_id=JOB, image_id="img1"))]
    view, target = await render(steps, interval=1.0)
    times = [c.at for c in target.calls]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert [(c.at, c.op, c.text) for c in target.calls] == [
        (0, "show", "⏳ Queued: #1, ~1 min"),
        (1.0, "show", "⚙️ Starting…"),
        (2.0, "show", "🎨 Picture: step 10/20 ▰▰▰▰▰▱▱▱▱▱"),
        (3.0, "show", "🎨 Picture: step 20/20 ▰▰▰▰▰▰▰▰▰▰"),
        (4.0, "show", "🎨 Here is your picture."),
        (5.0, "image", "img1"),
    ]
    assert view.image == image and view.final


async def test_chat_picture_follows_all_of_its_text() -> None:
    answer = "First part of the answer. " * 6 + "\n\n" + "Second part, a little longer than the first. " * 3
    steps: list[tuple[float, TurnEvent]] = [
        (0, TextDelta(JOB, text=answer)),
        (0.1, ReplyDone(JOB, text=answer)),
        (0.2, ImageQueued("pic1", position=2, eta_s=90)),
        (2.5, Started("pic1")),
        (4.5, ImageProgress("pic1", step=5, total=10)),
        (6.5, ImageReady("pic1", image_id="img9")),
        (6.5, TurnDone(JOB, text=answer, image_job_id="pic1", image_id="img9")),
    ]
    view, target = await render(steps, limit=200)
    ops = [(c.op, c.index) for c in target.calls]
    assert ops.count(("image", -1)) == 1
    assert ops[-1] == ("image", -1)  # after every message of the text
    statuses = [c.text.rsplit("\n\n", 1)[-1] for c in target.shows()]
    assert "🎨 Picture: queued #2, ~2 min" in statuses
    assert "🎨 Picture: starting…" in statuses
    assert "🎨 Picture: step 5/10 ▰▰▰▰▰▱▱▱▱▱" in statuses
    # the body is split with room for a status line: 200 - 200 // 4 - len("\n\n")
    assert len(view.messages) == 3 and view.messages == tuple(split_message(answer, 148))


async def test_a_picture_waits_for_text_that_arrived_during_a_slow_push() -> None:
    """The picture arrives while message 0 is being edited, after text that needs a
    second message: that message is sent first, then the picture."""
    time = VirtualTime()
    target = RecordingTarget(time, 100, latency=0.5)
    more = " ".join(["word"] * 30)
    steps: list[tuple[float, TurnEvent]] = [
        (0, TextDelta(JOB, text="Start. ")),
        (0.2, TextDelta(JOB, text=more)),
        (0.3, ImageReady(JOB, image_id="img1")),
        (0.3, TurnDone(JOB, text="Start. " + more)),
    ]
    await render(steps, target=target)
    ops = [(c.op, c.index) for c in target.calls]
    assert ops.index(("image", -1)) > ops.index(("show", 1))
    assert ops[-1] == ("image", -1) and len(target.messages) == 3


def test_reply_done_text_is_authoritative() -> None:
    reply = LiveReply(limit=100)
    for piece in ("Helo ", "wrld"):
        reply.apply(TextDelta(JOB, text=piece))
    reply.apply(ReplyDone(JOB, text="Hello world."))
    reply.apply(ImageQueued("pic1", position=1, eta_s=0))
    assert reply.view().messages == ("Hello world.\n\n🎨 Picture: queued #1",)


def test_a_retried_run_drops_what_the_lost_run_wrote() -> None:
    reply = LiveReply(limit=200, show_reasoning=True)
    reply.apply(ReasoningDelta(JOB, text="first thoughts"))
    reply.apply(TextDelta(JOB, text="half an ans"))
    reply.apply(Retrying(JOB, attempt=2, message="The engine stopped; it will run again shortly."))
    view = reply.view()
    assert "half an ans" not in "".join(view.messages) and "first thoughts" not in "".join(view.messages)
    assert view.status == "The engine stopped; it will run again shortly."
    reply.apply(TextDelta(JOB, text="A whole answer."))
    assert reply.view().messages[0].startswith("A whole answer.")


def test_picture_notes_are_kept_once() -> None:
    """The core tells a failed picture twice (ImageFailed, then TurnDone's note) and a
    refused one as a status then a note: each shows once, and stays."""
    failed = LiveReply(limit=200)
    failed.apply(ReplyDone(JOB, text="Here you go."))
    failed.apply(ImageFailed("pic1", message="The picture was cancelled.", error_kind="cancelled"))
    failed.apply(TurnDone(JOB, text="Here you go.", image_job_id="pic1", note="The picture was cancelled."))
    assert failed.view().messages == ("Here you go.\n\n🚫 The picture was cancelled.",)
    refused = LiveReply(limit=200)
    refused.apply(ReplyDone(JOB, text="Sure."))
    refused.apply(Status(JOB, text="No picture this time: limit reached"))
    assert refused.view().messages == ("Sure.\n\nNo picture this time: limit reached",)
    refused.apply(TurnDone(JOB, text="Sure.", note="No picture this time: limit reached"))
    view = refused.view()
    assert view.messages == ("Sure.\n\nℹ️ No picture this time: limit reached",)
    assert view.notes == ("ℹ️ No picture this time: limit reached",) and view.status is None


@pytest.mark.parametrize("limit", [4096, 2000])
async def test_long_answer_streams_without_reediting_finished_messages(limit: int) -> None:
    answer = paragraphs_text(seed=3, size=10_000)
    pieces = [answer[i : i + 37] for i in range(0, len(answer), 37)]
    steps: list[tuple[float, TurnEvent]] = [(k * 0.05, TextDelta(JOB, text=p)) for k, p in enumerate(pieces)]
    end = len(pieces) * 0.05
    steps += [(end, ReplyDone(JOB, text=answer)), (end, TurnDone(JOB, text=answer))]
    view, target = await render(steps, limit=limit, interval=1.0)

    created: set[int] = set()
    for call in target.shows():
        assert call.index + 1 not in created, f"message {call.index} edited after {call.index + 1} was sent"
        created.add(call.index)
    assert len({c.at for c in target.calls}) <= end / 1.0 + 2  # throttled: one push a second
    assert tuple(target.messages) == view.messages
    assert len(view.messages) >= 3
    assert no_space("".join(view.messages)) == no_space(answer)
    paragraphs = set(answer.split("\n\n"))
    assert all(set(m.split("\n\n")) <= paragraphs for m in view.messages)


@pytest.mark.parametrize("show", [True, False])
async def test_reasoning_is_shown_only_when_asked(show: bool) -> None:
    steps: list[tuple[float, TurnEvent]] = [
        (0, Thinking(JOB)),
        (0.5, ReasoningDelta(JOB, text="Let me think.\n")),
        (1.5, ReasoningDelta(JOB, text="OK.")),
        (3, TextDelta(JOB, text="Answer.")),
        (4, ReplyDone(JOB, text="Answer.")),
        (4, TurnDone(JOB, text="Answer.", reasoning="Let me think.\nOK.")),
    ]
    view, target = await render(steps, show_reasoning=show)
    if show:
        assert view.messages == ("> Let me think.\n> OK.\n\nAnswer.",)
        assert "> Let me think.\n\n💭 Thinking…" in [c.text for c in target.shows()]
    else:
        assert view.messages == ("Answer.",)
        assert not any("think." in c.text for c in target.shows())


@pytest.mark.parametrize(
    "terminal, outcome, tail, error",
    [
        (TurnFailed(JOB, message="The model crashed."), "failed", "⚠️ The model crashed.", "The model crashed."),
        (TurnFailed(JOB), "failed", "⚠️ Something went wrong.", "Something went wrong."),
        (TurnCancelled(JOB), "cancelled", "🚫 Cancelled.", None),
        (TurnInterrupted(JOB, message=RESTART), "interrupted", f"⏸️ {RESTART}", None),
    ],
)
async def test_end_states(terminal: TurnEvent, outcome: str, tail: str, error: str | None) -> None:
    steps: list[tuple[float, TurnEvent]] = [(0, TextDelta(JOB, text="Partial answer")), (3, terminal)]
    view, target = await render(steps)
    assert view.final and view.outcome == outcome and view.error == error and view.status is None
    assert view.messages == (f"Partial answer\n\n{tail}",)
    assert target.messages == list(view.messages)
    bare, _ = await render([(0, Queued(JOB, position=2, eta_s=30)), (1, terminal)])
    assert bare.messages == (tail,)


async def test_retry_later_backs_off_then_pushes_the_latest_state() -> None:
    time = VirtualTime()
    target = RecordingTarget(time, 4096, retry={1: 3.0})
    steps: list[tuple[float, TurnEvent]] = [
        (0, TextDelta(JOB, text="a")),
        (1.5, TextDelta(JOB, text="b")),
        (2, TextDelta(JOB, text="c")),
        (3, ReplyDone(JOB, text="abc")),
        (3, TurnDone(JOB, text="abc")),
    ]
    view, _ = await render(steps, target=target)
    assert [(c.at, c.op, c.text) for c in target.calls] == [
        (0, "show", "a\n\n✍️ Writing…"),
        (1.5, "retry", "ab\n\n✍️ Writing…"),
        (4.5, "show", "abc"),
    ]
    assert view.final and target.messages == ["abc"]


async def test_retry_later_on_the_final_state_and_the_picture() -> None:
    time = VirtualTime()
    target = RecordingTarget(time, 4096, retry={1: 5.0, 2: 0.5, 4: 2.0})
    image = ImageReady(JOB, image_id="img1")
    steps: list[tuple[float, TurnEvent]] = [(0, TextDelta(JOB, text="Hello")), (0.5, image), (0.5, TurnDone(JOB, text="Hello"))]
    await render(steps, target=target)
    assert [(c.at, c.op) for c in target.calls] == [
        (0, "show"),
        (1.0, "retry"),  # the final state: wait 5 s
        (6.0, "retry"),  # again: wait the interval, not less
        (7.0, "show"),
        (8.0, "retry"),  # the picture: wait 2 s, then send it anyway
        (10.0, "image"),
    ]
    assert target.messages == ["Hello"]


async def test_the_status_line_never_makes_a_message_exceed_the_limit() -> None:
    limit = 120
    for length in range(0, 400, 7):
        reply = LiveReply(limit=limit)
        reply.apply(TextDelta(JOB, text=("word " * 100)[:length]))
        reply.apply(Status(JOB, text="No picture this time: " + "very long reason " * 20))
        view = reply.view()
        assert all(len(m) <= limit for m in view.messages)
        assert view.status is not None and view.messages[-1].endswith(view.status)
        assert view.status.endswith("…") and len(view.status) <= limit // 4
        reply.apply(TurnDone(JOB, text=("word " * 100)[:length], note="No picture this time: " + "reason " * 40))
        final = reply.view()
        assert all(len(m) <= limit for m in final.messages)
        assert "".join(final.messages).count("reason") == 40  # the note is kept whole
    steps: list[tuple[float, TurnEvent]] = [(k * 0.3, TextDelta(JOB, text="abcdefghij" * 3)) for k in range(20)]
    steps += [(k * 0.3 + 0.1, ImageProgress(JOB, step=k, total=20)) for k in range(20)]
    await render(sorted(steps, key=lambda s: s[0]), limit=limit)  # the target checks every length


async def test_an_empty_answer_never_produces_an_empty_message() -> None:
    assert LiveReply(limit=100).view().messages == ()
    quiet = LiveReply(limit=100)
    quiet.apply(ReasoningDelta(JOB, text="hidden"))
    assert quiet.view().messages == ("💭 Thinking…",), "hidden reasoning shows only that it thinks"
    steps: list[tuple[float, TurnEvent]] = [
        (0, Queued(JOB, position=1, eta_s=3)),
        (1, Started(JOB)),
        (2, TextDelta(JOB, text="")),
        (3, TextDelta(JOB, text="  \n")),
        (4, ReplyDone(JOB, text="")),
        (5, TurnDone(JOB, text="")),
    ]
    view, target = await render(steps)
    assert view.messages == ("🤷 (no answer)",)
    assert all(c.text.strip() for c in target.shows())


async def test_a_shorter_final_reply_removes_the_surplus_messages() -> None:
    streamed = "x" * 250
    steps: list[tuple[float, TurnEvent]] = [
        (0, TextDelta(JOB, text=streamed)),
        (1, ReplyDone(JOB, text="Short.")),
        (1, TurnDone(JOB, text="Short.")),
    ]
    view, target = await render(steps, limit=100)
    assert [(c.op, c.index) for c in target.calls] == [
        ("show", 0), ("show", 1), ("show", 2), ("show", 3), ("show", 0), ("delete", 3), ("delete", 2), ("delete", 1),
    ]  # fmt: skip
    assert target.messages == ["Short."] and view.messages == ("Short.",)


async def test_what_is_already_shown_is_not_sent_again() -> None:
    time = VirtualTime()
    target = RecordingTarget(time, 4096, messages=["⏳ Queued: #3, ~40 s"])
    steps: list[tuple[float, TurnEvent]] = [(0, Queued(JOB, position=3, eta_s=40)), (1, TurnCancelled(JOB))]
    view = await time.run(
        render_live(
            timed(time, steps), target, limit=4096, min_interval_s=1.0, clock=time.clock, sleep=time.sleep,
            shown=["⏳ Queued: #3, ~40 s"],
        )
    )  # fmt: skip
    assert [(c.at, c.text) for c in target.shows()] == [(1, "🚫 Cancelled.")]
    assert view.outcome == "cancelled"


async def test_a_target_error_propagates_and_closes_the_stream() -> None:
    time = VirtualTime()
    target = RecordingTarget(time, 4096, error=RuntimeError("chat not found"))
    closed: list[bool] = []
    steps = [(0.0, TextDelta(JOB, text="hi")), (60.0, TurnDone(JOB, text="hi"))]
    with pytest.raises(RuntimeError, match="chat not found"):
        await time.run(
            render_live(timed(time, steps, closed), target, limit=4096, min_interval_s=1.0, clock=time.clock, sleep=time.sleep)
        )
    assert closed == [True] and time.now < 60


async def test_a_stream_error_propagates() -> None:
    time = VirtualTime()

    async def broken() -> AsyncIterator[TurnEvent]:
        yield TextDelta(JOB, text="hi")
        await time.sleep(2)
        raise ConnectionError("lost the core")

    target = RecordingTarget(time, 4096)
    with pytest.raises(ConnectionError):
        await time.run(render_live(broken(), target, limit=4096, min_interval_s=1.0, clock=time.clock, sleep=time.sleep))
    assert target.messages == ["hi\n\n✍️ Writing…"]


async def test_a_stream_that_ends_without_a_terminal_returns_its_last_state() -> None:
    steps: list[tuple[float, TurnEvent]] = [(0, TextDelta(JOB, text="a")), (0.2, TextDelta(JOB, text="b"))]
    view, target = await render(steps)
    assert not view.final and view.messages == ("ab\n\n✍️ Writing…",)
    assert [(c.at, c.text) for c in target.shows()] == [(0, "a\n\n✍️ Writing…"), (1.0, "ab\n\n✍️ Writing…")]


def test_no_platform_library_is_imported() -> None:
    """The shared renderer must stay importable by every adapter (and testable) without
    any platform's library."""
    code = (
        "import sys, ovbot.adapters.common\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'telegram', 'discord', 'fastapi', 'starlette'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
