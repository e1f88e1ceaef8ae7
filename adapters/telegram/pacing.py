"""Per-chat pacing of message calls: Telegram's flood limits, kept before Telegram has to
say "retry after".

Telegram allows about one message per second in a chat and 20 per minute in a group,
and counts edits and drafts like messages. The live-reply renderer already spaces the
pushes of *one* reply, but several replies can share a chat (two people asking in one
group, a command answered while a reply streams), so the budget is per chat and every
call that posts or changes a message passes here:

- calls in one chat run one at a time, and the next one starts ``interval`` after the
  previous one *finished* (a request python-telegram-bot retried after a 429 finishes
  late, and the next one must not land right behind it);
- in a group, at most ``per_minute`` calls start within any minute; once half of that is
  used the spacing stretches to ``60 / per_minute`` so a long reply keeps streaming
  slowly instead of stalling for the rest of the minute;
- a ``RetryAfter`` from Telegram holds the chat until it has passed.

Callers wait for their turn, first come first served (``asyncio.Lock`` wakes its
waiters in order), so several replies in one chat share it fairly; refusing a streamed
state instead (to push a newer one later) would let a reply that streams steadily win
every race against one that waits. Private chats have positive ids, groups negative
ones (Bot API convention).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

WINDOW_S = 60.0
#: idle chats beyond this many are forgotten (their budgets are all spent time)
_MAX_CHATS = 4096


class _ChatBudget:
    __slots__ = ("lock", "last_done", "starts", "held_until")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.last_done = -float("inf")
        self.starts: deque[float] = deque()
        self.held_until = -float("inf")


class ChatPacer:
    def __init__(
        self,
        *,
        interval_s: float,
        group_per_minute: int,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._interval = interval_s
        self._per_minute = max(1, group_per_minute)
        self._group_gap = max(interval_s, WINDOW_S / self._per_minute)
        self._clock = clock
        self._sleep = sleep
        self._chats: dict[int, _ChatBudget] = {}

    def delay(self, chat_id: int) -> float:
        """Seconds until ``chat_id`` may get its next message call (0: now)."""
        budget = self._chats.get(chat_id)
        if budget is None:
            return 0.0
        return self._delay(chat_id, budget, self._clock())

    def _delay(self, chat_id: int, budget: _ChatBudget, now: float) -> float:
        wait = max(budget.held_until - now, budget.last_done + self._interval - now)
        if chat_id < 0:
            while budget.starts and budget.starts[0] <= now - WINDOW_S:
                budget.starts.popleft()
            if len(budget.starts) >= self._per_minute:
                wait = max(wait, budget.starts[0] + WINDOW_S - now)
            elif len(budget.starts) >= self._per_minute // 2:
                wait = max(wait, budget.last_done + self._group_gap - now)
        return max(0.0, wait)

    def hold(self, chat_id: int, seconds: float) -> None:
        """Telegram said "retry after ``seconds``" for this chat."""
        budget = self._budget(chat_id)
        budget.held_until = max(budget.held_until, self._clock() + seconds)

    @contextlib.asynccontextmanager
    async def turn(self, chat_id: int) -> AsyncIterator[None]:
        """Run one message call in ``chat_id`` inside this block, once it is the chat's
        turn."""
        budget = self._budget(chat_id)
        async with budget.lock:
            while (delay := self._delay(chat_id, budget, self._clock())) > 0:
                await self._sleep(delay)
            if chat_id < 0:
                budget.starts.append(self._clock())
            try:
                yield
            finally:
                budget.last_done = self._clock()

    def _budget(self, chat_id: int) -> _ChatBudget:
        budget = self._chats.get(chat_id)
        if budget is None:
            if len(self._chats) >= _MAX_CHATS:
                self._forget_idle()
            budget = self._chats[chat_id] = _ChatBudget()
        return budget

    def _forget_idle(self) -> None:
        now = self._clock()
        for chat_id, budget in list(self._chats.items()):
            if not budget.lock.locked() and self._delay(chat_id, budget, now) == 0 and not budget.starts:
                del self._chats[chat_id]
