"""Domain types shared by the chat service, the job queue, the store and the adapters.

Platform-neutral: a Telegram user, a Discord member and an HTTP API client are all a
``UserRef``; a Telegram chat, a Discord channel and an HTTP conversation are a ``ChatRef``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from ovbot.core.engines.types import ImageRequest
from ovbot.core.text import repaired


class JobKind(str, Enum):
    CHAT = "chat"
    IMAGE = "image"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class UserRef:
    """``roles`` are the roles the platform says the user holds where they ask (a
    Discord member's guild roles), for role allow-lists; like ``ChatRef.parent_id``
    they are not part of the user's identity and are not stored."""

    platform: str  # "http", "telegram", "discord", "cli"
    user_id: str
    display_name: str = ""
    roles: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        # the platform's name for the user lands in the store and in prompts: a broken
        # one (a lone surrogate) is repaired here, once, rather than failing there
        object.__setattr__(self, "display_name", repaired(self.display_name))

    @property
    def key(self) -> str:
        """Stable identity across restarts, e.g. ``telegram:123`` (also the admin syntax)."""
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True, slots=True)
class ChatRef:
    """``parent_id`` names what contains the chat where a platform has that (a Discord
    guild): allow-lists may name it instead of every channel. It is not part of the
    chat's identity and is not stored."""

    platform: str
    chat_id: str
    parent_id: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.chat_id}"


#: What a user may ask for in a picture (unset fields take the configured defaults):
#: the engine's own request type, so parameters and their checks are defined once.
ImageParams = ImageRequest


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class Job:
    """A unit of work in the durable queue.

    ``payload`` for chat: ``{"message": str, "image": ImageParams dict | None,
    "show_reasoning": bool}``; for image: ``{"image": ImageParams dict,
    "parent_job_id": str | None}``. ``result`` for chat: ``{"text", "reasoning"?,
    "image_job_id"?}``; for image: ``{"image_id", "params"}``. ``delivery`` records where
    an adapter posted the result, so a replay after a restart never posts twice.
    """

    kind: JobKind
    user: UserRef
    chat: ChatRef
    conversation_id: str
    payload: dict[str, Any]
    id: str = field(default_factory=new_id)
    state: JobState = JobState.QUEUED
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    delivery: dict[str, Any] = field(default_factory=dict)


TurnRole = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation. Assistant turns hold only the answer: reasoning is
    never stored, so it can never be replayed into a later prompt."""

    conversation_id: str
    role: TurnRole
    content: str
    job_id: str | None = None
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    job_id: str | None
    user_key: str
    path: str  # PNG on disk under the data dir
    params: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """Per-user limits set by an admin; ``None`` fields fall back to the defaults."""

    user_key: str
    chat_per_window: int | None = None
    images_per_day: int | None = None


EventType = Literal[
    "queued",  # accepted; data: position, eta_s
    "status",  # text: human status ("thinking", "generating image"); data: position/eta
    "reasoning",  # text: reasoning delta (only sent when the user asked for it)
    "text",  # text: answer delta
    "image_progress",  # data: step, total
    "image_queued",  # data: job_id of the image job a chat reply started
    "image_ready",  # data: image_id, url, params
    "done",  # data: the job's result
    "error",  # text: user-facing message; data: kind
    "cancelled",
]


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    job_id: str
    type: EventType
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    @property
    def terminal(self) -> bool:
        return self.type in ("done", "error", "cancelled")
