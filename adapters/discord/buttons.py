"""The buttons under replies — cancel while a turn runs, re-roll under a picture — as
persistent components: the job id travels in the button's ``custom_id``
(``ovbot:cancel:<job id>``), and discord.py's ``DynamicItem`` matches the id by pattern,
so a button keeps working after a restart, with no per-message state to restore.

A press only names the job and who pressed; what happens (may this user cancel it? whose
picture is the re-roll?) is the facade's decision, reached through the ``ButtonActions``
the client carries (discord.py builds these items itself, so the actions cannot be
passed to their constructors).
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import discord

CANCEL_PREFIX = "ovbot:cancel:"
REROLL_PREFIX = "ovbot:reroll:"
_JOB_ID = r"(?P<job_id>[0-9a-f]{32})"


class ButtonActions(Protocol):
    async def cancel_pressed(self, interaction: discord.Interaction, job_id: str) -> None: ...

    async def reroll_pressed(self, interaction: discord.Interaction, job_id: str) -> None: ...


@runtime_checkable
class ButtonHost(Protocol):
    """The client: where a dispatched button finds the actions it triggers."""

    @property
    def button_actions(self) -> ButtonActions: ...


def _actions(interaction: discord.Interaction) -> ButtonActions:
    client = interaction.client
    if not isinstance(client, ButtonHost):
        raise TypeError("ovbot's buttons run only on ovbot's Discord client")
    return client.button_actions


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=re.compile(re.escape(CANCEL_PREFIX) + _JOB_ID)):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(label="Cancel", emoji="🛑", style=discord.ButtonStyle.secondary, custom_id=CANCEL_PREFIX + job_id)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[discord.ui.View], match: re.Match[str], /
    ) -> CancelButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _actions(interaction).cancel_pressed(interaction, self.job_id)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=re.compile(re.escape(REROLL_PREFIX) + _JOB_ID)):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(label="Re-roll", emoji="🎲", style=discord.ButtonStyle.primary, custom_id=REROLL_PREFIX + job_id)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[discord.ui.View], match: re.Match[str], /
    ) -> RerollButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _actions(interaction).reroll_pressed(interaction, self.job_id)


#: registered with ``Client.add_dynamic_items`` before the gateway connects
PERSISTENT_BUTTONS: tuple[type[discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]]], ...] = (CancelButton, RerollButton)


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def reroll_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    return view
