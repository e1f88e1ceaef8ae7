"""Discord events translated into facade calls: slash commands, messages addressed to
the bot, and button presses.

Translation only. Who may chat here, who is an admin, whose job a cancel may touch,
what the limits are: every decision is the facade's (``ovbot.core.bot.Bot``), and a
refusal comes back as a typed error that ``Responder.guard`` turns into the reply.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import discord

from ovbot.adapters.common.replies import queue_text, usage_text
from ovbot.adapters.discord.delivery import Deliveries
from ovbot.adapters.discord.refs import interaction_refs, message_refs, strip_bot_mention, user_key, user_ref
from ovbot.adapters.discord.respond import Responder
from ovbot.core.bot import Bot
from ovbot.core.domain import ImageParams, JobState
from ovbot.core.errors import InvalidInput

log = logging.getLogger("ovbot.discord")

_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

HELP_TEXT = """\
**ovbot** runs a chat model and an image model privately on its owner's computer.
`/chat message` — talk (or mention me, reply to my messages, or DM me)
`/imagine prompt` — a picture (`negative`, `steps`, `cfg`, `seed`, `size` optional); 🎲 re-rolls it
`/reset [forget]` — start a new conversation here (`forget` deletes the old one)
`/persona [text]` — how I should behave in this channel (empty: back to normal)
`/think mode` — how long I think before answering here (off, short, full)
`/queue` · `/cancel` · `/usage` — your requests and your limits
Admins: `/limits`, `/admins`, `/block`, `/unblock`."""

#: a reply with its ping switched off does not mention the bot, and without the
#: (privileged) message-content intent Discord hides its text
UNREADABLE_REPLY = (
    "I cannot read replies that do not ping me: keep the @mention switched on when you reply, "
    "mention me, or use /chat."
)

#: reasoning choices shown to users; "default" clears the channel's own choice
THINK_MODES = ("off", "short", "full", "default")


@dataclass(frozen=True, slots=True)
class ImagineOptions:
    prompt: str
    negative: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    size: str | None = None

    def params(self) -> ImageParams:
        width = height = None
        if self.size is not None:
            match = _SIZE.match(self.size.strip().lower())
            if match is None:
                raise InvalidInput("size", f"{self.size[:20]!r} is not a size like 512x512")
            width, height = int(match.group(1)), int(match.group(2))
        return ImageParams(
            prompt=self.prompt,
            negative_prompt=self.negative or "",
            width=width,
            height=height,
            steps=self.steps,
            cfg=self.cfg,
            seed=self.seed,
        )


class Handlers:
    def __init__(self, bot: Bot, deliveries: Deliveries, responder: Responder) -> None:
        self._bot = bot
        self._deliveries = deliveries
        self._respond = responder

    # ------------------------------------------------------------------ turns
    async def chat(self, interaction: discord.Interaction, message: str) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            handle = await self._respond.in_time(interaction, self._bot.submit_turn(user, chat, message), ephemeral=False)
            await self._deliveries.follow_interaction(interaction, handle)

    async def imagine(self, interaction: discord.Interaction, options: ImagineOptions) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            params = options.params()
            handle = await self._respond.in_time(interaction, self._bot.imagine(user, chat, params), ephemeral=False)
            await self._deliveries.follow_interaction(interaction, handle)

    async def on_message(self, message: discord.Message, client: discord.Client) -> None:
        """A DM, a message that mentions the bot, or a reply to one of its messages is
        a chat turn; everything else is none of the bot's business."""
        me = client.user
        if me is None or message.author.bot or message.author.id == me.id:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        referenced = message.reference.resolved if message.reference is not None else None
        mentioned = any(user.id == me.id for user in message.mentions)
        replied = isinstance(referenced, discord.Message) and referenced.author.id == me.id
        if not (message.guild is None or mentioned or replied):
            return
        async with self._respond.guard_message(message):
            if replied and not mentioned and message.guild is not None and not message.content:
                await self._respond.reply(message, UNREADABLE_REPLY)
                return
            user, chat = message_refs(message)
            handle = await self._bot.submit_turn(user, chat, strip_bot_mention(message.content, me.id))
            await self._deliveries.follow_message(message, client, handle)

    # ------------------------------------------------------------------ buttons
    async def cancel_pressed(self, interaction: discord.Interaction, job_id: str) -> None:
        async with self._respond.guard(interaction):
            status = await self._respond.in_time(interaction, self._bot.cancel(job_id, user_ref(interaction.user)), ephemeral=True)
            if status.state is JobState.CANCELLED:
                await self._respond.send(interaction, "🚫 Cancelled.")
            else:
                await self._respond.send(interaction, f"Nothing to cancel: that request is {status.state.value}.")

    async def reroll_pressed(self, interaction: discord.Interaction, job_id: str) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            handle = await self._respond.in_time(interaction, self._bot.reroll(job_id, user, chat), ephemeral=False)
            await self._deliveries.follow_interaction(interaction, handle)

    # ------------------------------------------------------------------ chat settings
    async def reset(self, interaction: discord.Interaction, forget: bool) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            await self._respond.in_time(interaction, self._bot.reset(user, chat, forget), ephemeral=True)
            text = "🆕 New conversation; the old one is forgotten." if forget else "🆕 New conversation."
            await self._respond.send(interaction, text)

    async def persona(self, interaction: discord.Interaction, text: str | None) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            persona = text.strip() if text and text.strip() else None
            await self._respond.in_time(interaction, self._bot.set_persona(user, chat, persona), ephemeral=True)
            await self._respond.send(interaction, "🎭 Persona set for this channel." if persona else "🎭 Persona cleared.")

    async def think(self, interaction: discord.Interaction, mode: str) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            chosen = None if mode == "default" else mode
            now = await self._respond.in_time(interaction, self._bot.set_reasoning(user, chat, chosen), ephemeral=True)
            await self._respond.send(interaction, f"💭 Reasoning here: {now}.")

    # ------------------------------------------------------------------ the user's own
    async def queue(self, interaction: discord.Interaction) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            jobs = await self._respond.in_time(interaction, self._bot.queue(user, chat), ephemeral=True)
            await self._respond.send(interaction, queue_text(jobs))

    async def cancel(self, interaction: discord.Interaction) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            cancelled = await self._respond.in_time(interaction, self._bot.cancel_mine(user, chat), ephemeral=True)
            text = f"🚫 Cancelled {len(cancelled)} request(s)." if cancelled else "You have nothing waiting or running here."
            await self._respond.send(interaction, text)

    async def usage(self, interaction: discord.Interaction) -> None:
        async with self._respond.guard(interaction):
            user, chat = interaction_refs(interaction)
            report = await self._respond.in_time(interaction, self._bot.usage(user, chat), ephemeral=True)
            await self._respond.send(interaction, usage_text(report))

    async def help(self, interaction: discord.Interaction) -> None:
        async with self._respond.guard(interaction):
            await self._respond.send(interaction, HELP_TEXT)

    # ------------------------------------------------------------------ admins
    async def limits_show(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            requester = user_ref(interaction.user)
            report = await self._respond.in_time(interaction, self._bot.limits_show(requester, user_key(user)), ephemeral=True)
            await self._respond.send(interaction, usage_text(report))

    async def limits_set(
        self,
        interaction: discord.Interaction,
        user: discord.User | discord.Member,
        chat_per_window: int | None,
        images_per_day: int | None,
    ) -> None:
        async with self._respond.guard(interaction):
            requester = user_ref(interaction.user)
            work = self._bot.limits_set(
                requester, user_key(user), chat_per_window=chat_per_window, images_per_day=images_per_day
            )
            report = await self._respond.in_time(interaction, work, ephemeral=True)
            await self._respond.send(interaction, usage_text(report))

    async def limits_reset(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            requester = user_ref(interaction.user)
            report = await self._respond.in_time(interaction, self._bot.limits_reset(requester, user_key(user)), ephemeral=True)
            await self._respond.send(interaction, usage_text(report))

    async def admins_add(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            key = await self._respond.in_time(interaction, self._bot.admins_add(user_ref(interaction.user), user_key(user)), ephemeral=True)
            await self._respond.send(interaction, f"👑 {key} is now an admin.")

    async def admins_remove(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            key = await self._respond.in_time(interaction, self._bot.admins_remove(user_ref(interaction.user), user_key(user)), ephemeral=True)
            await self._respond.send(interaction, f"{key} is no longer an admin.")

    async def admins_list(self, interaction: discord.Interaction) -> None:
        async with self._respond.guard(interaction):
            keys = await self._respond.in_time(interaction, self._bot.admins_list(user_ref(interaction.user)), ephemeral=True)
            await self._respond.send(interaction, "Admins: " + (", ".join(keys) or "none"))

    async def block(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            key = await self._respond.in_time(interaction, self._bot.block(user_ref(interaction.user), user_key(user)), ephemeral=True)
            await self._respond.send(interaction, f"⛔ {key} is blocked on every platform.")

    async def unblock(self, interaction: discord.Interaction, user: discord.User | discord.Member) -> None:
        async with self._respond.guard(interaction):
            key = await self._respond.in_time(interaction, self._bot.unblock(user_ref(interaction.user), user_key(user)), ephemeral=True)
            await self._respond.send(interaction, f"{key} is no longer blocked.")
