"""The one place where Discord replies that are not live turns are sent, and where every
error becomes the user's reply.

A refusal or failure raised by the core (``OvbotError``) becomes one ephemeral message
worded by ``adapters/common/replies.py`` (only the asker sees it; the channel is not
spammed with "you reached your limit"). Anything else that goes wrong is logged with its
traceback and answered with one generic line: nothing is swallowed silently. Plain
messages (mentions, DMs) cannot be answered ephemerally, so their errors are a normal
reply to the user's message.

Discord wants an answer to an interaction within 3 seconds. Facade calls are normally
milliseconds, so commands call the facade first and then answer (an error can then
still be ephemeral); ``in_time`` defers the response if a call is still running after
``defer_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import discord
from discord import app_commands

from ovbot.adapters.common.replies import error_text
from ovbot.adapters.common.split import split_message, utf16_length
from ovbot.adapters.discord.retry import NO_ANSWER
from ovbot.core.errors import OvbotError

log = logging.getLogger("ovbot.discord")

T = TypeVar("T")

NO_PINGS = discord.AllowedMentions.none()
MESSAGE_LIMIT = 2000
#: a reply must start within 3 s; defer when the work takes longer than this
DEFER_AFTER_S = 2.0
SOMETHING_WENT_WRONG = "⚠️ Something went wrong on the bot's side; it has been logged. Please try again."
COMMAND_PROBLEM = "⚠️ That command could not be run: {reason}"
#: Discord sent options this version of the command does not have (its command list is
#: out of date, or a client made them up): the user can only retry or update the command
OUT_OF_DATE_COMMAND = (
    "⚠️ That command's options do not match this bot's version of /{name} (Discord may still be "
    "updating its command list). Please try again in a minute, choosing each option from the list."
)


def clip(text: str) -> str:
    """The first message's worth of ``text`` (replies here are short; never cut mid-word)."""
    if utf16_length(text) <= MESSAGE_LIMIT:
        return text
    return split_message(text, MESSAGE_LIMIT - 1, measure=utf16_length)[0] + "…"


class Responder:
    def __init__(self, *, defer_after_s: float = DEFER_AFTER_S) -> None:
        self._defer_after_s = defer_after_s

    # ------------------------------------------------------------------ interactions
    async def send(self, interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
        """Answer the interaction (or follow up, when it was answered or deferred)."""
        text = clip(text)
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=ephemeral, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(text, ephemeral=ephemeral, allowed_mentions=NO_PINGS)

    async def in_time(self, interaction: discord.Interaction, work: Awaitable[T], *, ephemeral: bool) -> T:
        """Await ``work``, deferring the response if it is not done in time."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=self._defer_after_s)
        if not done and not interaction.response.is_done():
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        return await task

    @contextlib.asynccontextmanager
    async def guard(self, interaction: discord.Interaction) -> AsyncIterator[None]:
        """Run a command or button handler; whatever it raises becomes one reply."""
        try:
            yield
        except OvbotError as exc:
            log.debug("refused %s: %s", _what(interaction), exc.kind)
            await self._best_effort(interaction, error_text(exc))
        except Exception:
            log.exception("%s failed", _what(interaction))
            await self._best_effort(interaction, SOMETHING_WENT_WRONG)

    async def command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """What discord.py itself could not run (an option it could not convert, a
        command this client does not know)."""
        original = getattr(error, "original", None)
        if isinstance(original, OvbotError):
            await self._best_effort(interaction, error_text(original))
            return
        if isinstance(error, app_commands.CommandSignatureMismatch):
            log.warning("%s got options that do not match its signature; are the commands synced?", _what(interaction))
            await self._best_effort(interaction, OUT_OF_DATE_COMMAND.format(name=error.command.qualified_name))
            return
        if isinstance(error, (app_commands.TransformerError, app_commands.CommandNotFound, app_commands.CheckFailure)):
            log.info("%s could not run: %s", _what(interaction), type(error).__name__)
            await self._best_effort(interaction, COMMAND_PROBLEM.format(reason=str(error) or type(error).__name__))
            return
        log.error("%s failed", _what(interaction), exc_info=error)
        await self._best_effort(interaction, SOMETHING_WENT_WRONG)

    async def _best_effort(self, interaction: discord.Interaction, text: str) -> None:
        try:
            await self.send(interaction, text)
        except discord.HTTPException as exc:
            log.warning("could not answer %s (%s %s)", _what(interaction), exc.status, exc.code)
        except NO_ANSWER as exc:
            log.warning("could not answer %s (%s)", _what(interaction), type(exc).__name__)

    # ------------------------------------------------------------------ messages
    @contextlib.asynccontextmanager
    async def guard_message(self, message: discord.Message) -> AsyncIterator[None]:
        try:
            yield
        except OvbotError as exc:
            log.debug("refused a message: %s", exc.kind)
            await self._reply_best_effort(message, error_text(exc))
        except Exception:
            log.exception("a message could not be handled")
            await self._reply_best_effort(message, SOMETHING_WENT_WRONG)

    async def reply(self, message: discord.Message, text: str) -> None:
        await message.channel.send(
            clip(text), reference=message.to_reference(fail_if_not_exists=False), allowed_mentions=NO_PINGS
        )

    async def _reply_best_effort(self, message: discord.Message, text: str) -> None:
        try:
            await self.reply(message, text)
        except discord.HTTPException as exc:
            log.warning("could not reply to a message (%s %s)", exc.status, exc.code)
        except NO_ANSWER as exc:
            log.warning("could not reply to a message (%s)", type(exc).__name__)


def _what(interaction: discord.Interaction) -> str:
    if interaction.type is discord.InteractionType.application_command and interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    return f"interaction {interaction.type.name}"
