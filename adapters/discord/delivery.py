"""Following turns until their reply is posted: one task per reply in flight, the
shared live-reply renderer driving a ``DiscordReplyTarget``, the delivery bookkeeping
that makes a restart post every reply exactly once.

A reply is marked delivered (``Bot.mark_delivered``) once its final state is on
Discord. A turn interrupted by a shutdown, or whose delivery failed (Discord down,
the adapter stopped before it finished), stays undelivered: the next start claims it
(``Bot.claim_undelivered``), resumes its events from the first, and carries on in the
messages recorded so far (``record_delivery``) instead of posting them again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord

from ovbot.adapters.common import Clock, Sleep, render_live, utf16_length
from ovbot.adapters.common.backoff import Backoff, until_done
from ovbot.adapters.discord.refs import PLATFORM
from ovbot.adapters.discord.retry import NO_ANSWER, retry_later_on_trouble
from ovbot.adapters.discord.target import DiscordReplyTarget, Recorder
from ovbot.core.bot import Bot, TurnHandle
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.discord")

MESSAGE_LIMIT = 2000
#: least time between two pushes of one reply (Discord allows ~5 edits per 5 s)
EDIT_INTERVAL_S = 1.0
#: delivery record key: the user's message a message-triggered reply answers
REPLY_TO = "reply_to"
#: Discord's code for "Interaction has already been acknowledged"
_ALREADY_ACKNOWLEDGED = 40060


class Deliveries:
    def __init__(
        self,
        bot: Bot,
        *,
        edit_interval_s: float = EDIT_INTERVAL_S,
        wall_clock: Clock = time.time,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._interval = edit_interval_s
        self._wall_clock = wall_clock
        self._clock = clock
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ new turns
    async def follow_interaction(self, interaction: discord.Interaction, handle: TurnHandle) -> None:
        """Defer (the "thinking" state) and show the turn in the interaction's reply."""
        live = True
        original_id: int | None = None
        record = self._recorder(handle.job_id)
        if not interaction.response.is_done():
            live, original_id = await _defer(interaction)
        if original_id is not None:  # where the reply will be, before anything is shown
            await record("messages", [str(original_id)])
        channel = interaction.client.get_partial_messageable(_channel_id(interaction), guild_id=interaction.guild_id)
        target = DiscordReplyTarget(
            bot=self._bot,
            owner=handle.user,
            channel=channel,
            record=record,
            wall_clock=self._wall_clock,
            interaction=interaction if live else None,
            original_id=original_id,
            cancel_job_id=handle.job_id,
            job_id=handle.job_id,
        )
        self._spawn(handle, target)

    async def follow_message(self, message: discord.Message, client: discord.Client, handle: TurnHandle) -> None:
        """Show the turn as a reply to the user's message (recorded first: a reply
        that had posted nothing before a restart still answers that message)."""
        guild_id = message.guild.id if message.guild is not None else None
        try:
            await self._recorder(handle.job_id)(REPLY_TO, [str(message.id)])
        except Exception as exc:  # the turn is queued: its live reply must start all the same
            log.warning("the reply %s: its question could not be recorded (%s)", handle.job_id[:8], type(exc).__name__)
        target = DiscordReplyTarget(
            bot=self._bot,
            owner=handle.user,
            channel=client.get_partial_messageable(message.channel.id, guild_id=guild_id),
            record=self._recorder(handle.job_id),
            wall_clock=self._wall_clock,
            reply_to=message.to_reference(fail_if_not_exists=False),
            cancel_job_id=handle.job_id,
            job_id=handle.job_id,
        )
        self._spawn(handle, target)

    # ------------------------------------------------------------------ after a restart
    async def redeliver(self, client: discord.Client) -> int:
        """Claim the Discord turns whose reply was never marked delivered and finish
        each in the messages it already has; returns how many."""
        count = 0
        for turn in await self._bot.claim_undelivered(PLATFORM):
            try:
                handle = await self._bot.resume(turn.job_id, turn.user)
            except OvbotError as exc:
                log.warning("cannot resume the reply %s: %s", turn.job_id[:8], exc.user_message)
                continue
            ids = [int(i) for i in turn.delivery.get("messages", []) if str(i).isdigit()]
            guild_id = int(turn.chat.parent_id) if turn.chat.parent_id and turn.chat.parent_id.isdigit() else None
            channel_id = int(turn.chat.chat_id)
            target = DiscordReplyTarget(
                bot=self._bot,
                owner=turn.user,
                channel=client.get_partial_messageable(channel_id, guild_id=guild_id),
                record=self._recorder(turn.job_id),
                wall_clock=self._wall_clock,
                reply_to=_reply_reference(turn.delivery.get(REPLY_TO), channel_id, guild_id),
                message_ids=ids,
                images_sent=[str(i) for i in turn.delivery.get("images", [])],
                job_id=turn.job_id,
            )
            log.info("delivering reply %s that was left undelivered (%s)", turn.job_id[:8], turn.state.value)
            self._spawn(handle, target)
            count += 1
        return count

    # ------------------------------------------------------------------ lifecycle
    async def drain(self, grace_s: float) -> None:
        """Let the replies in flight finish for up to ``grace_s``; cancel the rest
        (they stay undelivered and are finished after the next start)."""
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.info("%d replies were still being delivered; they continue after the next start", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ internals
    def _recorder(self, job_id: str) -> Recorder:
        async def record(key: str, values: list[str]) -> None:
            await self._bot.record_delivery(job_id, key, values)

        return record

    def _spawn(self, handle: TurnHandle, target: DiscordReplyTarget) -> None:
        if self._closing:  # the client is about to close: the next start delivers it
            log.info("reply %s is left for the next start (stopping)", handle.job_id[:8])
            return
        task = asyncio.create_task(self._deliver(handle, target), name=f"discord reply {handle.job_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, handle: TurnHandle, target: DiscordReplyTarget) -> None:
        try:
            view = await render_live(
                handle,
                target,
                limit=MESSAGE_LIMIT,
                measure=utf16_length,
                min_interval_s=self._interval,
                clock=self._clock,
                sleep=self._sleep,
            )
            if view.final and view.outcome != "interrupted":  # interrupted: it goes on after the restart
                await self._finish(target)
                await self._bot.mark_delivered(handle.job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the reply %s could not be delivered; it is retried after the next start", handle.job_id[:8])

    async def _finish(self, target: DiscordReplyTarget) -> None:
        """Take the cancel button off, waiting out Discord's bad moments like the
        renderer does (the reply is not delivered while it still offers to cancel)."""
        backoff = Backoff()

        async def take_the_button_off() -> None:
            with retry_later_on_trouble(backoff):
                await target.finish()

        await until_done(take_the_button_off, self._sleep, min_wait_s=self._interval)


async def _defer(interaction: discord.Interaction) -> tuple[bool, int | None]:
    """Acknowledge the interaction ("thinking"): (whether the reply goes through the
    interaction, the id of the deferred message if known). A request that got no answer
    may have arrived all the same: it is sent once more (Discord allows 3 s), and
    "already acknowledged" means the first one did. If neither answer arrives, the reply
    tries the deferred message anyway: Discord answers "unknown message" if there is
    none, and the reply goes to the channel. Refused outright: the channel."""
    for attempt in (1, 2):
        try:
            callback = await interaction.response.defer(thinking=True)
        except discord.HTTPException as exc:
            if exc.code == _ALREADY_ACKNOWLEDGED:
                return True, None
            log.warning("could not defer the interaction (%s %s); replying in the channel", exc.status, exc.code)
            return False, None
        except NO_ANSWER as exc:
            log.info("deferring the interaction got no answer (%s, try %d)", type(exc).__name__, attempt)
        else:
            return True, callback.message_id if callback is not None else None
    return True, None


def _reply_reference(recorded: object, channel_id: int, guild_id: int | None) -> discord.MessageReference | None:
    """The user's message a message-triggered reply answers, as recorded when it began."""
    ids = [int(i) for i in recorded if str(i).isdigit()] if isinstance(recorded, list) else []
    if not ids:
        return None
    return discord.MessageReference(message_id=ids[0], channel_id=channel_id, guild_id=guild_id, fail_if_not_exists=False)


def _channel_id(interaction: discord.Interaction) -> int:
    if interaction.channel_id is None:
        raise ValueError("interaction without a channel")
    return interaction.channel_id
