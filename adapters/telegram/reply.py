"""One reply on Telegram: the ``ReplyTarget`` the shared live-reply renderer pushes to.

Two ways to show a reply while it is written:

- **draft** (private chats): ``sendMessageDraft`` animates the text as it grows
  (Telegram's own "Thinking…" placeholder while the model reasons), and the text is
  persisted with ``sendMessage`` once the answer is complete. Drafts are ephemeral
  (~30 s), so a draft that is not changing (a long wait in the queue) is refreshed.
  Chunks before the last one never change again (the splitter is prefix-stable), so
  they are persisted as soon as the text moves past them.
- **edit** (groups, pictures, replies continued after a restart, and wherever the
  server refuses drafts): one message is sent and then edited in place; further
  messages follow when the text outgrows 4096 characters.

Every message the reply posts is recorded with the core (``record_delivery``) the
moment it exists, so a reply continued after a restart edits those messages instead of
posting them again; the picture is recorded too and never sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from ovbot.adapters.common.backoff import backoff_delay, until_done
from ovbot.adapters.common.live_reply import PICTURE_ONLY, STARTING, THINKING, ReplyView
from ovbot.adapters.common.render import RetryLater
from ovbot.adapters.telegram.outbox import DraftsRefused, MessageGone, NetworkRetry, Outbox, Place
from ovbot.adapters.telegram.texts import REROLL_BUTTON, caption_for, reroll_data
from ovbot.core.turns import ImageReady, ReplyDone, TurnEvent

log = logging.getLogger("ovbot.telegram")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: the status texts a draft shows as Telegram's own animated "Thinking…"
_PLACEHOLDERS = frozenset({THINKING, STARTING})


class ReplyJournal(Protocol):
    """What a reply records with the core, and where it gets its picture."""

    async def messages_posted(self, message_ids: list[int]) -> None: ...

    async def photo_posted(self, message_id: int) -> None: ...

    async def picture_bytes(self, image: ImageReady) -> bytes: ...


def new_draft_id() -> int:
    """Non-zero (Telegram's rule); the same id animates one draft."""
    return random.randrange(1, 2**31)


class TelegramReply:
    def __init__(
        self,
        outbox: Outbox,
        place: Place,
        journal: ReplyJournal,
        *,
        drafts: bool,
        as_file: bool = False,
        picture_turn: bool = False,
        message_ids: Sequence[int] = (),
        photo_sent: bool = False,
        on_drafts_refused: Callable[[], None] = lambda: None,
        draft_refresh_s: float = 20.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._outbox = outbox
        self._place = place
        self._journal = journal
        self._drafting = drafts
        self._as_file = as_file
        self._picture_turn = picture_turn
        self._on_drafts_refused = on_drafts_refused
        self._draft_id = new_draft_id()
        self._refresh_s = draft_refresh_s
        self._clock = clock
        self._sleep = sleep
        #: what each message of the reply says (as the renderer pushed it)
        self._texts: list[str] = []
        #: ids of the messages posted, and what each says (None: unknown, continued
        #: after a restart, so the first push edits it)
        self._ids: list[int | None] = [message_id or None for message_id in message_ids]
        self._posted: list[str | None] = [None] * len(self._ids)
        self._photo_sent = photo_sent
        self._answer_complete = False
        self._drop_after_photo = False
        self._final_seen = False
        self._failures = 0
        self._last_draft: tuple[float, str] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def message_ids(self) -> list[int]:
        return [message_id for message_id in self._ids if message_id is not None]

    @property
    def drafting(self) -> bool:
        return self._drafting

    def observe(self, event: TurnEvent) -> None:
        """Called for each event before the renderer folds it: the answer is complete
        once ``ReplyDone`` (or the end) arrives, and from then on text is persisted."""
        if isinstance(event, ReplyDone):
            self._answer_complete = True
        if event.terminal:
            self._final_seen = True

    # ------------------------------------------------------------------ ReplyTarget
    async def show(self, index: int, text: str) -> None:
        await self._network_guard(self._show(index, text))

    async def delete(self, index: int) -> None:
        await self._network_guard(self._delete(index))

    async def send_image(self, image: ImageReady) -> None:
        await self._network_guard(self._send_image(image))

    async def finish(self, view: ReplyView | None) -> None:
        """The renderer is done: whatever is still only a draft is persisted (waiting
        out a network failure or a "retry after" the way the renderer does)."""
        await until_done(lambda: self._network_guard(self._finish()), self._sleep)

    async def _finish(self) -> None:
        # each flag is cleared once its work is done: a retry after a failure does the rest
        self._stop_refresher()
        if self._drop_after_photo and not self._photo_sent:  # no photo after all: say so
            await self._persist(len(self._texts))
            self._drop_after_photo = False
        if self._drafting:
            await self._persist(len(self._texts))
            self._drafting = False

    def close(self) -> None:
        self._closed = True
        self._stop_refresher()

    # ------------------------------------------------------------------ internals
    async def _network_guard(self, work: Awaitable[None]) -> None:
        """A network failure waits longer the more of them came in a row; the reply
        never gives up (a stop leaves it for the next start)."""
        try:
            await work
        except NetworkRetry:
            self._failures += 1
            raise NetworkRetry(backoff_delay(self._failures)) from None
        self._failures = 0

    async def _show(self, index: int, text: str) -> None:
        if index < len(self._texts):
            self._texts[index] = text
        else:
            self._texts.append(text)
        if self._final_seen and self._picture_turn and self._texts == [PICTURE_ONLY]:
            # the photo (and its caption) says it all: the status message goes, once
            # the photo is there (the renderer may push this before sending it)
            if self._photo_sent:
                await self._drop_status()
            else:
                self._drop_after_photo = True
            return
        if self._drafting:
            if self._answer_complete or self._final_seen:
                self._drafting = False
                self._stop_refresher()
                await self._persist(len(self._texts))
                return
            last = len(self._texts) - 1
            await self._persist(last)  # chunks before the last one are final
            if index == last:
                await self._draft(text)
            return
        await self._post(index, text)

    async def _draft(self, text: str) -> None:
        shown = "" if text in _PLACEHOLDERS else text
        try:
            await self._outbox.draft(self._place, self._draft_id, shown)
        except DraftsRefused as exc:
            log.info("chat %s: drafts refused (%s); editing a message instead", self._place.chat_id, exc)
            self._drafting = False
            self._on_drafts_refused()
            await self._persist(len(self._texts))
            return
        self._last_draft = (self._clock(), shown)
        if self._refresher is None and self._refresh_s > 0:
            self._refresher = asyncio.create_task(self._refresh_drafts(), name="ovbot-telegram-draft")

    async def _refresh_drafts(self) -> None:
        """Re-send the draft before Telegram lets it vanish (~30 s without change)."""
        while self._drafting and not self._closed and self._last_draft is not None:
            at, text = self._last_draft
            due = at + self._refresh_s - self._clock()
            if due > 0:
                await self._sleep(due)
                continue
            try:
                await self._outbox.draft(self._place, self._draft_id, text, wait=True)
            except (RetryLater, DraftsRefused) as exc:
                log.debug("chat %s: draft refresh skipped (%s)", self._place.chat_id, type(exc).__name__)
            except Exception:  # the renderer's own pushes report real trouble
                log.debug("chat %s: draft refresh failed", self._place.chat_id, exc_info=True)
            self._last_draft = (self._clock(), text)

    def _stop_refresher(self) -> None:
        if self._refresher is not None and not self._refresher.done():
            self._refresher.cancel()
        self._refresher = None

    async def _persist(self, upto: int) -> None:
        """Messages 0..upto-1 posted as they read now."""
        for index in range(upto):
            await self._post(index, self._texts[index])

    async def _post(self, index: int, text: str) -> None:
        if index > len(self._ids):  # earlier ones first: messages are sent in order
            await self._persist(index)
        if index < len(self._ids) and self._ids[index] is not None:
            if self._posted[index] == text:
                return
            try:
                await self._outbox.edit_text(self._place, self._ids[index] or 0, text)
            except MessageGone:  # deleted by someone: post it again below
                self._ids[index] = None
                self._posted[index] = None
            else:
                self._posted[index] = text
                return
        message_id = await self._outbox.send_text(self._place, text, wait=False)
        if index < len(self._ids):
            self._ids[index], self._posted[index] = message_id, text
        else:
            self._ids.append(message_id)
            self._posted.append(text)
        await self._record()

    async def _record(self) -> None:
        # 0 keeps the indexes of messages that have to be posted again
        await self._journal.messages_posted([message_id or 0 for message_id in self._ids])

    async def _delete(self, index: int) -> None:
        if index < len(self._texts):
            self._texts.pop(index)
        if index < len(self._ids):
            message_id = self._ids.pop(index)
            self._posted.pop(index)
            if message_id is not None:
                await self._outbox.delete(self._place, message_id)
            await self._record()

    async def _drop_status(self) -> None:
        self._drafting = False
        self._stop_refresher()
        while self._ids:
            message_id = self._ids.pop()
            self._posted.pop()
            if message_id is not None:
                await self._outbox.delete(self._place, message_id)
        await self._record()

    async def _send_image(self, image: ImageReady) -> None:
        if self._photo_sent:
            return  # posted before a restart
        if self._drafting:  # the answer's text comes before its picture
            self._drafting = False
            self._stop_refresher()
            await self._persist(len(self._texts))
        png = await self._journal.picture_bytes(image)
        params = image.params
        message_id = await self._outbox.send_picture(
            self._place,
            png,
            filename=f"ovbot-{params.get('seed', 'picture')}.png",
            caption=caption_for(params),
            markup=_reroll_markup(image.job_id),
            as_file=self._as_file,
        )
        self._photo_sent = True
        await self._journal.photo_posted(message_id)
        if self._drop_after_photo:
            await self._drop_status()


def _reroll_markup(picture_job_id: str) -> InlineKeyboardMarkup:
    """The 🎲 button under a picture: the same settings, a new seed (``Bot.reroll``)."""
    return InlineKeyboardMarkup([[InlineKeyboardButton(REROLL_BUTTON, callback_data=reroll_data(picture_job_id))]])
