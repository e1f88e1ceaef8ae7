"""Where one reply lives on Discord: the ``ReplyTarget`` the shared live-reply renderer
(``ovbot.adapters.common.render_live``) drives.

Message 0 of a slash command's reply is the interaction's original response (deferred
at once, then edited as the turn goes: queued, thinking, streamed text, picture
steps); messages 1.. are follow-ups. The interaction token behind those webhook routes
lives 15 minutes: shortly before that (or as soon as Discord refuses the token), and
for every turn resumed after a restart (tokens are never stored), the reply carries on
through the bot's own channel routes: its messages are edited as channel messages (a
non-ephemeral interaction response is the bot's message) and new ones are posted to
the channel. A message-triggered turn (a mention, a reply, a DM) uses the channel
routes from the start, its first message a reply to the user's.

Every message goes out with ``AllowedMentions.none()``: the model's text is untrusted
and must never ping @everyone, a role or a user (OWASP LLM05). A 429 that discord.py
did not absorb itself, a 5xx or a request that got no answer becomes ``RetryLater``
(``retry.py``): the renderer backs off and then pushes the newest state, instead of
queueing stale ones or abandoning the reply. Every message created is recorded
through the facade (``record_delivery``) so a restart edits it instead of posting anew.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import discord

from ovbot.adapters.common import Clock
from ovbot.adapters.common.backoff import Backoff
from ovbot.adapters.discord.buttons import cancel_view, reroll_view
from ovbot.adapters.discord.picture import picture_embed, picture_file
from ovbot.adapters.discord.retry import retry_later_on_trouble
from ovbot.core.bot import Bot
from ovbot.core.domain import UserRef
from ovbot.core.turns import ImageFile, ImageReady

log = logging.getLogger("ovbot.discord")

NO_PINGS = discord.AllowedMentions.none()
#: interaction tokens work 15 minutes; stop using one this long before (clock skew,
#: a request in flight) and go through the channel instead
TOKEN_MARGIN_S = 30.0
#: the part of the turn's id that starts each message nonce (Discord allows 25 characters)
NONCE_BASE_CHARS = 16
#: Discord's codes for "this token is no longer valid"
_TOKEN_CODES = frozenset({50027, 10015})
_UNKNOWN_MESSAGE = 10008

#: (delivery key, values) -> persisted through Bot.record_delivery
Recorder = Callable[[str, list[str]], Awaitable[None]]


def token_refused(exc: discord.HTTPException) -> bool:
    return exc.status == 401 or exc.code in _TOKEN_CODES


class DiscordReplyTarget:
    """One reply's messages. ``original_id`` is the deferred response's message (known
    and recorded at defer time, before anything is shown); ``message_ids`` and
    ``images_sent`` continue a reply begun before a restart; ``cancel_job_id`` puts a
    cancel button on the first message while the turn runs (``finish`` removes it).
    ``job_id`` (the turn) names the messages it posts in the channel: each send carries
    a nonce Discord enforces, so a send repeated after its answer was lost (a dropped
    connection, a timeout, a crash before the id was recorded) returns the message
    the first one made instead of posting it twice."""

    def __init__(
        self,
        *,
        bot: Bot,
        owner: UserRef,
        channel: discord.PartialMessageable,
        record: Recorder,
        wall_clock: Clock,
        interaction: discord.Interaction | None = None,
        original_id: int | None = None,
        reply_to: discord.MessageReference | None = None,
        message_ids: Sequence[int] = (),
        images_sent: Collection[str] = (),
        cancel_job_id: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self._bot = bot
        self._owner = owner
        self._channel = channel
        self._record = record
        self._wall_clock = wall_clock
        self._interaction = interaction
        self._reply_to = reply_to
        self._ids: list[int] = list(message_ids)
        #: messages made through the interaction token (editable through it while it lives)
        self._via_token: set[int] = set()
        self._original_id = original_id if interaction is not None else None
        if self._original_id is not None and not self._ids:
            self._ids = [self._original_id]
            self._via_token.add(self._original_id)
        self._images_sent: list[str] = list(images_sent)
        self._cancel_job_id = cancel_job_id
        #: starts the nonce of every channel message this reply creates
        self._nonce_base = (job_id or cancel_job_id or secrets.token_hex(8))[:NONCE_BASE_CHARS]
        self._reposts = 0
        #: the first message was written by this target (it gets the cancel button then)
        self._first_written = False
        #: a resumed reply may carry a cancel button from before the restart
        self._buttons_on_first = bool(message_ids)
        self._token_dead = interaction is None
        self._backoff = Backoff()

    @property
    def message_ids(self) -> list[int]:
        return list(self._ids)

    def token_alive(self) -> bool:
        interaction = self._interaction
        if interaction is None or self._token_dead:
            return False
        if self._wall_clock() < interaction.expires_at.timestamp() - TOKEN_MARGIN_S:
            return True
        self._drop_token("it is about to expire")
        return False

    def _drop_token(self, why: str) -> None:
        if not self._token_dead:
            log.info("reply continues in the channel: the interaction token %s", why)
        self._token_dead = True

    # ------------------------------------------------------------------ ReplyTarget
    async def show(self, index: int, text: str) -> None:
        with retry_later_on_trouble(self._backoff):
            if index < len(self._ids):
                await self._edit(index, text)
            else:
                await self._add(text)

    async def delete(self, index: int) -> None:
        message_id = self._ids[index]
        with retry_later_on_trouble(self._backoff):
            try:
                if message_id in self._via_token and message_id != self._original_id and self.token_alive():
                    assert self._interaction is not None
                    await self._interaction.followup.delete_message(message_id)
                else:
                    await self._channel.get_partial_message(message_id).delete()
            except discord.NotFound:
                log.debug("message %s was already gone", message_id)
        del self._ids[index]
        await self._save_ids()

    async def send_image(self, image: ImageReady) -> None:
        if image.job_id in self._images_sent:
            return  # posted before a restart
        picture = await self._bot.image(image.job_id, self._owner)
        with retry_later_on_trouble(self._backoff):
            message = await self._send_picture(picture, image.params or picture.params, image.job_id)
        log.debug("picture of %s posted as message %s", image.job_id[:8], message.id)
        self._images_sent.append(image.job_id)
        await asyncio.shield(self._record("images", list(self._images_sent)))

    async def finish(self) -> None:
        """The turn is over: take the cancel button off the first message."""
        if not self._ids or not self._buttons_on_first:
            return
        message_id = self._ids[0]
        if message_id in self._via_token and self.token_alive():
            assert self._interaction is not None
            try:
                if message_id == self._original_id:
                    await self._interaction.edit_original_response(view=None, allowed_mentions=NO_PINGS)
                else:
                    await self._interaction.followup.edit_message(message_id, view=None, allowed_mentions=NO_PINGS)
                self._buttons_on_first = False
                return
            except discord.HTTPException as exc:
                if not token_refused(exc):
                    raise
                self._drop_token("was refused")
        try:
            await self._channel.get_partial_message(message_id).edit(view=None, allowed_mentions=NO_PINGS)
        except discord.NotFound:
            log.debug("message %s was deleted before its buttons could be removed", message_id)
        self._buttons_on_first = False

    # ------------------------------------------------------------------ internals
    async def _save_ids(self) -> None:
        """Shielded: a stop that cancels the reply must not lose the fact that a
        message was posted (the next start would post it again)."""
        await asyncio.shield(self._record("messages", [str(i) for i in self._ids]))

    def _first_view(self, index: int) -> discord.ui.View | None:
        """The cancel button, on the first write of the first message only."""
        if index != 0 or self._first_written or self._cancel_job_id is None:
            return None
        return cancel_view(self._cancel_job_id)

    def _wrote(self, index: int, view: discord.ui.View | None) -> None:
        if index == 0:
            self._first_written = True
            self._buttons_on_first = self._buttons_on_first or view is not None

    async def _add(self, text: str) -> None:
        first = not self._ids
        view = self._first_view(0) if first else None
        message: discord.Message | None = None
        if self.token_alive():
            message = await self._add_with_token(text, first, view)
        if message is None:
            nonce = f"{self._nonce_base}.{len(self._ids)}"
            message = await self._channel_send(text, view, reference=self._reply_to if first else None, nonce=nonce)
            if message.content != text:  # an earlier try made it (its answer was lost), with older text
                message = await message.edit(content=text, allowed_mentions=NO_PINGS)
        self._ids.append(message.id)
        if first:
            self._wrote(0, view)
        await self._save_ids()

    async def _add_with_token(self, text: str, first: bool, view: discord.ui.View | None) -> discord.Message | None:
        """The original response (first) or a follow-up; None when the token is refused."""
        interaction = self._interaction
        assert interaction is not None
        try:
            if first:
                message: discord.Message
                if view is None:
                    message = await interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
                else:
                    message = await interaction.edit_original_response(
                        content=text, allowed_mentions=NO_PINGS, view=view
                    )
                self._original_id = message.id
            else:
                message = await interaction.followup.send(text, wait=True, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            if first and exc.code == _UNKNOWN_MESSAGE:  # the interaction was never acknowledged
                self._drop_token("has no response to edit")
                return None
            if not token_refused(exc):
                raise
            self._drop_token("was refused")
            return None
        self._via_token.add(message.id)
        return message

    async def _channel_send(
        self, text: str, view: discord.ui.View | None, *, reference: discord.MessageReference | None, nonce: str
    ) -> discord.Message:
        channel = self._channel
        if reference is not None and view is not None:
            return await channel.send(text, allowed_mentions=NO_PINGS, reference=reference, view=view, nonce=nonce)
        if reference is not None:
            return await channel.send(text, allowed_mentions=NO_PINGS, reference=reference, nonce=nonce)
        if view is not None:
            return await channel.send(text, allowed_mentions=NO_PINGS, view=view, nonce=nonce)
        return await channel.send(text, allowed_mentions=NO_PINGS, nonce=nonce)

    async def _edit(self, index: int, text: str) -> None:
        message_id = self._ids[index]
        view = self._first_view(index)
        if message_id in self._via_token and self.token_alive():
            interaction = self._interaction
            assert interaction is not None
            try:
                if message_id == self._original_id and view is not None:
                    await interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS, view=view)
                elif message_id == self._original_id:
                    await interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
                else:
                    await interaction.followup.edit_message(message_id, content=text, allowed_mentions=NO_PINGS)
                self._wrote(index, view)
                return
            except discord.NotFound as exc:
                if exc.code != _UNKNOWN_MESSAGE:
                    raise
                await self._repost(index, text)
                return
            except discord.HTTPException as exc:
                if not token_refused(exc):
                    raise
                self._drop_token("was refused")
        partial = self._channel.get_partial_message(message_id)
        try:
            if view is not None:
                await partial.edit(content=text, allowed_mentions=NO_PINGS, view=view)
            else:
                await partial.edit(content=text, allowed_mentions=NO_PINGS)
            self._wrote(index, view)
        except (discord.NotFound, discord.Forbidden):
            await self._repost(index, text)

    async def _repost(self, index: int, text: str) -> None:
        """Someone deleted a message of the reply: post it again rather than lose it."""
        log.info("message %s of a reply cannot be edited any more; posting it again", self._ids[index])
        view = self._first_view(index)
        nonce = f"{self._nonce_base}.r{index}.{self._reposts}"  # the same for a retry of this repost
        message = await self._channel_send(text, view, reference=self._reply_to if index == 0 else None, nonce=nonce)
        self._reposts += 1
        self._ids[index] = message.id
        self._via_token.discard(message.id)
        if index == 0:
            self._buttons_on_first = False
            self._wrote(index, view)
        await self._save_ids()

    async def _send_picture(self, picture: ImageFile, params: Mapping[str, object], job_id: str) -> discord.Message:
        file = picture_file(picture)
        embed = picture_embed(params, file.filename)
        if self.token_alive():
            interaction = self._interaction
            assert interaction is not None
            try:
                message = await interaction.followup.send(
                    file=file, embed=embed, view=reroll_view(job_id), allowed_mentions=NO_PINGS, wait=True
                )
                self._via_token.add(message.id)
                return message
            except discord.HTTPException as exc:
                if not token_refused(exc):
                    raise
                self._drop_token("was refused")
                file = picture_file(picture)  # the refused request consumed the first upload
        return await self._channel.send(
            file=file,
            embed=embed,
            view=reroll_view(job_id),
            allowed_mentions=NO_PINGS,
            nonce=f"{job_id[:NONCE_BASE_CHARS]}.p",
        )
