"""Handle many chats' updates at once, each chat's in the order they came.

python-telegram-bot handles updates one after another by default, so every chat waits
for every other chat's handler: under load (200 people at once, each submit a store
write that queues behind the others) Telegram messages reached the queue well after
HTTP's and Discord's and were refused for a full queue far more often (bench --only
load). Handling them all at once would let a person's second message overtake the
first (the conversation would then hold the answer to the wrong question first).
``PerChatOrder`` keeps one chain per chat: an update waits only for the previous
update of its own chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

#: updates handled at once, all chats together (each is mostly waiting on the store)
MAX_CONCURRENT_UPDATES = 64


def chat_of(update: object) -> int | None:
    """The chat an update belongs to (None: it needs no order, e.g. an inline query)."""
    if isinstance(update, Update) and update.effective_chat is not None:
        return update.effective_chat.id
    return None


class PerChatOrder(BaseUpdateProcessor):
    """Concurrent across chats, in order within one. python-telegram-bot starts the
    updates' tasks in the order it fetched them and its semaphore lets them in first
    come first served, so each update finds its chat's previous one already chained."""

    def __init__(self, max_concurrent_updates: int = MAX_CONCURRENT_UPDATES) -> None:
        super().__init__(max_concurrent_updates)
        self._last: dict[int, asyncio.Future[None]] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        chat = chat_of(update)
        if chat is None:
            await coroutine
            return
        before = self._last.get(chat)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[chat] = done
        started = False
        try:
            if before is not None:
                await asyncio.wait({before})  # not `await before`: a cancel here must not cancel it
            started = True
            await coroutine
        finally:
            if started or before is None or before.done():
                self._end(chat, done)
            else:  # cancelled while waiting its turn: the next one still waits for `before`
                before.add_done_callback(lambda _: self._end(chat, done))
            if not started and asyncio.iscoroutine(coroutine):
                coroutine.close()

    def _end(self, chat: int, done: asyncio.Future[None]) -> None:
        done.set_result(None)
        if self._last.get(chat) is done:
            del self._last[chat]

    async def initialize(self) -> None:
        """Nothing to set up: the chains live only while updates are handled."""

    async def shutdown(self) -> None:
        """Nothing to free: every chain ends with its last update."""
