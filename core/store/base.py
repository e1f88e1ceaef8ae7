"""The store interface the core depends on. The embedded implementation is SQLite
(``ovbot.core.store.sqlite``); a PostgreSQL one can replace it without touching the
chat service or the queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ovbot.core.domain import (
    ChatRef,
    ImageRecord,
    Job,
    JobState,
    LimitOverride,
    Turn,
    UserRef,
)


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

    # ---------------------------------------------------------------- conversations
    async def active_conversation(self, chat: ChatRef) -> str:
        """The chat's current conversation id (created on first use)."""

    async def reset_conversation(self, chat: ChatRef, forget: bool) -> str:
        """Start a new conversation for the chat; ``forget`` deletes the old turns,
        otherwise they stay in the database but out of every prompt. Returns the new id."""

    async def set_persona(self, chat: ChatRef, persona: str | None) -> None: ...

    async def get_persona(self, chat: ChatRef) -> str | None: ...

    async def recent_turns(self, conversation_id: str, limit: int) -> list[Turn]:
        """Up to ``limit`` most recent turns, oldest first."""

    # ---------------------------------------------------------------- jobs
    async def insert_job(self, job: Job) -> None:
        """Committed (durable) when this returns."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def jobs_in_states(self, states: Sequence[JobState]) -> list[Job]:
        """Oldest first (created_at)."""

    async def claim_job(self, job_id: str, owner: str, lease_expires_at: float, now: float) -> Job | None:
        """Atomically move a queued job to running with a lease (attempts + 1); None if it
        was not queued any more (cancelled, claimed elsewhere)."""

    async def renew_lease(self, job_id: str, owner: str, lease_expires_at: float) -> bool: ...

    async def requeue_expired(self, now: float) -> list[str]:
        """Running jobs whose lease expired go back to queued (at-least-once)."""

    async def finish_job(self, job: Job, turns: Sequence[Turn] = ()) -> None:
        """Write the job's terminal state, result/error and the conversation turns it
        produced in ONE transaction: a turn is never stored without its job or lost."""

    async def update_job(self, job: Job) -> None:
        """Persist state/attempts/lease/timestamps/result/error as they are. ``delivery``
        is written only by ``record_delivery``, so writing a job back never erases it."""

    async def record_delivery(self, job_id: str, key: str, value: object) -> None:
        """Remember where a result was posted (idempotent delivery across restarts)."""

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
