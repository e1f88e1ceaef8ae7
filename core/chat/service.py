"""The chat service: the one entry point adapters use to talk to the bot.

Submitting only validates, charges the user's limits and queues a durable job, so an
adapter answers at once and a restart loses nothing; the queue later runs the job with
``run_chat_job`` / ``run_image_job``. Reply text reaches users as events on the job.

``/reset`` while a reply is being written is kept simple: the running job keeps the
conversation it was queued in and stores its turns there, so they never show up in the
new one (after ``/reset forget`` the store drops them altogether).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ovbot.core.chat.answering import Answer, AnswerGenerator, AnswerSettings
from ovbot.core.chat.images import (
    ImageJobRunner,
    explicit_params,
    follow_up_job_id,
    follow_up_params,
    resolve_params,
)
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, ImageParams, Job, JobKind, Turn, UserRef
from ovbot.core.engines.base import Engines
from ovbot.core.engines.types import ChatMessage
from ovbot.core.errors import InvalidInput, OvbotError
from ovbot.core.jobs.base import EventSink, JobQueue
from ovbot.core.jobs.base import JobOutcome
from ovbot.core.prompts import PromptBuilder
from ovbot.core.store.base import Store
from ovbot.core.text import NOT_UNICODE, is_unicode
from ovbot.core.turns import REASONING_MODES, ReasoningMode


class Limits(Protocol):
    def admit(
        self, user: UserRef, kind: Literal["chat", "image"]
    ) -> AbstractAsyncContextManager[tuple[str, ...]]:
        """Raise RateLimited when ``user`` used up ``kind``; else yield the usage to charge
        with ``queue.submit(job, usage=...)`` (charged only if the queue accepts the job)."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The payload of a chat job, typed. The reasoning mode is fixed when the job is
    queued, so a job that runs again after a restart reasons the same way."""

    message: str
    image: ImageParams | None
    show_reasoning: bool
    reasoning: ReasoningMode = "full"

    def to_payload(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "image": None if self.image is None else self.image.to_dict(),
            "show_reasoning": self.show_reasoning,
            "reasoning": self.reasoning,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ChatRequest:
        image = payload.get("image")
        mode = payload.get("reasoning")
        return cls(
            message=str(payload["message"]),
            image=None if image is None else ImageParams.from_dict(image),
            show_reasoning=bool(payload.get("show_reasoning", False)),
            reasoning=mode if mode in REASONING_MODES else "full",
        )


class ChatService:
    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        engines: Engines,
        limits: Limits,
        prompts: PromptBuilder,
        settings: Settings,
        *,
        answers: AnswerSettings | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._engines = engines
        self._limits = limits
        self._prompts = prompts
        self._settings = settings
        self._answers = AnswerGenerator(engines.llm, answers or AnswerSettings.from_settings(settings))
        self._images = ImageJobRunner(engines.image, store)

    async def warm_up(self) -> None:
        """Prepare the engines for the first user (compile the answer grammar)."""
        await self._answers.warm_up()

    # ------------------------------------------------------------------ submitting
    async def submit_chat(
        self,
        user: UserRef,
        chat: ChatRef,
        message: str,
        image: ImageParams | None = None,
        show_reasoning: bool = False,
        reasoning: ReasoningMode | None = None,
    ) -> Job:
        """Queue one chat turn. Input is checked before any limit is charged: a typo
        must not cost a turn. Explicit image parameters are checked here too, so a bad
        size fails now rather than after the reply."""
        message = self._checked_message(message)
        if image is not None:
            image = explicit_params(image, message)
            resolve_params(image, self._engines.image)
        request = ChatRequest(message, image, show_reasoning, reasoning or self._settings.reasoning_mode)
        async with self._limits.admit(user, "chat") as usage:
            return await self._submit(JobKind.CHAT, user, chat, request.to_payload(), usage=usage)

    async def submit_image(
        self, user: UserRef, chat: ChatRef, params: ImageParams, parent_job_id: str | None = None
    ) -> Job:
        """Queue one image; BadParameter (before anything is queued or charged) names
        the field and the allowed range."""
        return await self._submit_image(user, chat, params, parent_job_id)

    async def _submit_image(
        self,
        user: UserRef,
        chat: ChatRef,
        params: ImageParams,
        parent_job_id: str | None,
        *,
        conversation_id: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        resolved = resolve_params(params, self._engines.image)
        payload = {"image": resolved.to_dict(), "parent_job_id": parent_job_id}
        async with self._limits.admit(user, "image") as usage:
            return await self._submit(
                JobKind.IMAGE, user, chat, payload, conversation_id=conversation_id, job_id=job_id, usage=usage
            )

    async def _submit(
        self,
        kind: JobKind,
        user: UserRef,
        chat: ChatRef,
        payload: dict[str, Any],
        *,
        conversation_id: str | None = None,
        job_id: str | None = None,
        usage: Sequence[str] = (),
    ) -> Job:
        await self._store.upsert_user(user)
        if conversation_id is None:
            conversation_id = await self._store.active_conversation(chat)
        job = Job(kind=kind, user=user, chat=chat, conversation_id=conversation_id, payload=payload)
        if job_id is not None:
            job.id = job_id
        return await self._queue.submit(job, usage=usage)

    def check_image(self, params: ImageParams) -> ImageParams:
        """``params`` resolved against the engine's limits (BadParameter otherwise)."""
        return resolve_params(params, self._engines.image)

    def _checked_message(self, message: str) -> str:
        text = message.strip()
        if not text:
            raise InvalidInput("message", "is empty; write something to send")
        if not is_unicode(text):
            raise InvalidInput("message", NOT_UNICODE)
        limit = self._settings.max_message_chars
        if len(text) > limit:
            raise InvalidInput("message", f"is {len(text)} characters long; the limit is {limit}")
        return text

    # ------------------------------------------------------------------ chat controls
    async def reset(self, user: UserRef, chat: ChatRef, forget: bool) -> None:
        """Start a new conversation; ``forget`` also deletes the old turns."""
        await self._store.upsert_user(user)
        await self._store.reset_conversation(chat, forget)

    async def set_persona(self, user: UserRef, chat: ChatRef, persona: str | None) -> None:
        """Set (or with None/blank clear) the chat's persona, added to the system prompt."""
        text = (persona or "").strip()
        if not is_unicode(text):
            raise InvalidInput("persona", NOT_UNICODE)
        limit = self._settings.max_persona_chars
        if len(text) > limit:
            raise InvalidInput("persona", f"is {len(text)} characters long; the limit is {limit}")
        await self._store.upsert_user(user)
        await self._store.set_persona(chat, text or None)

    # ------------------------------------------------------------------ running jobs
    async def run_chat_job(self, job: Job, sink: EventSink) -> JobOutcome:
        request = ChatRequest.from_payload(job.payload)
        messages = await self.prompt_for(job, request.message)
        budget = self._answers.settings.reasoning_budget(request.reasoning)
        answer = await self._answers.generate(messages, sink, request.show_reasoning, budget)
        result: dict[str, Any] = {"text": answer.text}
        if request.show_reasoning:
            result["reasoning"] = answer.reasoning
        result.update(await self._follow_up(job, sink, request, answer))
        # stored with the job's end in one transaction by the queue
        return JobOutcome(result, self._turns(job, request, answer))

    async def run_image_job(self, job: Job, sink: EventSink) -> dict[str, Any]:
        return await self._images.run(job, sink)

    async def prompt_for(self, job: Job, message: str) -> list[ChatMessage]:
        """The messages for one turn, from what the store holds for the job's chat."""
        persona = await self._store.get_persona(job.chat)
        history = await self._store.recent_turns(job.conversation_id, self._prompts.history_turns)
        return self._prompts.build(message, history, persona)

    @staticmethod
    def _turns(job: Job, request: ChatRequest, answer: Answer) -> list[Turn]:
        """The user's message and the answer (only the text users saw, never the
        reasoning). Both are dated when the answer is done, so when two messages of one
        chat overlap, each question is still followed by its own answer in the history
        (the store keeps insertion order between equal times)."""
        now = time.time()
        return [
            Turn(job.conversation_id, "user", request.message, job.id, created_at=now),
            Turn(job.conversation_id, "assistant", answer.text, job.id, created_at=now),
        ]

    async def _follow_up(
        self, job: Job, sink: EventSink, request: ChatRequest, answer: Answer
    ) -> dict[str, Any]:
        """Queue the picture the turn asked for. The reply stands even when the picture
        cannot be made (limit reached, bad prompt): users get a note, not an error."""
        params = follow_up_params(request.image, request.message, answer.image_prompt)
        if params is None:
            return {}
        job_id = follow_up_job_id(job.id)
        existing = await self._store.get_job(job_id)
        try:
            image_job = existing or await self._submit_image(
                job.user, job.chat, params, job.id, conversation_id=job.conversation_id, job_id=job_id
            )
        except OvbotError as exc:
            note = f"No picture this time: {exc.user_message}"
            sink.emit("status", note, image_error=exc.kind)
            return {"image_note": note}
        sink.emit("image_queued", job_id=image_job.id)
        return {"image_job_id": image_job.id}
