"""Slash-command options checked against the command's declared types before it runs.

discord.py trusts Discord: it hands the handler whatever value an option carries, so an
option sent with another type than the synced command declares (a client that made it
up, a command list out of date after an update) would reach ovbot's handlers as a ``str``
where an ``int`` belongs and fail deep inside. Here such an interaction is refused with
a ``CheckFailure`` naming the option, which the one error place answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import discord
from discord import app_commands
from discord import AppCommandOptionType as OptionType

#: option types that group options rather than carry a value
_GROUPS = (OptionType.subcommand.value, OptionType.subcommand_group.value)
#: what each option type must arrive as, and how a user would call it
_EXPECTED: dict[int, tuple[tuple[type, ...], str]] = {
    OptionType.string.value: ((str,), "text"),
    OptionType.integer.value: ((int,), "a whole number"),
    OptionType.number.value: ((int, float), "a number"),
    OptionType.boolean.value: ((bool,), "true or false"),
    OptionType.user.value: ((str, int), "a user"),
    OptionType.channel.value: ((str, int), "a channel"),
    OptionType.role.value: ((str, int), "a role"),
    OptionType.mentionable.value: ((str, int), "a user or role"),
}
#: where Discord puts the object a snowflake option names
_RESOLVED = {OptionType.user.value: ("users",), OptionType.channel.value: ("channels",),
             OptionType.role.value: ("roles",), OptionType.mentionable.value: ("users", "roles")}  # fmt: skip


class OptionMismatch(app_commands.CheckFailure):
    """An option of the wrong type or naming nothing; the message is for the user."""


def leaf_options(options: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """The value-carrying options, under any subcommand group and subcommand."""
    for option in options:
        if option.get("type") in _GROUPS:
            yield from leaf_options(option.get("options") or [])
        else:
            yield option


def check_options(interaction: discord.Interaction) -> None:
    """Raise ``OptionMismatch`` for the first option that does not match its parameter."""
    command = interaction.command
    data: Mapping[str, Any] = interaction.data or {}  # type: ignore[assignment]
    if not isinstance(command, app_commands.Command):
        return  # unknown commands and context menus: discord.py itself refuses those
    declared = {parameter.display_name: parameter.type.value for parameter in command.parameters}
    resolved: Mapping[str, Any] = data.get("resolved") or {}
    for option in leaf_options(list(data.get("options") or [])):
        name = str(option.get("name"))
        kind = declared.get(name)
        if kind is None:
            continue  # discord.py ignores options a command does not have
        value = option.get("value")
        types, described = _EXPECTED.get(kind, ((object,), "a value"))
        if option.get("type") != kind or isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise OptionMismatch(f"the option '{name[:32]}' must be {described}.")
        places = _RESOLVED.get(kind)
        if places and not any(str(value) in (resolved.get(place) or {}) for place in places):
            raise OptionMismatch(f"the option '{name[:32]}' does not name {described} Discord knows.")
