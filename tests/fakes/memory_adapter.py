"""An in-memory platform adapter (in the spirit of errbot's test backend): "users" type
lines into "chats", the adapter drives the real core facade exactly the way the
Telegram and Discord adapters do (commands, live replies through the shared renderer,
one place that turns core errors into replies, re-delivery after a restart), and every
message it would post lands in a transcript that tests read.

It translates only: every decision is the facade's.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ovbot.adapters.base import AdapterBase
from ovbot.adapters.common import ReplyTarget, render_live
from ovbot.core.app import Check
from ovbot.core.bot import Bot, TurnHandle
from ovbot.core.domain import ChatRef, ImageParams, UserRef
from ovbot.core.errors import InvalidInput, OvbotError, QueueFull, RateLimited
from ovbot.core.turns import ImageReady

PLATFORM = "memory"
MESSAGE_LIMIT = 500


@dataclass
class Message:
    chat_id: str
    text: str
    edits: int = 0
    image_id: str | None = None


@dataclass
class Transcript:
    """Everything the adapter posted, in order, per chat."""

    messages: list[Message] = field(default_factory=list)

    def of(self, chat_id: str) -> list[Message]:
        return [m for m in self.messages if m.chat_id == chat_id]


class _ChatTarget(ReplyTarget):
    """One reply's messages in the transcript; indexes map to transcript entries."""

    def __init__(self, transcript: Transcript, chat_id: str, record: Callable[[list[int]], Awaitable[None]]) -> None:
        self._transcript = transcript
        self._chat_id = chat_id
        self._mine: list[Message] = []
        self._record = record

    async def show(self, index: int, text: str) -> None:
        if index < len(self._mine):
            self._mine[index].text = text
            self._mine[index].edits += 1
            return
        message = Message(self._chat_id, text)
        self._transcript.messages.append(message)
        self._mine.append(message)
        await self._record([id(m) for m in self._mine])

    async def delete(self, index: int) -> None:
        message = self._mine.pop(index)
        self._transcript.messages.remove(message)

    async def send_image(self, image: ImageReady) -> None:
        self._transcript.messages.append(Message(self._chat_id, "[picture]", image_id=image.image_id))


class MemoryAdapter(AdapterBase):
    name = PLATFORM

    def __init__(self, bot: Bot, *, min_interval_s: float = 0.05) -> None:
        self._bot = bot
        self._interval = min_interval_s
        self.transcript = Transcript()
        self._replies: set[asyncio.Task[None]] = set()
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._started = True
        for turn in await self._bot.claim_undelivered(PLATFORM):
            handle = await self._bot.resume(turn.job_id, turn.user)
            self._follow(handle, turn.chat.chat_id)

    async def stop(self) -> None:
        self._started = False
        await self.idle()

    def health(self) -> Check:
        return Check(self._started, "connected" if self._started else "stopped")

    async def idle(self) -> None:
        """Wait until every reply in flight is posted."""
        while self._replies:
            await asyncio.gather(*list(self._replies), return_exceptions=True)

    # ------------------------------------------------------------------ incoming
    async def receive(self, user_id: str, chat_id: str, text: str) -> None:
        """A user typed ``text`` in ``chat_id``; replies appear in the transcript."""
        user, chat = UserRef(PLATFORM, user_id), ChatRef(PLATFORM, chat_id)
        try:
            await self._dispatch(user, chat, text)
        except OvbotError as exc:
            self._post(chat_id, self.error_reply(exc))

    async def _dispatch(self, user: UserRef, chat: ChatRef, text: str) -> None:
        if not text.startswith("/"):
            self._follow(await self._bot.submit_turn(user, chat, text), chat.chat_id)
            return
        command, _, rest = text.partition(" ")
        if command == "/imagine":
            self._follow(await self._bot.imagine(user, chat, _image_params(rest)), chat.chat_id)
        elif command == "/reset":
            await self._bot.reset(user, chat, forget=rest.strip() == "forget")
            self._post(chat.chat_id, "New conversation.")
        elif command == "/think":
            mode = await self._bot.set_reasoning(user, chat, rest.strip() or None)
            self._post(chat.chat_id, f"Reasoning: {mode}")
        elif command == "/queue":
            jobs = await self._bot.queue(user, chat)
            self._post(chat.chat_id, "; ".join(f"{s.kind.value} #{s.position}" for s in jobs) or "Nothing waiting.")
        elif command == "/block":
            self._post(chat.chat_id, f"Blocked {await self._bot.block(user, rest.strip())}.")
        else:
            self._post(chat.chat_id, f"Unknown command {command}. Try /imagine, /reset, /think or /queue.")

    # ------------------------------------------------------------------ replies
    def _follow(self, handle: TurnHandle, chat_id: str) -> None:
        task = asyncio.create_task(self._deliver(handle, chat_id))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _deliver(self, handle: TurnHandle, chat_id: str) -> None:
        async def record(ids: list[int]) -> None:
            await self._bot.record_delivery(handle.job_id, "messages", ids)

        target = _ChatTarget(self.transcript, chat_id, record)
        view = await render_live(
            handle,
            target,
            limit=MESSAGE_LIMIT,
            min_interval_s=self._interval,
            clock=time.monotonic,
            sleep=asyncio.sleep,
        )
        if view.outcome != "interrupted":
            await self._bot.mark_delivered(handle.job_id)

    def _post(self, chat_id: str, text: str) -> None:
        self.transcript.messages.append(Message(chat_id, text))

    @staticmethod
    def error_reply(exc: OvbotError) -> str:
        """The one place where core errors become this platform's reply."""
        if isinstance(exc, (RateLimited, QueueFull)):
            return f"⏳ {exc.user_message}"
        return f"⚠️ {exc.user_message}"


def _image_params(rest: str) -> ImageParams:
    words = shlex.split(rest)
    prompt = " ".join(w for w in words if not w.startswith("--"))
    given = next((w.split("=", 1)[1] for w in words if w.startswith("--steps=")), None)
    if given is not None and not given.isdigit():
        raise InvalidInput("steps", "must be a whole number")
    return ImageParams(prompt=prompt, steps=None if given is None else int(given))
