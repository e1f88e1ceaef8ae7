"""``ovbot discord ...``: Discord helpers. ``invite-url`` prints the link that adds the
bot (configured by ``OVBOT_DISCORD_TOKEN``) to a server."""

from __future__ import annotations

import argparse
import asyncio

from ovbot.core.config import load_settings
from ovbot.core.errors import OvbotError


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("discord", help="Discord helpers (the invite link)")
    actions = group.add_subparsers(dest="discord_command", required=True, metavar="ACTION")
    invite = actions.add_parser(
        "invite-url",
        help="print the link that adds the bot to a Discord server",
        description="Print the OAuth2 link that adds the bot of OVBOT_DISCORD_TOKEN to a server, with the "
        "bot and applications.commands scopes and the permissions ovbot needs.",
    )
    invite.add_argument(
        "--from-api",
        action="store_true",
        help="ask Discord for the application id instead of reading it from the token",
    )
    invite.set_defaults(func=run_invite_url)


def run_invite_url(args: argparse.Namespace) -> int:
    from ovbot.adapters.discord.invite import application_id_from_token, fetch_application_id, invite_url

    settings = load_settings()
    if settings.discord_token is None:
        raise OvbotError("OVBOT_DISCORD_TOKEN is not set: put your bot's token in .env (see README, \"Discord\")")
    token = settings.discord_token.get_secret_value()
    application_id = None if args.from_api else application_id_from_token(token)
    if application_id is None:
        application_id = asyncio.run(fetch_application_id(token, settings.discord_api_base))
    print(invite_url(application_id))
    return 0
