"""What the messages of one reply say at a given moment: a fold over the turn's events.

``LiveReply`` turns the typed events of one turn (``ovbot.core.turns``) into a
``ReplyView``: the texts of the messages that make up the reply, ready to send. Every
platform that edits its messages in place shows the same states, so the wording lives
here, once, and the platform adapters only deliver texts.

The layout: the body (the reasoning, quoted, when asked for; then the answer) is split
into messages with ``split_message``; a trailer goes at the end of the last message:
while the turn runs, one status line (queued, thinking, picture step N/M, ...); at the
end, the notes that stay (a picture that failed, the turn's note, the error). The body
is split with room kept for the longest status line, so the status always fits beside
the text and never needs a message of its own that would have to vanish again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ovbot.adapters.common.split import Measure, split_message
from ovbot.core.durations import duration_text
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

#: how the turn ended, as far as this stream tells; "interrupted" is a terminal of the
#: stream but not of the turn: the adapter resumes it after the restart
Outcome = Literal["running", "done", "failed", "cancelled", "interrupted"]

# User-facing texts.
STARTING = "⚙️ Starting…"
THINKING = "💭 Thinking…"
WRITING = "✍️ Writing…"
PICTURE_STARTING = "🎨 Picture: starting…"
PICTURE_DRAWING = "🎨 Picture: drawing…"
PICTURE_READY = "🎨 Picture: ready"
CANCELLED = "🚫 Cancelled."
FAILED = "Something went wrong."
INTERRUPTED = "The bot is restarting; this reply will continue when it is back."
PICTURE_ONLY = "🎨 Here is your picture."
NO_ANSWER = "🤷 (no answer)"
#: between the text and the trailer
SEPARATOR = "\n\n"
#: each line of the reasoning starts with this, so it reads as a quote
REASONING_PREFIX = "> "
#: the longest status line; longer ones are shortened (at most a quarter of the limit)
STATUS_ROOM = 100
PROGRESS_CELLS = 10
#: the smallest message limit the layout works with
MIN_LIMIT = 40


@dataclass(frozen=True, slots=True)
class ReplyView:
    """The reply as it should look now.

    ``messages`` are the texts of the messages the reply consists of (never empty or
    blank, each within the limit): the first is edited in place, later ones are sent as
    continuations. ``status`` is the status line included at the end of the last
    message while the turn runs (None once final). ``notes`` are the lines that stay at
    the end. ``image`` is the picture, once ready. ``final`` is True once the stream has
    ended (``outcome`` says how); ``error`` is the failure's message.
    """

    messages: tuple[str, ...]
    status: str | None
    notes: tuple[str, ...]
    image: ImageReady | None
    outcome: Outcome
    error: str | None

    @property
    def final(self) -> bool:
        return self.outcome != "running"


class LiveReply:
    """Folds the events of one turn, in order, into the current ``ReplyView``.

    ``apply`` is cheap (it only records); ``view`` does the layout, so a throttled
    driver pays for splitting only when it actually pushes a state.
    """

    def __init__(self, *, limit: int, measure: Measure = len, show_reasoning: bool = False) -> None:
        if limit < MIN_LIMIT:
            raise ValueError(f"limit must be at least {MIN_LIMIT} (got {limit})")
        self._limit = limit
        self._measure = measure
        self._show_reasoning = show_reasoning
        self._status_room = min(STATUS_ROOM, limit // 4)
        #: the body is split this narrow so the status line always fits beside it
        self._body_limit = limit - self._status_room - measure(SEPARATOR)
        self._answer: list[str] = []
        self._reasoning: list[str] = []
        self._status: str | None = None
        #: raw note text -> the line shown (raw text dedupes the same note told twice)
        self._notes: dict[str, str] = {}
        self._image: ImageReady | None = None
        self._image_jobs: set[str] = set()
        self._reply_done = False
        self._outcome: Outcome = "running"
        self._error: str | None = None
        self._applied = 0

    def apply(self, event: TurnEvent) -> None:
        """Fold one event. Events after a terminal one are ignored: the stream is over."""
        if self._outcome != "running":
            return
        self._applied += 1
        if isinstance(event, Queued):
            self._status = queued_status(event.position, event.eta_s)
        elif isinstance(event, Started):
            picture = event.job_id in self._image_jobs or self._reply_done
            self._status = PICTURE_STARTING if picture else STARTING
        elif isinstance(event, Thinking):
            self._status = THINKING
        elif isinstance(event, Retrying):  # the run starts over: what it wrote is void
            self._answer.clear()
            self._reasoning.clear()
            self._status = " ".join(event.message.split()) or STARTING
        elif isinstance(event, Status):
            self._status = " ".join(event.text.split()) or self._status
        elif isinstance(event, ReasoningDelta):
            self._status = THINKING  # hidden or not, the model is reasoning
            if self._show_reasoning:
                self._reasoning.append(event.text)
        elif isinstance(event, TextDelta):
            self._answer.append(event.text)
            self._status = WRITING
        elif isinstance(event, ReplyDone):
            self._answer = [event.text]
            self._reply_done = True
            self._status = None
        elif isinstance(event, ImageQueued):
            self._image_jobs.add(event.job_id)
            self._status = picture_queued_status(event.position, event.eta_s)
        elif isinstance(event, ImageProgress):
            self._status = progress_status(event.step, event.total)
        elif isinstance(event, ImageReady):
            self._image = event
            self._status = PICTURE_READY
        elif isinstance(event, ImageFailed):
            self._status = None
            self._add_note(event.message, picture_failed_note(event.message, event.error_kind))
        elif isinstance(event, TurnDone):
            self._finish_done(event)
        elif isinstance(event, TurnFailed):
            self._outcome = "failed"
            self._error = event.message or FAILED
        elif isinstance(event, TurnCancelled):
            self._outcome = "cancelled"
        elif isinstance(event, TurnInterrupted):
            self._outcome = "interrupted"
            self._add_note(event.message or INTERRUPTED, f"⏸️ {event.message or INTERRUPTED}")

    def _finish_done(self, event: TurnDone) -> None:
        if event.text:  # authoritative; "" is a bare /imagine, which has no text
            self._answer = [event.text]
        if self._show_reasoning and event.reasoning and not "".join(self._reasoning).strip():
            self._reasoning = [event.reasoning]
        if event.note:
            self._add_note(event.note, f"ℹ️ {event.note}")
        self._outcome = "done"

    def _add_note(self, raw: str, line: str) -> None:
        self._notes.setdefault(raw, line)

    def view(self) -> ReplyView:
        body = self._body()
        status = None if self._outcome != "running" else self._running_status(body)
        notes = tuple(self._notes.values())
        return ReplyView(
            messages=self._layout(body, self._trailer(body, status, notes)),
            status=status,
            notes=notes,
            image=self._image,
            outcome=self._outcome,
            error=self._error,
        )

    def _running_status(self, body: str) -> str | None:
        status = self._status
        if status is None and self._applied and not body:
            status = STARTING  # something happened: never show nothing at all
        return None if status is None else _shorten(status, self._status_room, self._measure)

    def _body(self) -> str:
        """Reasoning (quoted) then answer. Appending to either only appends to the body
        (the reasoning is complete once the answer starts), so streaming stays
        prefix-stable across the split."""
        parts: list[str] = []
        reasoning = "".join(self._reasoning).strip()
        if reasoning:
            parts.append(REASONING_PREFIX + reasoning.replace("\n", "\n" + REASONING_PREFIX))
        answer = "".join(self._answer)
        if answer.strip():
            parts.append(answer)
        return SEPARATOR.join(parts)

    def _trailer(self, body: str, status: str | None, notes: tuple[str, ...]) -> str:
        if self._outcome == "running":
            return status or ""
        lines = list(notes)
        if self._outcome == "failed":
            lines.append(f"⚠️ {self._error}")
        elif self._outcome == "cancelled":
            lines.append(CANCELLED)
        elif not lines and not body:
            lines.append(PICTURE_ONLY if self._image is not None else NO_ANSWER)
        return "\n".join(lines)

    def _layout(self, body: str, trailer: str) -> tuple[str, ...]:
        chunks = split_message(body, self._body_limit, measure=self._measure)
        if trailer:
            measure = self._measure
            if chunks and measure(chunks[-1]) + measure(SEPARATOR) + measure(trailer) <= self._limit:
                chunks[-1] = chunks[-1] + SEPARATOR + trailer
            else:
                chunks.extend(split_message(trailer, self._limit, measure=measure))
        return tuple(chunks)


# ---------------------------------------------------------------- status texts


def format_eta(seconds: float) -> str | None:
    """``~40 s``, ``~3 min``, ``~1 h 20 min`` (the core's wording); None when unknown."""
    return None if seconds <= 0 else f"~{duration_text(seconds)}"


def queued_status(position: int, eta_s: float) -> str:
    """``⏳ Queued: #3, ~40 s`` (position 1 is next)."""
    eta = format_eta(eta_s)
    return f"⏳ Queued: #{position}" + (f", {eta}" if eta else "")


def picture_queued_status(position: int, eta_s: float) -> str:
    eta = format_eta(eta_s)
    return f"🎨 Picture: queued #{position}" + (f", {eta}" if eta else "")


def progress_bar(step: int, total: int, cells: int = PROGRESS_CELLS) -> str:
    """``▰▰▰▱▱▱▱▱▱▱``: full cells round down, so the bar is full only when done."""
    filled = 0 if total <= 0 else min(cells, max(0, step) * cells // total)
    return "▰" * filled + "▱" * (cells - filled)


def progress_status(step: int, total: int) -> str:
    """``🎨 Picture: step 3/20 ▰▱▱▱▱▱▱▱▱▱``."""
    if total <= 0:
        return PICTURE_DRAWING
    step = min(max(step, 0), total)
    return f"🎨 Picture: step {step}/{total} {progress_bar(step, total)}"


def picture_failed_note(message: str, error_kind: str) -> str:
    if error_kind == "cancelled":
        return f"🚫 {message or 'The picture was cancelled.'}"
    return f"⚠️ No picture: {message}" if message else "⚠️ The picture could not be made."


def _shorten(text: str, room: int, measure: Measure) -> str:
    if measure(text) <= room:
        return text
    while text and measure(text + "…") > room:
        text = text[:-1]
    return text.rstrip() + "…"
