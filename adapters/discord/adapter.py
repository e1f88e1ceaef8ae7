"""The Discord adapter: discord.py's client on the gateway, translating slash commands,
messages and button presses into facade calls and turns into live replies.

``build_discord_adapter`` is the composition root, called by ``ovbot serve`` (and the
tests) with the facade and settings: it points discord.py at the configured endpoints
and builds the responder, the deliveries, the handlers, the commands and the client,
each handed what it needs. ``start`` logs in (REST; the commands are synced), connects
the gateway, waits for READY, then finishes the replies left undelivered by the last
run. ``stop`` lets replies in flight finish for a grace period, then disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import aiohttp
import discord
from pydantic import SecretStr

from ovbot.adapters.base import AdapterBase
from ovbot.adapters.common import Clock
from ovbot.adapters.discord.client import GUILD_READY_TIMEOUT_S, OvbotClient, use_endpoints
from ovbot.adapters.discord.commands import CommandLimits, build_commands
from ovbot.adapters.discord.delivery import EDIT_INTERVAL_S, Deliveries
from ovbot.adapters.discord.handlers import Handlers
from ovbot.adapters.discord.refs import PLATFORM
from ovbot.adapters.discord.respond import DEFER_AFTER_S, Responder
from ovbot.core.app import Check
from ovbot.core.bot import Bot
from ovbot.core.config import Settings
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.discord")

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0


class DiscordUnavailable(OvbotError):
    """The adapter cannot start (bad token, Discord unreachable, no READY)."""

    kind = "discord"


@dataclass(frozen=True, slots=True)
class DiscordOptions:
    """Timing knobs with production defaults; tests shorten them (and move the wall
    clock to expire interaction tokens)."""

    edit_interval_s: float = EDIT_INTERVAL_S
    defer_after_s: float = DEFER_AFTER_S
    ready_timeout_s: float = READY_TIMEOUT_S
    stop_grace_s: float = STOP_GRACE_S
    guild_ready_timeout_s: float = GUILD_READY_TIMEOUT_S
    wall_clock: Clock = time.time


def build_discord_adapter(bot: Bot, settings: Settings, options: DiscordOptions | None = None) -> DiscordAdapter:
    if settings.discord_token is None:
        raise DiscordUnavailable("OVBOT_DISCORD_TOKEN is not set")
    options = options or DiscordOptions()
    use_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    responder = Responder(defer_after_s=options.defer_after_s)
    deliveries = Deliveries(bot, edit_interval_s=options.edit_interval_s, wall_clock=options.wall_clock)
    handlers = Handlers(bot, deliveries, responder)
    client = OvbotClient(
        events=handlers,
        errors=responder,
        commands=build_commands(handlers, CommandLimits.from_settings(settings)),
        guild_ids=settings.discord_guild_ids,
        guild_ready_timeout=options.guild_ready_timeout_s,
    )
    return DiscordAdapter(
        client,
        deliveries,
        settings.discord_token,
        api_base=settings.discord_api_base,
        ready_timeout_s=options.ready_timeout_s,
        stop_grace_s=options.stop_grace_s,
    )


class DiscordAdapter(AdapterBase):
    name = PLATFORM

    def __init__(
        self,
        client: OvbotClient,
        deliveries: Deliveries,
        token: SecretStr,
        *,
        api_base: str,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.client = client
        self._deliveries = deliveries
        self._token = token
        self._api_base = api_base
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._login()
            self._runner = asyncio.create_task(self.client.connect(reconnect=True), name="discord gateway")
            await self._wait_ready(self._runner)
        except BaseException:
            await self._close()
            raise
        user = self.client.user
        log.info("connected to Discord as %s (%s)", user, user.id if user else "?")
        waiting = await self._deliveries.redeliver(self.client)
        if waiting:
            log.info("finishing %d replies left undelivered by the last run", waiting)

    async def stop(self) -> None:
        await self._deliveries.drain(self._stop_grace_s)
        await self._close()

    def health(self) -> Check:
        runner = self._runner
        if runner is None or self.client.is_closed():
            return Check(False, "stopped")
        if runner.done():
            return Check(False, "disconnected")
        if not self.client.is_ready():
            return Check(False, "connecting")
        latency = self.client.latency
        shown = f", heartbeat {latency * 1000:.0f} ms" if math.isfinite(latency) else ""
        return Check(True, f"connected{shown}")

    # ------------------------------------------------------------------ internals
    async def _login(self) -> None:
        try:
            await self.client.login(self._token.get_secret_value())
        except discord.LoginFailure:
            raise DiscordUnavailable(
                "Discord refused OVBOT_DISCORD_TOKEN: copy the bot token again from the Developer Portal "
                "(Bot > Reset Token)"
            ) from None
        except discord.HTTPException as exc:
            raise DiscordUnavailable(f"Discord answered {exc.status} at login: {exc.text or exc}") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise DiscordUnavailable(
                f"cannot reach Discord at {self._api_base} ({type(exc).__name__}: {exc}); check the network "
                "or OVBOT_DISCORD_API_BASE"
            ) from None

    async def _wait_ready(self, runner: asyncio.Task[None]) -> None:
        ready = asyncio.ensure_future(self.client.wait_until_ready())
        try:
            done, _ = await asyncio.wait({ready, runner}, timeout=self._ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
        if ready in done:
            return
        if runner in done:
            error = runner.exception() if not runner.cancelled() else None
            if isinstance(error, discord.PrivilegedIntentsRequired):
                raise DiscordUnavailable("Discord refused the gateway intents") from None
            raise DiscordUnavailable(f"the gateway connection failed: {type(error).__name__}: {error}") from None
        raise DiscordUnavailable(f"no READY from the Discord gateway within {self._ready_timeout_s:g} s")

    async def _close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # logged, not raised: it must not hide why the adapter stopped
            log.warning("closing the Discord client failed", exc_info=True)
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
