"""Discord identities as the core's platform-neutral references.

A Discord user is ``discord:<user id>`` (the syntax admins use in ``OVBOT_ADMINS``),
with the member's guild roles (``OVBOT_ALLOWED_ROLES=discord:<role id>``; none in DMs);
a chat is the channel (a guild text channel, a thread or a DM), with the guild as its
``parent_id`` so ``OVBOT_ALLOWED_CHATS=discord:<guild id>`` admits every channel of a
guild. Pure translation: nothing here decides anything.
"""

from __future__ import annotations

import re

import discord

from ovbot.core.domain import ChatRef, UserRef

PLATFORM = "discord"


def user_ref(user: discord.User | discord.Member) -> UserRef:
    roles = frozenset(str(role.id) for role in user.roles) if isinstance(user, discord.Member) else frozenset()
    return UserRef(PLATFORM, str(user.id), user.display_name, roles)


def user_key(user: discord.User | discord.Member) -> str:
    """The key an admin command names a user by (``discord:<id>``)."""
    return user_ref(user).key


def chat_ref(channel_id: int, guild_id: int | None) -> ChatRef:
    return ChatRef(PLATFORM, str(channel_id), None if guild_id is None else str(guild_id))


def interaction_refs(interaction: discord.Interaction) -> tuple[UserRef, ChatRef]:
    """Who asked, and where. An interaction always comes from a channel (a DM counts)."""
    channel_id = interaction.channel_id
    if channel_id is None:  # not sent by Discord for commands and buttons; be explicit
        raise ValueError("interaction without a channel")
    return user_ref(interaction.user), chat_ref(channel_id, interaction.guild_id)


def message_refs(message: discord.Message) -> tuple[UserRef, ChatRef]:
    guild_id = message.guild.id if message.guild is not None else None
    return user_ref(message.author), chat_ref(message.channel.id, guild_id)


def strip_bot_mention(content: str, bot_id: int) -> str:
    """The message without the ``<@bot>`` mentions that addressed it."""
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()
