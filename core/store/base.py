"""The store interface the core depends on. The embedded implementation is SQLite
(``ovbot.core.store.sqlite``); a PostgreSQL one can replace it without touching the
chat service or the queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ovbot.core.domain import (
    ChatRef,
    ImageRecord,
    Job,
    JobState,
    LimitOverride,
    Turn,
    UserRef,
)


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What a chat chose for itself, as stored; ``None``: the bot's default."""

    persona: str | None = None
    reasoning_mode: str | None = None
    image_defaults: dict[str, Any] | None = None


class Store(Protocol):
    # ---------------------------------------------------------------- lifecycle
    async def initialize(self) -> None:
        """Open, apply pending schema migrations (versioned), ready to use."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the database answers and accepts writes (for /ready)."""

    # ---------------------------------------------------------------- users, admins
    async def upsert_user(self, user: UserRef) -> None: ...

    async def add_admin(self, user_key: str) -> None: ...

    async def remove_admin(self, user_key: str) -> None: ...

    async def is_admin(self, user_key: str) -> bool: ...

    async def list_admins(self) -> list[str]:
        """Admins added at run time (the configured ones are not stored)."""

    async def block_user(self, user_key: str, blocked_by: str) -> None: ...

    async def unblock_user(self, user_key: str) -> None: ...

    async def is_blocked(self, user_key: str) -> bool: ...

    async def list_blocked(self) -> list[str]: ...

    # ---------------------------------------------------------------- conversations
    async def active_conversation(self, chat: ChatRef) -> str:
        """The chat's current conversation id (created on first use)."""

    async def reset_conversation(self, chat: ChatRef, forget: bool) -> str:
        """Start a new conversation for the chat; ``forget`` deletes the old turns,
        otherwise they stay in the database but out of every prompt. Returns the new id."""

    async def set_persona(self, chat: ChatRef, persona: str | None) -> None: ...

    async def get_persona(self, chat: ChatRef) -> str | None: ...

    async def get_chat_options(self, chat: ChatRef) -> ChatOptions: ...

    async def set_reasoning_mode(self, chat: ChatRef, mode: str | None) -> None: ...

    async def set_image_defaults(self, chat: ChatRef, defaults: dict[str, Any] | None) -> None: ...

    async def recent_turns(self, conversation_id: str, limit: int) -> list[Turn]:
        """Up to ``limit`` most recent turns, oldest first."""

    # ---------------------------------------------------------------- jobs
    async def insert_job(self, job: Job, usage: Sequence[str] = ()) -> None:
        """Committed (durable) when this returns. ``usage``: limit kinds ("chat",
        "image") charged to the job's user at ``job.created_at`` in the same transaction,
        so a request is charged exactly when it is accepted."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def jobs_in_states(self, states: Sequence[JobState]) -> list[Job]:
        """Oldest first (created_at)."""

    async def claim_job(self, job_id: str, owner: str, lease_expires_at: float, now: float) -> Job | None:
        """Atomically move a queued job to running with a lease (attempts + 1); None if it
        was not queued any more (cancelled, claimed elsewhere)."""

    async def renew_lease(self, job_id: str, owner: str, lease_expires_at: float) -> bool: ...

    async def requeue_expired(self, now: float) -> list[str]:
        """Running jobs whose lease expired go back to queued (at-least-once)."""

    async def lease_owners(self) -> list[str]:
        """The distinct owners of running jobs' leases (to find dead ones)."""

    async def requeue_owned(self, owners: Sequence[str]) -> list[str]:
        """Running jobs leased by ``owners`` (processes known dead) go back to queued
        now, without waiting for expiry. Their ids, oldest first."""

    async def finish_job(self, job: Job, turns: Sequence[Turn] = (), *, refund_usage: bool = False) -> None:
        """Write the job's terminal state, result/error and the conversation turns it
        produced in ONE transaction: a turn is never stored without its job or lost.
        ``refund_usage`` also removes what ``insert_job`` charged for it (a job that
        never started)."""

    async def update_job(self, job: Job) -> None:
        """Persist state/attempts/lease/timestamps/result/error as they are. ``delivery``
        is written only by ``record_delivery``, so writing a job back never erases it."""

    async def record_delivery(self, job_id: str, key: str, value: object) -> None:
        """Remember where a result was posted (idempotent delivery across restarts)."""

    async def mark_delivered(self, job_id: str, at: float) -> None:
        """The adapter posted the job's final reply (NotFound for an unknown job)."""

    async def undelivered_jobs(self, platform: str, since: float) -> list[Job]:
        """Jobs of chats on ``platform`` created since ``since``, not marked delivered
        and not cancelled, oldest first."""

    # ---------------------------------------------------------------- platform updates
    async def remember_updates(self, platform: str, items: Sequence[tuple[int, str]], at: float) -> list[int]:
        """Store each ``(update_id, payload JSON)`` not stored yet, in one transaction,
        committed on return; the ids that were new (the others are duplicates)."""

    async def unhandled_updates(self, platform: str) -> list[tuple[int, str]]:
        """Stored updates not marked handled, as ``(update_id, payload)``, in id order."""

    async def count_update_attempt(self, platform: str, update_id: int) -> int:
        """One more try at handling a stored, unhandled update, committed on return; the
        tries so far including this one (0: no such unhandled update)."""

    async def mark_update_handled(
        self, platform: str, update_id: int, at: float, *, replies: str | None = None, abandoned: bool = False
    ) -> None:
        """Handled (``abandoned``: given up after too many tries), together with the
        one-off ``replies`` still to send (adapter JSON), in one commit."""

    async def unsent_replies(self, platform: str) -> list[tuple[int, str]]:
        """``(update_id, replies)`` of handled updates whose replies were not sent yet."""

    async def mark_replies_sent(self, platform: str, update_id: int) -> None: ...

    async def prune_updates(self, before: float) -> int:
        """Delete updates handled before ``before``; how many."""

    # ---------------------------------------------------------------- images
    async def save_image(self, job_id: str | None, user_key: str, png: bytes, params: dict) -> ImageRecord:
        """PNG file on disk under the data dir + a metadata row."""

    async def get_image(self, image_id: str) -> ImageRecord | None: ...

    # ---------------------------------------------------------------- limits, usage
    async def get_limit_override(self, user_key: str) -> LimitOverride | None: ...

    async def set_limit_override(self, override: LimitOverride) -> None: ...

    async def delete_limit_override(self, user_key: str) -> None: ...

    async def record_usage(self, user_key: str, kind: str, at: float) -> None: ...

    async def usage_times(self, user_key: str, kind: str, since: float) -> list[float]:
        """Timestamps of usage events since ``since``, oldest first."""
