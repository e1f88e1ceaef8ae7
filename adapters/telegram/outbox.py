"""Every call that posts to Telegram, paced per chat, with Telegram's errors turned into
what the callers act on.

- Every call waits for its chat's turn in the pacer (first come, first served).
- ``RetryAfter`` (429 after python-telegram-bot's rate limiter gave up retrying) holds
  the chat in the pacer; a streamed state gets ``RetryLater`` (the renderer pushes its
  newest state when the wait is over), a one-off reply waits and tries again.
- ``400 message is not modified`` is success: the message already says that (a reply
  continued after a restart re-sends what may already be there).
- ``400 message to edit not found`` (someone deleted it) is ``MessageGone``: the reply
  posts a new message instead.
- ``403`` (the user blocked the bot, the bot was removed from the group) is ``ChatGone``:
  nothing more is sent to that chat until a message arrives from it again, and the turn
  counts as delivered so it is not retried after every restart.
- A network error retries a few times (one-off) or becomes ``RetryLater`` (streamed).

Nothing here logs message text: only chat ids, methods and Telegram's error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from telegram import Bot as TelegramBot
from telegram import Chat, InlineKeyboardMarkup, InputFile, Message, ReplyParameters
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from ovbot.adapters.common import RetryLater
from ovbot.adapters.common.backoff import Backoff, backoff_delay
from ovbot.adapters.telegram.pacing import ChatPacer

log = logging.getLogger("ovbot.telegram")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

#: one call: how often a 429 or a network error is waited out before it raises (a
#: one-off reply then goes on waiting, ``_post_one``; a live reply backs off itself)
_MAX_ATTEMPTS = 5


class ChatGone(Exception):
    """The chat takes no messages from the bot (blocked by the user, bot removed)."""

    def __init__(self, chat_id: int, reason: str) -> None:
        super().__init__(f"chat {chat_id}: {reason}")
        self.chat_id = chat_id


class MessageGone(Exception):
    """The message to edit does not exist any more (deleted by someone)."""


class DraftsRefused(Exception):
    """The server does not stream drafts here (an older or self-hosted Bot API server,
    or a chat that is not private)."""


class NetworkRetry(RetryLater):
    """A network error while pushing a streamed state (the reply counts them in a row
    and waits longer each time)."""


class _NotModified(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Place:
    """Where a reply goes: the chat, its forum topic, and the message it answers."""

    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None

    @property
    def private(self) -> bool:
        """Private chats have positive ids, groups and channels negative ones."""
        return self.chat_id > 0


def place_of(message: Message) -> Place:
    """Replies in groups answer the message (several people talk there); a forum topic
    keeps its replies."""
    thread = message.message_thread_id if message.is_topic_message else None
    private = message.chat.type == Chat.PRIVATE
    return Place(message.chat.id, thread, None if private else message.message_id)


#: a one-off reply: where, and the text
OneOff = tuple[Place, str]
Then = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Held:
    """The one-off replies posted while one update is handled. ``open`` ends with the
    handling: a task the handler started inherits the context, and must send its own
    replies instead of adding them to a list nobody reads any more."""

    replies: list[OneOff] = field(default_factory=list)
    open: bool = True


def retry_after_s(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class Outbox:
    def __init__(self, bot: TelegramBot, pacer: ChatPacer, *, sleep: Sleep = asyncio.sleep) -> None:
        self._bot = bot
        self._pacer = pacer
        self._sleep = sleep
        #: chats that refused the bot (403); a message from one opens it again
        self._gone: set[int] = set()
        self._posting: set[asyncio.Task[None]] = set()
        #: the replies of the update being handled in this context (see ``holding``)
        self._held: ContextVar[Held | None] = ContextVar(f"ovbot-telegram-held-{id(self)}", default=None)

    def post(self, place: Place, text: str) -> None:
        """Send a one-off reply (a command's answer, an error) in the background, or,
        inside ``holding``, keep it for the caller of ``holding`` to send.

        One chat's updates are handled in order (``ordering.PerChatOrder``); a reply
        that waits for its chat's turn, or for a "retry after", must not hold up that
        chat's next update meanwhile. Replies to one chat still go out in order: they
        queue on the chat's turn in the pacer."""
        held = self._held.get()
        if held is not None and held.open:
            held.replies.append((place, text))
            return
        self.post_all([(place, text)])

    @contextlib.contextmanager
    def holding(self) -> Iterator[Held]:
        """Keep the one-off replies posted in this context instead of sending them: the
        inbox commits them with the update's "handled" mark, then sends them
        (``post_all``), so a crash in between does not lose them."""
        held = Held()
        token = self._held.set(held)
        try:
            yield held
        finally:
            held.open = False
            self._held.reset(token)

    def post_all(self, replies: Sequence[OneOff], then: Then | None = None) -> None:
        """Send ``replies`` in order in the background; then await ``then`` (also when
        Telegram refused one for good: sending it again would fail again). A network
        failure or a "retry after" is waited out however long it lasts, like a live
        reply. Not when the send is cancelled (a stop's grace ran out): ``then`` is what
        marks them sent, so the next start sends them."""
        first = replies[0][0].chat_id if replies else 0
        task = asyncio.create_task(self._post(list(replies), then), name=f"ovbot-telegram-reply-{first}")
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _post(self, replies: list[OneOff], then: Then | None) -> None:
        for place, text in replies:
            await self._post_one(place, text)
        if then is not None:
            await then()

    async def _post_one(self, place: Place, text: str) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.send_text(place, text)
                return
            except ChatGone:
                return
            except BadRequest as exc:  # refused for this text or chat: it would be refused again
                log.warning("chat %s: Telegram refused a reply: %s", place.chat_id, type(exc).__name__)
                return
            except (NetworkError, RetryAfter) as exc:  # Telegram's bad minute, not the reply's
                delay = backoff.failed()
                log.info("chat %s: a reply waits %.0f s more (%s)", place.chat_id, delay, type(exc).__name__)
                await self._sleep(delay)
            except TelegramError as exc:
                log.warning("chat %s: a reply could not be sent: %s", place.chat_id, type(exc).__name__)
                return

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until the one-off replies are sent; drop the rest."""
        if self._posting:
            _, pending = await asyncio.wait(list(self._posting), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def reopen(self, chat_id: int) -> None:
        """A message arrived from ``chat_id``: it takes messages again."""
        self._gone.discard(chat_id)

    def is_gone(self, chat_id: int) -> bool:
        return chat_id in self._gone

    # ------------------------------------------------------------------ calls
    async def send_text(
        self, place: Place, text: str, *, wait: bool = True, markup: InlineKeyboardMarkup | None = None
    ) -> int:
        """Post ``text`` (plain: no parse mode, so it always parses); its message id."""
        message = await self._call(
            "sendMessage",
            place.chat_id,
            lambda: self._bot.send_message(
                place.chat_id,
                text,
                message_thread_id=place.thread_id,
                reply_parameters=_reply(place),
                reply_markup=markup,
            ),
            wait=wait,
        )
        return message.message_id

    async def edit_text(self, place: Place, message_id: int, text: str, *, wait: bool = False) -> None:
        try:
            await self._call(
                "editMessageText",
                place.chat_id,
                lambda: self._bot.edit_message_text(text, chat_id=place.chat_id, message_id=message_id),
                wait=wait,
            )
        except _NotModified:
            pass

    async def draft(self, place: Place, draft_id: int, text: str, *, wait: bool = False) -> None:
        """Show ``text`` as the chat's animated draft ("" shows Telegram's own
        "Thinking…" placeholder). DraftsRefused when the server will not."""
        try:
            await self._call(
                "sendMessageDraft",
                place.chat_id,
                lambda: self._bot.send_message_draft(
                    place.chat_id, draft_id, text, message_thread_id=place.thread_id
                ),
                wait=wait,
                draft=True,
            )
        except _NotModified:
            pass

    async def delete(self, place: Place, message_id: int) -> None:
        """Delete one of the bot's messages; one that is gone already is fine."""
        try:
            await self._call(
                "deleteMessage",
                place.chat_id,
                lambda: self._bot.delete_message(place.chat_id, message_id),
                wait=True,
                paced=False,
            )
        except (MessageGone, _NotModified):
            pass
        except BadRequest as exc:
            log.info("chat %s: could not delete message %s: %s", place.chat_id, message_id, exc.message)

    async def send_picture(
        self,
        place: Place,
        png: bytes,
        *,
        filename: str,
        caption: str,
        markup: InlineKeyboardMarkup | None,
        as_file: bool,
        wait: bool = False,
    ) -> int:
        """The picture as a photo (Telegram recompresses it) or, ``as_file``, as a
        document: the PNG byte for byte, its parameters in its text chunks."""
        upload = InputFile(png, filename=filename)
        if as_file:
            send: Callable[[], Awaitable[Message]] = lambda: self._bot.send_document(  # noqa: E731
                place.chat_id,
                upload,
                caption=caption,
                reply_markup=markup,
                message_thread_id=place.thread_id,
                reply_parameters=_reply(place),
                disable_content_type_detection=True,
            )
        else:
            send = lambda: self._bot.send_photo(  # noqa: E731
                place.chat_id,
                upload,
                caption=caption,
                reply_markup=markup,
                message_thread_id=place.thread_id,
                reply_parameters=_reply(place),
            )
        message = await self._call("sendDocument" if as_file else "sendPhoto", place.chat_id, send, wait=wait)
        return message.message_id

    async def answer_callback(self, query_id: str, text: str | None = None, *, alert: bool = False) -> None:
        """Stop the button's spinner (and show ``text``); failures only get logged: the
        query may be too old, which costs the user nothing."""
        try:
            await self._bot.answer_callback_query(query_id, text=text, show_alert=alert)
        except TelegramError as exc:
            log.info("could not answer a button press: %s", type(exc).__name__)

    # ------------------------------------------------------------------ the one error mapping
    async def _call(
        self,
        method: str,
        chat_id: int,
        call: Callable[[], Awaitable[T]],
        *,
        wait: bool,
        paced: bool = True,
        draft: bool = False,
    ) -> T:
        attempt = 0
        while True:
            if chat_id in self._gone:
                raise ChatGone(chat_id, "it refused the bot earlier")
            attempt += 1
            try:
                if not paced:
                    return await call()
                # every call waits for its chat's turn, first come first served: several
                # replies in one chat share it fairly (one refused instead would keep
                # losing the race to a reply that streams steadily)
                async with self._pacer.turn(chat_id):
                    return await call()
            except RetryAfter as exc:
                seconds = retry_after_s(exc)
                self._pacer.hold(chat_id, seconds)
                log.info("chat %s: Telegram asked to wait %.0f s (%s)", chat_id, seconds, method)
                if not wait:
                    raise RetryLater(seconds) from None
                if attempt >= _MAX_ATTEMPTS:
                    raise
                if not paced:  # a paced call waits for the hold in the pacer
                    await self._sleep(seconds)
            except ChatMigrated as exc:
                # a group became a supergroup under a new id; new messages come from there
                self._gone.add(chat_id)
                raise ChatGone(chat_id, f"moved to chat {exc.new_chat_id}") from None
            except Forbidden as exc:
                if draft:
                    raise DraftsRefused(exc.message) from None
                self._gone.add(chat_id)
                log.info("chat %s refuses the bot (%s): not sending there any more", chat_id, exc.message)
                raise ChatGone(chat_id, exc.message) from None
            except InvalidToken as exc:
                if draft:  # older servers answer 404 for a method they do not have
                    raise DraftsRefused(exc.message) from None
                raise
            except BadRequest as exc:
                text = exc.message.lower()
                if "not modified" in text:
                    raise _NotModified() from None
                if draft:
                    raise DraftsRefused(exc.message) from None
                if "message to edit not found" in text or "message can't be edited" in text or (
                    "message to delete not found" in text
                ):
                    raise MessageGone(exc.message) from None
                if "chat not found" in text or "kicked" in text or "not enough rights" in text:
                    self._gone.add(chat_id)
                    raise ChatGone(chat_id, exc.message) from None
                raise
            except NetworkError as exc:  # timeouts included (BadRequest is handled above)
                delay = backoff_delay(attempt)
                log.info("chat %s: %s failed (%s); retrying in %.0f s", chat_id, method, type(exc).__name__, delay)
                if not wait:
                    raise NetworkRetry(delay) from None
                if attempt >= _MAX_ATTEMPTS:
                    raise
                await self._sleep(delay)


def _reply(place: Place) -> ReplyParameters | None:
    if place.reply_to is None:
        return None
    return ReplyParameters(message_id=place.reply_to, allow_sending_without_reply=True)
