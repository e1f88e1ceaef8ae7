"""The slash commands ovbot offers on Discord: names, descriptions, typed and bounded
options, choices, and who sees them. Each callback hands its options to ``Handlers``.

The bounds come from settings (the longest message, the steps and CFG ranges, the image
sizes), so Discord's client already refuses what the core would; the core still checks
everything (a client can send anything). The admin commands (``/limits``, ``/admins``,
``/block``, ``/unblock``) are guild-only and carry Manage Server as their default
member permission, so Discord hides them from other members; whether someone *is* an
admin is still the core's decision (``OVBOT_ADMINS`` plus admins added at run time),
and the facade refuses everyone else.

No ``from __future__ import annotations`` here: discord.py reads each callback's
annotations to build its options, and the bounds are values of this module's
closures, which string annotations could not reach.
"""

from dataclasses import dataclass
from typing import Literal, Optional, Union

import discord
from discord import app_commands

from ovbot.adapters.discord.handlers import Handlers, ImagineOptions
from ovbot.core.config import Settings

#: Discord's longest string option
OPTION_MAX_CHARS = 6000
#: Discord offers at most 25 choices
MAX_CHOICES = 25
SEED_MAX = 2**32 - 1
LIMIT_MAX = 1_000_000
#: "Manage Server": members who have it see the admin commands by default
ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)

AnyCommand = Union[app_commands.Command[app_commands.Group, ..., None], app_commands.Group]
DiscordUser = Union[discord.User, discord.Member]


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """The option bounds, from settings."""

    message_chars: int
    persona_chars: int
    prompt_chars: int
    min_steps: int
    max_steps: int
    min_cfg: float
    max_cfg: float
    sizes: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> "CommandLimits":
        return cls(
            message_chars=min(settings.max_message_chars, OPTION_MAX_CHARS),
            persona_chars=min(settings.max_persona_chars, OPTION_MAX_CHARS),
            prompt_chars=min(settings.image_max_prompt_chars, OPTION_MAX_CHARS),
            min_steps=settings.image_min_steps,
            max_steps=settings.image_max_steps,
            min_cfg=settings.image_min_cfg,
            max_cfg=settings.image_max_cfg,
            sizes=tuple(settings.image_sizes),
        )


def build_commands(handlers: Handlers, limits: CommandLimits) -> list[AnyCommand]:
    """Every top-level command and group, ready for ``CommandTree.add_command``."""
    return [*_user_commands(handlers, limits), *_admin_commands(handlers)]


def _user_commands(handlers: Handlers, limits: CommandLimits) -> list[AnyCommand]:
    Message = app_commands.Range[str, 1, limits.message_chars]
    Prompt = app_commands.Range[str, 1, limits.prompt_chars]
    Persona = app_commands.Range[str, 1, limits.persona_chars]
    Steps = app_commands.Range[int, limits.min_steps, limits.max_steps]
    Cfg = app_commands.Range[float, limits.min_cfg, limits.max_cfg]
    Seed = app_commands.Range[int, 0, SEED_MAX]
    size_choices = [app_commands.Choice(name=size, value=size) for size in limits.sizes[:MAX_CHOICES]]

    @app_commands.command(name="chat", description="Talk to the bot (the reply streams in)")
    @app_commands.describe(message="What you want to say or ask")
    async def chat(interaction: discord.Interaction, message: Message) -> None:
        await handlers.chat(interaction, message)

    @app_commands.command(name="imagine", description="Draw a picture")
    @app_commands.describe(
        prompt="What the picture should show",
        negative="What it should not show",
        steps=f"Denoising steps ({limits.min_steps}-{limits.max_steps}; more is slower and finer)",
        cfg=f"How closely to follow the prompt ({limits.min_cfg:g}-{limits.max_cfg:g})",
        seed="Random seed: the same seed and settings give the same picture",
        size="Width x height in pixels",
    )
    @app_commands.choices(size=size_choices)
    async def imagine(
        interaction: discord.Interaction,
        prompt: Prompt,
        negative: Optional[Prompt] = None,
        steps: Optional[Steps] = None,
        cfg: Optional[Cfg] = None,
        seed: Optional[Seed] = None,
        size: Optional[str] = None,
    ) -> None:
        await handlers.imagine(interaction, ImagineOptions(prompt, negative, steps, cfg, seed, size))

    @app_commands.command(name="reset", description="Start a new conversation in this channel")
    @app_commands.describe(forget="Also delete the old conversation's text")
    async def reset(interaction: discord.Interaction, forget: bool = False) -> None:
        await handlers.reset(interaction, forget)

    @app_commands.command(name="persona", description="Set how the bot behaves in this channel (empty: clear)")
    @app_commands.describe(text="A persona added to the bot's instructions, e.g. 'a patient maths tutor'")
    async def persona(interaction: discord.Interaction, text: Optional[Persona] = None) -> None:
        await handlers.persona(interaction, text)

    @app_commands.command(name="think", description="How long the bot reasons before it answers in this channel")
    @app_commands.describe(mode="off: answer at once; short; full: think longest; default: the bot's setting")
    async def think(interaction: discord.Interaction, mode: Literal["off", "short", "full", "default"]) -> None:
        await handlers.think(interaction, mode)

    @app_commands.command(name="queue", description="Your requests waiting or running, with position and ETA")
    async def queue(interaction: discord.Interaction) -> None:
        await handlers.queue(interaction)

    @app_commands.command(name="cancel", description="Cancel your requests in this channel")
    async def cancel(interaction: discord.Interaction) -> None:
        await handlers.cancel(interaction)

    @app_commands.command(name="usage", description="Your limits and how much of them you used")
    async def usage(interaction: discord.Interaction) -> None:
        await handlers.usage(interaction)

    @app_commands.command(name="help", description="What the bot can do")
    async def help_(interaction: discord.Interaction) -> None:
        await handlers.help(interaction)

    return [chat, imagine, reset, persona, think, queue, cancel, usage, help_]


def _admin_commands(handlers: Handlers) -> list[AnyCommand]:
    Count = app_commands.Range[int, 0, LIMIT_MAX]

    limits = app_commands.Group(
        name="limits",
        description="Admins: a user's limits",
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )

    @limits.command(name="show", description="A user's limits, overrides and usage")
    @app_commands.describe(user="The user")
    async def limits_show(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.limits_show(interaction, user)

    @limits.command(name="set", description="Override a user's limits (0 turns a feature off for them)")
    @app_commands.describe(
        user="The user",
        chat_per_window="Chat messages per window",
        images_per_day="Pictures per day",
    )
    async def limits_set(
        interaction: discord.Interaction,
        user: DiscordUser,
        chat_per_window: Optional[Count] = None,
        images_per_day: Optional[Count] = None,
    ) -> None:
        await handlers.limits_set(interaction, user, chat_per_window, images_per_day)

    @limits.command(name="reset", description="Back to the default limits")
    @app_commands.describe(user="The user")
    async def limits_reset(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.limits_reset(interaction, user)

    admins = app_commands.Group(
        name="admins",
        description="Admins: who runs the bot",
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )

    @admins.command(name="add", description="Make a user an admin of the bot")
    @app_commands.describe(user="The user")
    async def admins_add(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.admins_add(interaction, user)

    @admins.command(name="remove", description="Remove an admin added here")
    @app_commands.describe(user="The user")
    async def admins_remove(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.admins_remove(interaction, user)

    @admins.command(name="list", description="Every admin of the bot")
    async def admins_list(interaction: discord.Interaction) -> None:
        await handlers.admins_list(interaction)

    @app_commands.command(name="block", description="Admins: block a user on every platform")
    @app_commands.describe(user="The user")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def block(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.block(interaction, user)

    @app_commands.command(name="unblock", description="Admins: unblock a user")
    @app_commands.describe(user="The user")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def unblock(interaction: discord.Interaction, user: DiscordUser) -> None:
        await handlers.unblock(interaction, user)

    return [limits, admins, block, unblock]
