"""discord.py's ``Client`` and ``CommandTree`` as ovbot uses them, built with everything
they need passed in (the style of discord.py's ``examples/advanced_startup.py``): the
commands, the handlers behind messages and buttons, the guilds to sync to.

Intents: guilds, guild messages and DMs only. No privileged intent is needed: Discord
sends the content of DMs and of messages that mention the bot without the
message-content intent, and those are exactly the messages ovbot answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from ovbot.adapters.discord.buttons import PERSISTENT_BUTTONS, ButtonActions
from ovbot.adapters.discord.commands import AnyCommand
from ovbot.adapters.discord.options import check_options
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.discord")

#: how long discord.py waits for more GUILD_CREATEs before READY counts as complete
GUILD_READY_TIMEOUT_S = 2.0
#: a 429 asking for longer than this is not slept out inside discord.py's channel
#: requests: it raises, and the live reply backs off and then pushes its newest state
MAX_RATELIMIT_WAIT_S = 5.0


class CommandSyncFailed(OvbotError):
    kind = "discord_sync"


def use_endpoints(api_base: str, gateway_url: str) -> None:
    """Point discord.py at ``api_base`` (REST, including the interaction and webhook
    routes) and ``gateway_url`` (the websocket).

    discord.py has no constructor option for either: they are class attributes,
    ``discord.http.Route.BASE`` (read whenever a request is built) and
    ``DiscordWebSocket.DEFAULT_GATEWAY`` (read when a connection opens without a resume
    URL), so the setting is process-global. ovbot sets both here, in one place, when the
    Discord adapter is built from settings; a process talks to one Discord (or
    Discord-compatible server) at a time.
    """
    discord.http.Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def intents() -> discord.Intents:
    chosen = discord.Intents.none()
    chosen.guilds = True
    chosen.guild_messages = True
    chosen.dm_messages = True
    return chosen


class ClientEvents(ButtonActions, Protocol):
    """What the client hands on: messages (and, through ``ButtonActions``, presses)."""

    async def on_message(self, message: discord.Message, client: discord.Client) -> None: ...


class CommandErrors(Protocol):
    async def command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None: ...


class OvbotTree(app_commands.CommandTree["OvbotClient"]):
    """A command tree whose unhandled errors reach ovbot's one error-reply place."""

    def __init__(self, client: OvbotClient, errors: CommandErrors) -> None:
        super().__init__(client)
        self._errors = errors

    async def on_error(self, interaction: discord.Interaction[OvbotClient], error: app_commands.AppCommandError) -> None:
        await self._errors.command_error(interaction, error)

    async def interaction_check(self, interaction: discord.Interaction[OvbotClient], /) -> bool:
        """Options of the wrong type never reach a handler (``OptionMismatch``, a
        ``CheckFailure``, is answered by ``on_error``)."""
        check_options(interaction)
        return True


class OvbotClient(discord.Client):
    def __init__(
        self,
        *,
        events: ClientEvents,
        errors: CommandErrors,
        commands: Sequence[AnyCommand],
        guild_ids: Sequence[int] = (),
        guild_ready_timeout: float = GUILD_READY_TIMEOUT_S,
    ) -> None:
        # ovbot has no voice: discord.py's warnings about missing voice libraries are noise
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            max_ratelimit_timeout=MAX_RATELIMIT_WAIT_S,
            chunk_guilds_at_startup=False,
            guild_ready_timeout=guild_ready_timeout,
        )
        self._events = events
        self._guild_ids = tuple(guild_ids)
        self.tree = OvbotTree(self, errors)
        for command in commands:
            self.tree.add_command(command)

    @property
    def button_actions(self) -> ButtonActions:
        return self._events

    async def setup_hook(self) -> None:
        """After login, before the gateway: register the persistent buttons (so presses
        on messages from before a restart work) and sync the slash commands, per guild
        when guilds are configured (instant) or globally (Discord may take a while to
        show changes)."""
        self.add_dynamic_items(*PERSISTENT_BUTTONS)
        if not self._guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global slash commands", len(synced))
            return
        for guild_id in self._guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
            except discord.HTTPException as exc:
                raise CommandSyncFailed(
                    f"could not sync the slash commands to guild {guild_id} ({exc.status} {exc.text or ''}); "
                    "is the bot in that guild, invited with the applications.commands scope?"
                ) from None
            log.info("synced %d slash commands to guild %s", len(synced), guild_id)

    async def on_message(self, message: discord.Message) -> None:
        await self._events.on_message(message, self)
