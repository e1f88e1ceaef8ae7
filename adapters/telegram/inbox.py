"""Telegram updates survive a crash: each accepted update is durable before Telegram
may consider it delivered, and is handled exactly once.

Telegram confirms an update when ``getUpdates`` is next called with a higher offset,
and python-telegram-bot's ``Updater`` advances that offset as soon as it has queued a
fetched batch, before any handler ran. So:

- ``InboxBot.get_updates`` stores the fetched batch (``Bot.remember_updates``) before
  it returns, i.e. before the updater can ask for the next offset. If storing fails,
  the batch is refused (a ``TelegramError``: the updater retries with the same offset,
  Telegram sends it again). Updates stored before (handled, or waiting for the replay
  at start) are dropped from the batch, and the bot keeps the offset past them itself,
  so an all-duplicate batch is confirmed too.
- ``InboxApplication.process_update`` counts a try (committed) before the handlers run,
  and marks the update handled once they finished (the turn's job is queued durably).
  The one-off replies they posted (a command's answer, an error) are held back and
  committed with that mark, then sent, then marked sent: a crash after "handled" does
  not lose them. A crash after Telegram took a reply but before it was marked sent
  makes the next start send it once more: the one duplicate left, in a window of one
  Bot API round trip plus one SQLite write (a few ms on loopback).
- An update tried ``UPDATE_MAX_ATTEMPTS`` times (each try killed the process: a
  "poison" update) is given up on the next: marked handled, logged by id only, and the
  user is told once that the message could not be processed.
- ``Inbox.replay`` sends the replies a crash left unsent and puts the stored-but-
  unhandled updates back on the update queue at start, through the Application's
  normal processing.
- Webhook mode calls ``Inbox.accept`` before answering 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import Application, ExtBot

from ovbot.adapters.telegram.config import PLATFORM
from ovbot.adapters.telegram.outbox import OneOff, Outbox, Place, place_of
from ovbot.adapters.telegram.texts import NOT_PROCESSED
from ovbot.core.bot import UPDATE_MAX_ATTEMPTS, Bot

log = logging.getLogger("ovbot.telegram")


class Inbox:
    """The adapter's side of the durable update log; the store stays behind ``Bot``.

    Update ids are per Telegram bot, so the log is keyed ``telegram:<bot id>`` (the
    token's first part): another bot on the same database never finds its updates
    "handled" by this one's."""

    def __init__(self, bot: Bot, bot_id: str) -> None:
        self._bot = bot
        self.platform = f"{PLATFORM}:{bot_id}"
        self._outbox: Outbox | None = None

    def connect(self, outbox: Outbox) -> None:
        """The outbox sends through the application's bot, which is built with this
        inbox: it comes in after both exist."""
        self._outbox = outbox

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("Inbox.connect(outbox) was not called")
        return self._outbox

    async def accept(self, updates: Sequence[Update]) -> list[Update]:
        """Store ``updates`` (committed on return); those seen for the first time."""
        if not updates:
            return []
        items = [(update.update_id, json.dumps(update.to_dict(), separators=(",", ":"))) for update in updates]
        fresh = await self._bot.remember_updates(self.platform, items)
        return [update for update in updates if update.update_id in fresh]

    async def handled(self, update_id: int) -> None:
        await self._bot.update_handled(self.platform, update_id)

    async def process(self, update: Update, handle: Callable[[Update], Awaitable[None]]) -> None:
        """Run ``handle`` on ``update`` (unless it was tried too often), then mark it
        handled together with the replies it posted, and send those."""
        update_id = update.update_id
        if not await self._may_try(update_id):
            await self._give_up(update)
            return
        with self.outbox.holding() as held:
            await handle(update)
        await self._finish(update_id, held.replies, abandoned=False)

    async def _may_try(self, update_id: int) -> bool:
        try:
            return await self._bot.try_update(self.platform, update_id)
        except Exception as exc:  # not counting a try must not drop the message
            log.error("telegram: the try at update %s could not be counted: %s", update_id, type(exc).__name__)
            return True

    async def _give_up(self, update: Update) -> None:
        # the update's text stays out of the log: its id finds it in the database
        log.error(
            "telegram: update %s was tried %d times (each try ended the process, or failed); given up",
            update.update_id,
            UPDATE_MAX_ATTEMPTS,
        )
        place = _notice_place(update)
        await self._finish(update.update_id, [(place, NOT_PROCESSED)] if place else [], abandoned=True)

    async def _finish(self, update_id: int, replies: list[OneOff], *, abandoned: bool) -> None:
        stored = _encode(replies) if replies else None
        try:
            if abandoned:
                await self._bot.update_abandoned(self.platform, update_id, stored)
            else:
                await self._bot.update_handled(self.platform, update_id, stored)
        except Exception as exc:  # it is replayed after a restart: a duplicate, not a loss
            log.error("telegram: update %s could not be marked handled: %s", update_id, type(exc).__name__)
            if replies:
                self.outbox.post_all(replies)
            return
        if replies:
            self.outbox.post_all(replies, then=partial(self._sent, update_id))

    async def _sent(self, update_id: int) -> None:
        try:
            await self._bot.replies_sent(self.platform, update_id)
        except Exception as exc:  # sent again after a restart: a duplicate, not a loss
            log.error("telegram: the replies to update %s could not be marked sent: %s", update_id, type(exc).__name__)

    async def resend(self) -> int:
        """Send the replies a crash or stop left unsent (their updates are handled);
        how many updates' replies."""
        unsent = await self._bot.unsent_replies(self.platform)
        for update_id, stored in unsent:
            try:
                replies = _decode(stored)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("telegram: replies to update %s cannot be read (%s); dropped", update_id, type(exc).__name__)
                await self._sent(update_id)
                continue
            self.outbox.post_all(replies, then=partial(self._sent, update_id))
        if unsent:
            log.info("telegram: sending the replies to %d update(s) a stop or crash left unsent", len(unsent))
        return len(unsent)

    async def replay(self, application: Application[Any, Any, Any, Any, Any, Any]) -> int:
        """Send the replies left unsent, then queue every stored, unhandled update
        again (oldest first); how many updates."""
        await self.resend()
        replayed = 0
        for update_id, payload in await self._bot.unhandled_updates(self.platform):
            try:
                update = Update.de_json(json.loads(payload), application.bot)
            except (ValueError, TypeError, KeyError) as exc:  # never block the rest on one
                log.warning("telegram: stored update %s cannot be read (%s); skipped", update_id, type(exc).__name__)
                await self.handled(update_id)
                continue
            await application.update_queue.put(update)
            replayed += 1
        if replayed:
            log.info("telegram: replaying %d update(s) accepted before the last stop", replayed)
        return replayed


class InboxBot(ExtBot[None]):
    """``ExtBot`` whose ``get_updates`` makes the batch durable before returning it."""

    __slots__ = ("_inbox", "_next_offset")

    def __init__(self, *args: Any, inbox: Inbox, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self._unfrozen():
            self._inbox = inbox
            #: past the last update stored: never ask below it (that would fetch
            #: duplicates dropped below, forever, since the updater saw no update)
            self._next_offset = 0

    async def get_updates(self, offset: int | None = None, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        asked = max(offset or 0, self._next_offset) or None
        updates = await super().get_updates(asked, *args, **kwargs)
        if not updates:
            return updates
        try:
            fresh = await self._inbox.accept(updates)
        except Exception as exc:
            # not confirmed: the updater keeps its offset and Telegram sends them again
            raise TelegramError(f"the fetched updates could not be stored ({type(exc).__name__})") from exc
        self._next_offset = max(self._next_offset, updates[-1].update_id + 1)
        return tuple(fresh)


class InboxApplication(Application[Any, Any, Any, Any, Any, Any]):
    """``Application`` whose every update goes through ``Inbox.process``: a try counted
    before its handlers, "handled" (with the replies they posted) after them."""

    __slots__ = ("inbox",)

    async def process_update(self, update: object) -> None:
        inbox: Inbox | None = getattr(self, "inbox", None)
        if inbox is None or not isinstance(update, Update):
            await super().process_update(update)
            return
        await inbox.process(update, super().process_update)


def _notice_place(update: Update) -> Place | None:
    """Where to tell the user that their update was given up: under their message (or
    the message whose button they pressed)."""
    message = update.effective_message
    if isinstance(message, Message):
        return place_of(message)
    chat = update.effective_chat
    return None if chat is None else Place(chat.id)


def _encode(replies: Sequence[OneOff]) -> str:
    return json.dumps(
        [{"chat": p.chat_id, "thread": p.thread_id, "reply_to": p.reply_to, "text": text} for p, text in replies],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _decode(stored: str) -> list[OneOff]:
    return [(Place(int(r["chat"]), r["thread"], r["reply_to"]), str(r["text"])) for r in json.loads(stored)]
