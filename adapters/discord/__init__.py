"""The Discord adapter: discord.py's client and slash commands, translated into calls of
the core facade (``ovbot.core.bot.Bot``). ``build_discord_adapter`` builds it from
settings; ``ovbot serve`` runs it when ``OVBOT_DISCORD_TOKEN`` is set."""

from ovbot.adapters.discord.adapter import DiscordAdapter, DiscordOptions, DiscordUnavailable, build_discord_adapter
from ovbot.adapters.discord.invite import invite_url

__all__ = ["DiscordAdapter", "DiscordOptions", "DiscordUnavailable", "build_discord_adapter", "invite_url"]
