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
- ``InboxApplication.process_update`` marks an update handled once its handlers
  finished (the turn's job is queued durably, or the reply handed to the outbox).
- ``Inbox.replay`` puts the stored-but-unhandled updates (a crash came between) back on
  the update queue at start, through the Application's normal processing.
- Webhook mode calls ``Inbox.accept`` before answering 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, ExtBot

from ovbot.adapters.telegram.config import PLATFORM
from ovbot.core.bot import Bot

log = logging.getLogger("ovbot.telegram")


class Inbox:
    """The adapter's side of the durable update log; the store stays behind ``Bot``.

    Update ids are per Telegram bot, so the log is keyed ``telegram:<bot id>`` (the
    token's first part): another bot on the same database never finds its updates
    "handled" by this one's."""

    def __init__(self, bot: Bot, bot_id: str) -> None:
        self._bot = bot
        self.platform = f"{PLATFORM}:{bot_id}"

    async def accept(self, updates: Sequence[Update]) -> list[Update]:
        """Store ``updates`` (committed on return); those seen for the first time."""
        if not updates:
            return []
        items = [(update.update_id, json.dumps(update.to_dict(), separators=(",", ":"))) for update in updates]
        fresh = await self._bot.remember_updates(self.platform, items)
        return [update for update in updates if update.update_id in fresh]

    async def handled(self, update_id: int) -> None:
        await self._bot.update_handled(self.platform, update_id)

    async def replay(self, application: Application[Any, Any, Any, Any, Any, Any]) -> int:
        """Queue every stored, unhandled update again (oldest first); how many."""
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
    """``Application`` that marks an update handled once its handlers finished."""

    __slots__ = ("inbox",)

    async def process_update(self, update: object) -> None:
        await super().process_update(update)
        inbox: Inbox | None = getattr(self, "inbox", None)
        if inbox is None or not isinstance(update, Update):
            return
        try:
            await inbox.handled(update.update_id)
        except Exception as exc:  # it is replayed after a restart: a duplicate, not a loss
            log.error("telegram: update %s could not be marked handled: %s", update.update_id, type(exc).__name__)
