"""What adapters receive about one user turn: typed reply events and views.

A turn is what a user sees as one request: a chat message (and the picture its answer
asks for) or one ``/imagine``. Internally that may be two queued jobs; adapters only
ever see one stream of these events, ending with exactly one terminal event
(``TurnDone``, ``TurnFailed``, ``TurnCancelled`` or ``TurnInterrupted``).

Every event is a frozen dataclass with a ``kind`` literal, so an adapter can ``match``
on the class and a serializer can use ``kind`` as a wire name. ``seq`` numbers the
events of one turn from 1 in a deterministic order (the chat job's events, then its
picture's), so a client that reconnects can skip what it already saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from ovbot.core.domain import ChatRef, ImageParams, JobKind, JobState, UserRef

ReasoningMode = Literal["off", "short", "full"]
REASONING_MODES: tuple[ReasoningMode, ...] = ("off", "short", "full")


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """Base of every reply event. ``job_id`` is the job the event is about (the chat
    job, or the picture job for image events)."""

    job_id: str
    seq: int = 0
    kind: ClassVar[str] = "event"
    terminal: ClassVar[bool] = False

    def payload(self) -> dict[str, Any]:
        """The event's own fields (not job_id/seq), for serializers."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("job_id", "seq")}


@dataclass(frozen=True, slots=True)
class Queued(TurnEvent):
    """Waiting in line: ``position`` 1 is next; ``eta_s`` until it is expected to start."""

    position: int = 1
    eta_s: float = 0.0
    kind: ClassVar[str] = "queued"


@dataclass(frozen=True, slots=True)
class Started(TurnEvent):
    """The job left the queue and runs now."""

    kind: ClassVar[str] = "started"


@dataclass(frozen=True, slots=True)
class Retrying(TurnEvent):
    """The engine lost this job's run (its worker restarted): the job runs again from
    the start, so text and progress streamed so far are void."""

    attempt: int = 1
    message: str = ""
    kind: ClassVar[str] = "retrying"


@dataclass(frozen=True, slots=True)
class Thinking(TurnEvent):
    """The model reasons before it answers (sent once per answer)."""

    kind: ClassVar[str] = "thinking"


@dataclass(frozen=True, slots=True)
class Status(TurnEvent):
    """A short human-readable status line (e.g. a note that no picture will follow)."""

    text: str = ""
    kind: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class ReasoningDelta(TurnEvent):
    """A piece of the model's reasoning; only sent when the user asked to see it."""

    text: str = ""
    kind: ClassVar[str] = "reasoning"


@dataclass(frozen=True, slots=True)
class TextDelta(TurnEvent):
    """A piece of the answer; the concatenation of all deltas is the reply."""

    text: str = ""
    kind: ClassVar[str] = "text"


@dataclass(frozen=True, slots=True)
class ReplyDone(TurnEvent):
    """The text of the reply is complete (and stored); when ``image_job_id`` is set,
    the picture the answer asked for follows."""

    text: str = ""
    reasoning: str | None = None
    image_job_id: str | None = None
    note: str | None = None
    kind: ClassVar[str] = "reply_done"


@dataclass(frozen=True, slots=True)
class ImageQueued(TurnEvent):
    """A picture job is in line (``job_id`` is the picture job)."""

    position: int = 1
    eta_s: float = 0.0
    kind: ClassVar[str] = "image_queued"


@dataclass(frozen=True, slots=True)
class ImageProgress(TurnEvent):
    step: int = 0
    total: int = 0
    kind: ClassVar[str] = "image_progress"


@dataclass(frozen=True, slots=True)
class ImageReady(TurnEvent):
    """The picture is stored; fetch it with ``Bot.image(job_id, requester)``."""

    image_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "image_ready"


@dataclass(frozen=True, slots=True)
class ImageFailed(TurnEvent):
    """The picture could not be made; the turn's text reply still stands."""

    message: str = ""
    error_kind: str = "error"
    kind: ClassVar[str] = "image_failed"


@dataclass(frozen=True, slots=True)
class TurnDone(TurnEvent):
    """The turn ended well. ``text`` is the whole reply ("" for a bare /imagine);
    ``image_job_id`` names the picture job when there was one (see ``ImageReady`` /
    ``ImageFailed`` for how it went)."""

    text: str = ""
    reasoning: str | None = None
    image_job_id: str | None = None
    image_id: str | None = None
    note: str | None = None
    kind: ClassVar[str] = "done"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class TurnFailed(TurnEvent):
    message: str = ""
    error_kind: str = "error"
    kind: ClassVar[str] = "failed"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class TurnCancelled(TurnEvent):
    kind: ClassVar[str] = "cancelled"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class TurnInterrupted(TurnEvent):
    """The bot is stopping; the turn is saved and runs again after the restart
    (resume it with ``Bot.resume(job_id, requester)``)."""

    message: str = ""
    kind: ClassVar[str] = "interrupted"
    terminal: ClassVar[bool] = True


# ---------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One job as its owner (or an admin) may see it."""

    job_id: str
    kind: JobKind
    state: JobState
    user: UserRef
    chat: ChatRef
    #: 1 = next to run, 0 = running; None once finished
    position: int | None
    eta_s: float | None
    #: image steps so far while a picture job runs
    progress_step: int | None
    progress_total: int | None
    #: chat: the reply text; image: None
    text: str | None
    reasoning: str | None
    #: chat: the picture job its answer asked for; image: its own id
    image_job_id: str | None
    #: image: the stored picture, once done
    image_id: str | None
    image_params: dict[str, Any] | None
    note: str | None
    error_kind: str | None
    error_message: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class ImageFile:
    """A stored picture: PNG bytes on disk (its parameters are in its text chunks)."""

    image_id: str
    job_id: str | None
    path: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """What a chat has chosen for itself; ``None`` fields use the bot's defaults."""

    persona: str | None
    reasoning: ReasoningMode
    image_defaults: ImageParams | None


@dataclass(frozen=True, slots=True)
class UndeliveredTurn:
    """A turn posted to a platform whose reply has not been marked delivered: finished
    while the adapter was down, or still running. ``delivery`` is what the adapter
    recorded so far (e.g. the id of the message it was editing)."""

    job_id: str
    kind: JobKind
    state: JobState
    user: UserRef
    chat: ChatRef
    delivery: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One limit as it applies to one user now; ``limit`` None: unlimited (admins)."""

    limit: int | None
    window_s: float
    used: int
    remaining: int | None
    reset_in_s: float | None
    overridden: bool


@dataclass(frozen=True, slots=True)
class UsageReport:
    user_key: str
    admin: bool
    chat: LimitUsage
    image: LimitUsage
    #: admin views only: the user's overrides (None: none) and the configured defaults
    override_chat_per_window: int | None = None
    override_images_per_day: int | None = None
    default_chat_per_window: int | None = None
    default_images_per_day: int | None = None
