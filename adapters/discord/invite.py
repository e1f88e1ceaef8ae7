"""The link that adds ovbot's Discord application to a server: the ``bot`` and
``applications.commands`` scopes and exactly the permissions ovbot uses (read the
channel, send and reply, in threads too, embeds and attachments for pictures).

The application id is read from the token itself (its first part is the bot's user id,
base64, which is the application's id), or asked from the API when that fails.
"""

from __future__ import annotations

import base64
import binascii

import discord
import httpx

from ovbot.core.errors import OvbotError

SCOPES = ("bot", "applications.commands")


class InviteError(OvbotError):
    kind = "discord_invite"


def required_permissions() -> discord.Permissions:
    return discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        read_message_history=True,
        embed_links=True,
        attach_files=True,
    )


def application_id_from_token(token: str) -> int | None:
    """The id encoded in the token's first part, or None when it holds none."""
    head = token.strip().split(".", 1)[0]
    try:
        decoded = base64.b64decode(head + "=" * (-len(head) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(decoded) if decoded.isdigit() and len(decoded) <= 20 else None


async def fetch_application_id(token: str, api_base: str, *, timeout_s: float = 15.0) -> int:
    """Ask Discord (``GET /oauth2/applications/@me``) for the token's application id."""
    url = api_base.rstrip("/") + "/oauth2/applications/@me"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            response = await client.get(url, headers={"Authorization": f"Bot {token}"})
    except httpx.HTTPError as exc:
        raise InviteError(f"cannot reach Discord at {api_base} ({type(exc).__name__})") from None
    if response.status_code == 401:
        raise InviteError("Discord refused OVBOT_DISCORD_TOKEN; copy the bot token again from the Developer Portal")
    if response.status_code != 200:
        raise InviteError(f"Discord answered {response.status_code} when asked for the application")
    return int(response.json()["id"])


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=required_permissions(), scopes=SCOPES)
