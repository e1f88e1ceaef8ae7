"""Following turns to the end on Telegram, and finishing what a restart interrupted.

Each turn a handler submitted (or a restart left undelivered) gets one task that runs
the shared live-reply renderer into a ``TelegramReply`` and then marks the turn
delivered with the core. Where the reply goes (the message it answers, the forum topic,
``--file``, shown reasoning) is recorded with the turn when it starts, so a reply
continued after a restart goes to the same place, edits the messages it had posted and
never posts its picture twice (``Bot.claim_undelivered`` hands each out once).

A turn is marked delivered when its final state is shown, and also when the chat
refuses the bot (403) or Telegram rejects the reply outright: retrying those after
every restart would fail the same way forever. Network failures and "retry after" are
waited out however long they last (``TelegramReply`` backs off); a reply cut short by
shutdown stays undelivered and is finished after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram.error import TelegramError

from ovbot.adapters.common import render_live, utf16_length
from ovbot.adapters.common.live_reply import ReplyView
from ovbot.adapters.telegram.config import MESSAGE_LIMIT, PLATFORM, TelegramConfig
from ovbot.adapters.telegram.errors import where
from ovbot.adapters.telegram.outbox import ChatGone, Outbox, Place
from ovbot.adapters.telegram.reply import TelegramReply
from ovbot.core.bot import Bot, TurnHandle
from ovbot.core.domain import JobKind, UserRef
from ovbot.core.errors import OvbotError
from ovbot.core.turns import ImageReady, TurnEvent

log = logging.getLogger("ovbot.telegram")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# keys of the delivery record (Bot.record_delivery)
MESSAGES = "messages"
PHOTO = "photo"
REPLY_TO = "reply_to"
THREAD = "thread"
OPTIONS = "options"
AS_FILE = "file"
SHOW_REASONING = "reasoning"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a turn's reply goes and how it is shown."""

    place: Place
    as_file: bool = False
    show_reasoning: bool = False


class _Journal:
    """A reply's bookkeeping with the core, for one turn."""

    def __init__(self, bot: Bot, job_id: str, requester: UserRef) -> None:
        self._bot = bot
        self._job_id = job_id
        self._requester = requester

    async def messages_posted(self, message_ids: list[int]) -> None:
        await self._bot.record_delivery(self._job_id, MESSAGES, message_ids)

    async def photo_posted(self, message_id: int) -> None:
        await self._bot.record_delivery(self._job_id, PHOTO, message_id)

    async def picture_bytes(self, image: ImageReady) -> bytes:
        picture = await self._bot.image(image.job_id, self._requester)
        return await asyncio.to_thread(Path(picture.path).read_bytes)


class Deliveries:
    def __init__(
        self,
        bot: Bot,
        outbox: Outbox,
        config: TelegramConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._outbox = outbox
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        #: private chats where the server refused drafts (they edit a message instead)
        self._no_drafts: set[int] = set()

    # ------------------------------------------------------------------ entry points
    async def start_turn(self, handle: TurnHandle, origin: Origin) -> None:
        """Follow a turn a handler just submitted, after recording where it goes."""
        await self._remember(handle.job_id, origin)
        self._spawn(handle, origin, (), photo_sent=False, resumed=False)

    async def resume_undelivered(self) -> int:
        """Finish every turn whose reply was not delivered before the last stop: those
        that finished while ovbot was down, and those that were still streaming."""
        resumed = 0
        for turn in await self._bot.claim_undelivered(PLATFORM):
            record: dict[str, Any] = turn.delivery
            try:
                chat_id = int(turn.chat.chat_id)
                handle = await self._bot.resume(turn.job_id, turn.user)
            except (ValueError, OvbotError) as exc:
                log.warning("turn %s cannot be continued: %s", turn.job_id, exc)
                continue
            options = record.get(OPTIONS) or []
            origin = Origin(
                Place(chat_id, _int_or_none(record.get(THREAD)), _int_or_none(record.get(REPLY_TO))),
                as_file=AS_FILE in options,
                show_reasoning=SHOW_REASONING in options,
            )
            ids = [int(i) for i in record.get(MESSAGES) or [] if isinstance(i, int)]
            self._spawn(handle, origin, ids, photo_sent=PHOTO in record, resumed=True)
            resumed += 1
        if resumed:
            log.info("continuing %d replies from before the restart", resumed)
        return resumed

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait until every reply in flight is delivered (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, grace_s: float) -> None:
        """Let replies in flight finish for ``grace_s``, then cancel the rest: they stay
        undelivered and are continued after the next start."""
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.info("%d replies left for the next start", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ one turn
    async def _remember(self, job_id: str, origin: Origin) -> None:
        place = origin.place
        if place.reply_to is not None:
            await self._bot.record_delivery(job_id, REPLY_TO, place.reply_to)
        if place.thread_id is not None:
            await self._bot.record_delivery(job_id, THREAD, place.thread_id)
        options = [name for name, on in ((AS_FILE, origin.as_file), (SHOW_REASONING, origin.show_reasoning)) if on]
        if options:
            await self._bot.record_delivery(job_id, OPTIONS, options)

    def _spawn(
        self, handle: TurnHandle, origin: Origin, ids: Sequence[int], *, photo_sent: bool, resumed: bool
    ) -> None:
        task = asyncio.create_task(
            self._deliver(handle, origin, list(ids), photo_sent=photo_sent, resumed=resumed),
            name=f"ovbot-telegram-{handle.job_id[:8]}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, handle: TurnHandle, origin: Origin, ids: list[int], *, photo_sent: bool, resumed: bool
    ) -> None:
        place = origin.place
        drafts = (
            self._config.drafts
            and place.private
            and not resumed
            and handle.kind is JobKind.CHAT
            and place.chat_id not in self._no_drafts
        )
        target = TelegramReply(
            self._outbox,
            place,
            _Journal(self._bot, handle.job_id, handle.user),
            drafts=drafts,
            as_file=origin.as_file,
            picture_turn=handle.kind is JobKind.IMAGE,
            message_ids=ids,
            photo_sent=photo_sent,
            on_drafts_refused=lambda: self._no_drafts.add(place.chat_id),
            draft_refresh_s=self._config.draft_refresh_s,
            clock=self._clock,
            sleep=self._sleep,
        )
        delivered = False
        try:
            view: ReplyView = await render_live(
                _observed(handle, target),
                target,
                limit=MESSAGE_LIMIT,
                measure=utf16_length,
                min_interval_s=self._config.chat_interval_s,
                clock=self._clock,
                sleep=self._sleep,
                show_reasoning=origin.show_reasoning,
            )
            await target.finish(view)
            delivered = view.final and view.outcome != "interrupted"
        except ChatGone as exc:
            log.info("turn %s: %s; the reply is dropped", handle.job_id, exc)
            delivered = True
        except (TelegramError, OvbotError) as exc:
            # Telegram (or the core) rejects this reply outright: trying again after
            # every restart would fail the same way
            log.warning("turn %s: the reply could not be posted: %s: %s", handle.job_id, type(exc).__name__, exc)
            delivered = True
        except Exception as exc:  # a bug; the turn is tried again after the next start
            log.error("turn %s: delivering the reply failed: %s", handle.job_id, where(exc))
        finally:
            target.close()
        if delivered:
            await self._bot.mark_delivered(handle.job_id)


async def _observed(handle: TurnHandle, target: TelegramReply) -> AsyncIterator[TurnEvent]:
    """The turn's events, each shown to the target before the renderer folds it."""
    async with contextlib.aclosing(handle.__aiter__()) as events:
        async for event in events:
            target.observe(event)
            yield event


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
