"""Setting the Discord adapter up, without models: its settings, the invite link (``ovbot
discord invite-url``), and the one-line errors when it cannot start."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlparse

import discord
import pytest
import pytest_asyncio

from ovbot.adapters.discord import DiscordUnavailable, build_discord_adapter
from ovbot.adapters.discord.invite import application_id_from_token, invite_url, required_permissions
from ovbot.bots.cli import main
from ovbot.core.logging_setup import redact
from ovbot.core.access import NOT_ALLOWED_USER, AccessControl
from ovbot.core.bot import Bot
from ovbot.core.config import ENV_PREFIX, Settings, load_settings
from ovbot.core.domain import ChatRef, UserRef
from ovbot.core.errors import Forbidden, SettingsError
from ovbot.core.store.base import Store
from tests.fakes.fake_discord import FakeDiscord

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


def settings_for(fake: FakeDiscord, **values: object) -> Settings:
    base: dict[str, object] = dict(
        _env_file=None,
        discord_token=fake.token,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- settings


async def test_discord_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVBOT_DISCORD_TOKEN", "  MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123  ")
    monkeypatch.setenv("OVBOT_DISCORD_GUILD_IDS", "111, 222")
    settings = load_settings()
    assert settings.discord_guild_ids == [111, 222]
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert settings.discord_gateway_url == "wss://gateway.discord.gg"
    token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123"
    assert settings.discord_token is not None and settings.discord_token.get_secret_value() == token
    assert token in settings.secrets()
    assert token not in repr(settings) and token not in str(settings.model_dump())
    assert redact(f"token {token} in a line", settings.secrets()) == "token [REDACTED] in a line"

    monkeypatch.setenv("OVBOT_DISCORD_TOKEN", "")
    assert load_settings().discord_token is None  # an empty line in .env means "not set"


async def test_bad_discord_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVBOT_DISCORD_GUILD_IDS", "111,my-server")
    monkeypatch.setenv("OVBOT_DISCORD_API_BASE", "discord.com/api")
    monkeypatch.setenv("OVBOT_DISCORD_GATEWAY_URL", "https://gateway.discord.gg")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = caught.value.user_message.splitlines()
    assert "  OVBOT_DISCORD_GUILD_IDS: 'my-server' is not a guild id (a number such as 123456789012345678)" in lines
    assert "  OVBOT_DISCORD_API_BASE: must start with http:// or https:// (got 'discord.com/api')" in lines
    assert "  OVBOT_DISCORD_GATEWAY_URL: must start with ws:// or wss:// (got 'https://gateway.discord.gg')" in lines


# ---------------------------------------------------------------- invite link


async def test_the_invite_link_names_the_application_scopes_and_permissions() -> None:
    app_id = 876543210987654321
    token = base64.b64encode(str(app_id).encode()).decode().rstrip("=") + ".GaBcDe.secret-part-of-the-token"
    assert application_id_from_token(token) == app_id
    assert application_id_from_token("not a token at all") is None
    url = urlparse(invite_url(app_id))
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc, url.path) == ("https", "discord.com", "/oauth2/authorize")
    assert query["client_id"] == [str(app_id)]
    assert query["scope"] == ["bot applications.commands"]
    permissions = discord.Permissions(int(query["permissions"][0]))
    assert permissions == required_permissions()
    assert permissions.send_messages and permissions.attach_files and permissions.embed_links
    assert not permissions.administrator and not permissions.mention_everyone and not permissions.manage_messages


async def test_invite_url_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fake: FakeDiscord
) -> None:
    assert main(["discord", "invite-url"]) == 2
    assert "OVBOT_DISCORD_TOKEN is not set" in capsys.readouterr().err

    monkeypatch.setenv("OVBOT_DISCORD_TOKEN", fake.token)
    monkeypatch.setenv("OVBOT_DISCORD_API_BASE", fake.api_base)
    assert main(["discord", "invite-url"]) == 0
    from_token = capsys.readouterr().out.strip()
    assert f"client_id={fake.app_id}" in from_token

    calls = len(fake.calls)
    # the CLI runs its own event loop: run it in a thread, the fake answers on this one
    assert await asyncio.to_thread(main, ["discord", "invite-url", "--from-api"]) == 0
    assert capsys.readouterr().out.strip() == from_token
    assert [c.route for c in fake.calls[calls:]] == ["app_info"]

    monkeypatch.setenv("OVBOT_DISCORD_TOKEN", "wrong." + fake.token)
    assert await asyncio.to_thread(main, ["discord", "invite-url"]) == 2
    err = capsys.readouterr().err
    assert "Discord refused OVBOT_DISCORD_TOKEN" in err and fake.token not in err


# ---------------------------------------------------------------- start-up errors


async def test_a_refused_token_stops_the_adapter_with_one_line(fake: FakeDiscord) -> None:
    settings = settings_for(fake, discord_token="M" + fake.token[1:-4] + "nope")
    adapter = build_discord_adapter(cast(Bot, None), settings)  # the facade is not reached before login
    with pytest.raises(DiscordUnavailable) as caught:
        await adapter.start()
    assert caught.value.user_message.startswith("Discord refused OVBOT_DISCORD_TOKEN")
    assert "\n" not in caught.value.user_message and settings.discord_token.get_secret_value() not in caught.value.user_message  # type: ignore[union-attr]
    assert adapter.client.is_closed() and not adapter.health().ok


async def test_an_unreachable_discord_stops_the_adapter_with_one_line(fake: FakeDiscord) -> None:
    settings = settings_for(fake, discord_api_base="http://127.0.0.1:9/api/v10")
    adapter = build_discord_adapter(cast(Bot, None), settings)
    with pytest.raises(DiscordUnavailable) as caught:
        await adapter.start()
    message = caught.value.user_message
    assert re.match(r"cannot reach Discord at http://127\.0\.0\.1:9/api/v10 \(\w+", message), message
    assert "\n" not in message


async def test_without_a_token_there_is_no_adapter(fake: FakeDiscord) -> None:
    with pytest.raises(DiscordUnavailable):
        build_discord_adapter(cast(Bot, None), settings_for(fake, discord_token=None))


# ---------------------------------------------------------------- roles in the core's access policy


class _NobodySpecial:
    """A store where nobody is an admin or blocked (all AccessControl asks here)."""

    async def is_admin(self, user_key: str) -> bool:
        return False

    async def is_blocked(self, user_key: str) -> bool:
        return False


async def test_a_role_allow_list_admits_role_holders_and_listed_users() -> None:
    access = AccessControl(cast(Store, _NobodySpecial()), allowed_users=["discord:5"], allowed_roles=["discord:777"])
    room = ChatRef("discord", "1111", "111")
    await access.check(UserRef("discord", "1", roles=frozenset({"111", "777"})), room)
    await access.check(UserRef("discord", "5"), room)  # listed by id, no role needed
    await access.check(UserRef("telegram", "9"), ChatRef("telegram", "42"))  # other platforms stay open
    for outsider in (UserRef("discord", "2", roles=frozenset({"111", "888"})), UserRef("discord", "3")):
        with pytest.raises(Forbidden) as caught:
            await access.check(outsider, room)
        assert caught.value.user_message == NOT_ALLOWED_USER
    # roles are what the platform reports where the user asks, not who they are
    assert UserRef("discord", "1", roles=frozenset({"777"})) == UserRef("discord", "1")


async def test_the_role_allow_list_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVBOT_ALLOWED_ROLES", "discord:777, discord:888")
    assert load_settings().allowed_roles == ["discord:777", "discord:888"]
    monkeypatch.setenv("OVBOT_ALLOWED_ROLES", "777")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "OVBOT_ALLOWED_ROLES: '777' is not platform:role_id (e.g. discord:123456789012345678)" in caught.value.user_message
