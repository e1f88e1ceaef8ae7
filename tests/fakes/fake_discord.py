"""A fake Discord — the gateway (a websocket) and the REST API — that the real discord.py
client talks to on 127.0.0.1, started inside the test's event loop.

Nothing of discord.py is mocked: the client logs in over REST, syncs its commands,
connects to the gateway (HELLO, IDENTIFY, READY, GUILD_CREATE; RESUME after a drop, with
the events it missed replayed), receives interactions and messages the tests inject,
and answers them over the same REST routes Discord serves (interaction callbacks,
webhook edits and follow-ups, channel messages, multipart uploads).

What the fake checks on every message created or edited, because Discord would not:
``allowed_mentions`` must be present and allow nothing (Discord's default pings
everyone named in the text), and the content must fit 2000 characters. Each breach is
recorded in ``violations``; who *would* have been pinged is computed the way Discord
does and recorded in ``pings``. Tests assert both stay empty.

Wire facts honoured (see ../shared/notes/platform-fakes.md): JSON is sent with the exact
content type ``application/json`` (discord.py parses nothing else); a 429 carries
``Via`` (without it discord.py takes it for a Cloudflare ban); interaction tokens die 15
minutes after the interaction's snowflake time (401, code 50027); the first follow-up
after a deferred response fills the deferred message; ephemeral messages cannot be
edited through the channel routes. Every unhandled route answers a loud JSON 404 and is
recorded in ``unhandled``.

Bad days: ``storms.start`` (see ``storm.py``) fails a share of the REST calls for a while
(429, 500/502/503, hangs, dropped connections); ``gateway_storm`` keeps closing the
gateway with codes that resume and codes that force a new session. The fake measures
what Discord would hold against the bot: requests to a bucket inside its 429 window
(``calls_in_429_window``, also a violation), invalid requests and per-channel message
rates (``rates``), and user events lost to a new session (``lost_events``). Channel
sends honour ``nonce`` with ``enforce_nonce`` as Discord does: a send repeating a recent
nonce gets the message made with it instead of a new one (``nonce_hits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.storm import LOST_ANSWER, Storms, drop, hang_then_drop, max_in_window
from tests.sentinels import DISCORD_INTERACTION_PREFIX, discord_token

API = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
MESSAGE_LIMIT = 2000
TOKEN_LIFETIME_S = 15 * 60
EPHEMERAL = 1 << 6
LOADING = 1 << 7

Json = dict[str, Any]


def snowflake_at(when: float, counter: int = 0) -> int:
    """A snowflake whose timestamp is ``when`` (seconds since the Unix epoch)."""
    return ((int(when * 1000) - DISCORD_EPOCH_MS) << 22) | (counter & 0x3FFFFF)


def snowflake_time(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


def make_token(user_id: int) -> str:
    """A bot token shaped like Discord's: base64(user id) . timestamp . hmac."""
    return discord_token(user_id)  # a sentinel: tests/sentinel_check.py fails a test that logs it


def iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat()


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass
class Call:
    """One REST request the fake answered."""

    route: str  # a short name such as "edit_original" (see _ROUTES)
    method: str
    path: str
    body: Any
    files: list[tuple[str, bytes]]
    status: int
    query: dict[str, str] = field(default_factory=dict)
    #: time.monotonic() when it was answered
    at: float = field(default_factory=time.monotonic)
    #: the storm fault that hit it ("429", "503", "timeout", "drop", ...), if any
    fault: str | None = None
    #: the channel a message route posts in or edits (webhook routes: the interaction's)
    channel_id: int | None = None


#: routes that create or change a message (counted for the per-channel message rate)
MESSAGE_ROUTES = frozenset(
    {"callback", "edit_original", "followup", "edit_followup", "channel_send", "channel_edit"}
)
#: statuses Discord counts as invalid requests (10,000 in 10 minutes: banned at the edge)
INVALID_STATUSES = frozenset({401, 403, 429})
#: how long Discord remembers a message nonce sent with ``enforce_nonce`` ("a few minutes")
NONCE_WINDOW_S = 120.0
#: gateway close codes after which Discord lets the session resume / forces a new one
RESUMABLE_CLOSES = (4000, 4008)
NEW_SESSION_CLOSES = (4007, 4009)


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: Json
    content: str = ""
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    attachments: list[Json] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    reference_id: int | None = None
    interaction_token: str | None = None
    #: every content the message had, in order (the first is what it was created with)
    history: list[str] = field(default_factory=list)
    deleted: bool = False
    mentions: list[Json] = field(default_factory=list)
    referenced: Json | None = None
    #: the custom ids of every button it ever carried (a reply's cancel button goes at its end)
    buttons_seen: list[str] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def finished(self) -> bool:
        """A live reply's first message is final once its cancel button is gone."""
        return bool(self.buttons_seen) and not self.components and not self.deleted

    def job_id(self, prefix: str = "ovbot:cancel:") -> str:
        """The job a button of this message named."""
        return next(b.removeprefix(prefix) for b in self.buttons_seen if b.startswith(prefix))

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c]

    def to_json(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": iso(snowflake_time(self.id)),
            "edited_timestamp": None if len(self.history) < 2 else iso(time.time()),
            "tts": False,
            "mention_everyone": False,
            "mentions": self.mentions,
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.reference_id is not None:
            data["message_reference"] = {"message_id": str(self.reference_id), "channel_id": str(self.channel_id)}
            if self.referenced is not None:
                data["referenced_message"] = self.referenced
        if self.interaction_token is not None:
            data["webhook_id"] = self.author["id"]
            data["application_id"] = self.author["id"]
        return data


@dataclass
class FakeInteraction:
    id: int
    token: str
    channel_id: int
    guild_id: int | None
    user: Json
    #: 2 application command, 3 component
    type: int
    #: the INTERACTION_CREATE payload, as the client receives it
    payload: Json = field(default_factory=dict)
    response_type: int | None = None
    original_id: int | None = None
    ephemeral: bool = False
    #: ``time.monotonic()`` when INTERACTION_CREATE went out, and when the first callback
    #: (defer or answer) came in: Discord drops an interaction not answered within 3 s
    dispatched_at: float | None = None
    acknowledged_at: float | None = None

    @property
    def created_at(self) -> float:
        return snowflake_time(self.id)

    @property
    def ack_s(self) -> float | None:
        """Seconds from the dispatch to the first callback (None: none yet)."""
        if self.dispatched_at is None or self.acknowledged_at is None:
            return None
        return self.acknowledged_at - self.dispatched_at


@dataclass
class Failure:
    status: int
    body: Json
    headers: dict[str, str]
    fault: str | None = None


@dataclass
class FakeUser:
    id: int
    name: str
    roles: tuple[int, ...] = ()
    #: the member's permissions in the guild (Discord sends them with interactions)
    permissions: int = 0

    def to_json(self) -> Json:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name.title(),
            "avatar": None,
            "bot": False,
            "public_flags": 0,
        }

    def member_json(self, joined: float) -> Json:
        return {
            "user": self.to_json(),
            "roles": [str(r) for r in self.roles],
            "joined_at": iso(joined),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "permissions": str(self.permissions),
        }


class FakeDiscord:
    """One application (bot user id == application id), guilds with text channels, and
    direct-message channels made on demand. Start it with ``async with``."""

    def __init__(
        self,
        *,
        app_id: int = 876543210987654321,
        guilds: dict[int, list[int]] | None = None,
        roles: dict[int, list[int]] | None = None,
        send_limit: tuple[int, float] | None = None,
    ) -> None:
        self.app_id = app_id
        #: (messages, seconds): a channel's bucket for creating messages, kept the way
        #: Discord keeps it (X-RateLimit-* headers on every send, 429 once it is empty);
        #: None: no per-route limit (only injected 429s)
        self.send_limit = send_limit
        self._sends: dict[int, deque[float]] = {}
        #: sends refused because the channel's bucket was empty
        self.send_limit_hits = 0
        self.token = make_token(app_id)
        self.bot_user: Json = {
            "id": str(app_id),
            "username": "ovbot",
            "discriminator": "0",
            "global_name": "ovbot",
            "avatar": None,
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "public_flags": 0,
        }
        #: guild id -> its text channel ids
        self.guilds: dict[int, list[int]] = guilds if guilds is not None else {111: [1111, 1112]}
        #: guild id -> its role ids besides @everyone
        self.roles: dict[int, list[int]] = roles or {}
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.calls: list[Call] = []
        self.unhandled: list[str] = []
        self.violations: list[str] = []
        self.pings: list[tuple[int, str]] = []
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[str, FakeInteraction] = {}
        #: scope ("global" or a guild id) -> the commands last synced there
        self.commands: dict[str, list[Json]] = {}
        self.gateway_ops: list[Json] = []
        self.identifies = 0
        self.resumes = 0
        #: added to time.time(): "later" for interaction token expiry
        self.clock_offset = 0.0
        self._failures: dict[str, deque[Failure]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._ws: web.WebSocketResponse | None = None
        self._session_id = ""
        self._seq = 0
        self._events: list[Json] = []  # dispatched in this session, for RESUME
        self._changed = asyncio.Condition()
        #: storms of REST faults (``storms.start``, see ``storm.py``)
        self.storms = Storms()
        #: requests made to a bucket while a 429's retry_after for it had not passed
        self.calls_in_429_window = 0
        self._limited_until: dict[tuple[str, str], float] = {}
        #: gateway close code -> times the fake closed the connection with it
        self.gateway_drops: dict[int, int] = {}
        #: user events (interactions, messages) no connection ever received: sent while
        #: the client was away and then dropped because it had to start a new session
        self.lost_events = 0
        self._live: web.WebSocketResponse | None = None
        #: (channel, nonce) -> the message created with it (``enforce_nonce``)
        self._nonces: dict[tuple[int, str], FakeMessage] = {}
        #: channel sends answered with the message an earlier send made (same nonce)
        self.nonce_hits = 0
        self._resume_seq: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        for method, pattern, name in _ROUTES:
            app.router.add_route(method, API + pattern, self._handler(name))
        app.router.add_route("*", "/{tail:.*}", self._unhandled)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self._port = int(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    def now(self) -> float:
        return time.time() + self.clock_offset

    # ------------------------------------------------------------------ test helpers
    def fail(self, route: str, status: int, *, times: int = 1, retry_after: float = 0.05, code: int = 0) -> None:
        """The next ``times`` calls of ``route`` fail with ``status`` (429s the way
        Discord sends them: ``Via`` header, ``retry_after`` in the body)."""
        queue = self._failures.setdefault(route, deque())
        for _ in range(times):
            if status == 429:
                queue.append(_rate_limited(retry_after))
            else:
                queue.append(Failure(status, {"message": f"{status}: injected", "code": code}, {}))

    def clear_failures(self) -> None:
        """Drop the failures ``fail`` queued that no call has met yet."""
        self._failures.clear()

    def calls_of(self, *routes: str) -> list[Call]:
        return [c for c in self.calls if c.route in routes]

    def channel_messages(self, channel_id: int) -> list[FakeMessage]:
        """What people see in the channel: non-ephemeral, not deleted, in order."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and not m.deleted and not m.ephemeral and m.author.get("bot")
        ]

    def original(self, token: str) -> FakeMessage | None:
        interaction = self.interactions[token]
        return None if interaction.original_id is None else self.messages[interaction.original_id]

    def replies_to(self, token: str) -> list[FakeMessage]:
        """Every message an interaction's token created (original first)."""
        return [m for m in self.messages.values() if m.interaction_token == token]

    def replies_by_origin(self, channel_id: int) -> dict[str | int | None, list[FakeMessage]]:
        """The bot's visible messages in ``channel_id`` by what each answers: the
        interaction token of a slash command's response or follow-up, the id of the
        user's message it replies to, None for neither (a picture posted through the
        channel after a restart): how a test counts the final deliveries of each turn."""
        grouped: dict[str | int | None, list[FakeMessage]] = {}
        for message in self.channel_messages(channel_id):
            origin = message.interaction_token if message.interaction_token is not None else message.reference_id
            grouped.setdefault(origin, []).append(message)
        return grouped

    async def wait_for(self, check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
        """Wait (bounded) until ``check()`` is truthy; re-checked on every request."""

        async def waiting() -> Any:
            async with self._changed:
                while not (result := check()):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(waiting(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what or check}; last calls: {self._recent()}") from None

    def _recent(self) -> list[str]:
        return [f"{c.status} {c.route} {str(c.body)[:120]}" for c in self.calls[-8:]]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ events to inject
    def dm_channel(self, user: FakeUser) -> int:
        if user.id not in self.dm_channels:
            self.dm_channels[user.id] = self._snowflake()
        return self.dm_channels[user.id]

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser,
        channel_id: int | None = None,
        guild_id: int | None = 111,
        subcommand: str | None = None,
        created_at: float | None = None,
        dispatch: bool = True,
    ) -> FakeInteraction:
        """A user runs ``/name [subcommand] options...``; returns the interaction (its
        token names its replies). ``dispatch=False`` only registers it (a test then
        hands ``.payload`` to a client itself)."""
        resolved: Json = {}
        opts: list[Json] = []
        for key, value in (options or {}).items():
            if isinstance(value, FakeUser):
                resolved.setdefault("users", {})[str(value.id)] = value.to_json()
                if guild_id is not None:
                    member = value.member_json(self.now())
                    member.pop("user")
                    resolved.setdefault("members", {})[str(value.id)] = member
                opts.append({"name": key, "type": 6, "value": str(value.id)})
            else:
                kind = 5 if isinstance(value, bool) else 4 if isinstance(value, int) else 10 if isinstance(value, float) else 3
                opts.append({"name": key, "type": kind, "value": value})
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        scope = "global" if str(guild_id) not in self.commands else str(guild_id)
        known = {c["name"]: c for c in self.commands.get(scope, [])}
        data: Json = {"id": known[name]["id"] if name in known else str(self._snowflake()), "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        return await self._interact(
            2, data, user=user, channel_id=channel_id, guild_id=guild_id, created_at=created_at, dispatch=dispatch
        )

    async def click(self, message: FakeMessage, custom_id: str, *, user: FakeUser) -> FakeInteraction:
        """A user presses the button ``custom_id`` on ``message``."""
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(
            3, data, user=user, channel_id=message.channel_id, guild_id=message.guild_id, message=message.to_json()
        )

    async def say(
        self,
        user: FakeUser,
        content: str,
        *,
        channel_id: int | None = None,
        guild_id: int | None = 111,
        mention_bot: bool = False,
        reply_to: FakeMessage | None = None,
        ping: bool = True,
    ) -> FakeMessage:
        """A user posts a message (``guild_id=None``: in their DM with the bot). Without
        the message-content intent Discord sends the content only of DMs and of
        messages that mention the bot; others arrive with empty content. A reply
        mentions its author unless ``ping`` is switched off."""
        if guild_id is None:
            channel = self.dm_channel(user)
        else:
            channel = channel_id or self.guilds[guild_id][0]
        text = f"<@{self.app_id}> {content}" if mention_bot else content
        replied_bot = reply_to is not None and ping and reply_to.author.get("id") == str(self.app_id)
        mentions = [self.bot_user] if mention_bot or replied_bot else []
        visible = guild_id is None or bool(mentions)
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel,
            guild_id=guild_id,
            author=user.to_json(),
            content=text if visible else "",
            mentions=mentions,
            type=19 if reply_to is not None else 0,
            reference_id=None if reply_to is None else reply_to.id,
            referenced=None if reply_to is None else reply_to.to_json(),
            history=[text],
        )
        self.messages[message.id] = message
        payload = message.to_json()
        if guild_id is not None:
            member = user.member_json(self.now())
            member.pop("user")
            payload["member"] = member
        await self.dispatch("MESSAGE_CREATE", payload)
        return message

    async def _interact(
        self,
        kind: int,
        data: Json,
        *,
        user: FakeUser,
        channel_id: int | None,
        guild_id: int | None,
        created_at: float | None = None,
        message: Json | None = None,
        dispatch: bool = True,
    ) -> FakeInteraction:
        if guild_id is None:
            channel, channel_type = self.dm_channel(user), 1
        else:
            channel, channel_type = channel_id or self.guilds[guild_id][0], 0
        token = DISCORD_INTERACTION_PREFIX + secrets.token_urlsafe(32)
        interaction = FakeInteraction(
            id=snowflake_at(created_at if created_at is not None else self.now(), next(self._ids)),
            token=token,
            channel_id=channel,
            guild_id=guild_id,
            user=user.to_json(),
            type=kind,
        )
        self.interactions[token] = interaction
        payload: Json = {
            "id": str(interaction.id),
            "application_id": str(self.app_id),
            "type": kind,
            "token": token,
            "version": 1,
            "data": data,
            "channel_id": str(channel),
            "channel": {"id": str(channel), "type": channel_type},
            "locale": "en-US",
            "app_permissions": "2251799813685247",
            "entitlements": [],
            "attachment_size_limit": 8 * 1024 * 1024,
            "authorizing_integration_owners": {"0": str(guild_id)} if guild_id else {"1": str(user.id)},
            "context": 0 if guild_id is not None else 1,
        }
        if guild_id is not None:
            payload["guild_id"] = str(guild_id)
            payload["guild_locale"] = "en-US"
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["member"] = user.member_json(self.now())
        else:
            payload["user"] = user.to_json()
        if message is not None:
            payload["message"] = message
        interaction.payload = payload
        if dispatch:
            interaction.dispatched_at = time.monotonic()
            await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # ------------------------------------------------------------------ gateway
    async def dispatch(self, event: str, data: Json) -> None:
        """Send a DISPATCH; while the client is away it is kept for its RESUME."""
        self._seq += 1
        frame = {"op": 0, "t": event, "s": self._seq, "d": data}
        self._events.append(frame)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(frame))

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the client's websocket the way Discord does now and then (it resumes)."""
        ws = self._ws
        assert ws is not None, "no gateway connection"
        self._ws = None
        await ws.close(code=code, message=b"fake: dropped")

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    @property
    def session_live(self) -> bool:
        """Connected and past READY or RESUMED: an event sent now reaches the client."""
        return self._live is not None and self._live is self._ws and not self._live.closed

    async def disconnect(self, code: int) -> None:
        """Close the gateway with ``code``; after a code that forces a new session
        (4007 invalid seq, 4009 session timed out) the client's RESUME is refused
        (op 9) and it must IDENTIFY again."""
        if code in NEW_SESSION_CLOSES:
            self._session_id = "invalidated"
        self.gateway_drops[code] = self.gateway_drops.get(code, 0) + 1
        await self.drop_gateway(code)

    async def gateway_storm(
        self, seconds: float, *, every_s: float = 1.0, codes: tuple[int, ...] = (4000, 4009, 4008, 4007)
    ) -> None:
        """For ``seconds``, close the gateway ``every_s`` after each (re)connection,
        cycling through ``codes`` (resumable and new-session ones)."""
        deadline = time.monotonic() + seconds
        for code in itertools.cycle(codes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(AssertionError):
                await self.wait_for(lambda: self.session_live, remaining, what="the gateway session")
            await asyncio.sleep(every_s)
            if time.monotonic() >= deadline:
                return
            if self.connected:
                await self.disconnect(code)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        try:
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                self.gateway_ops.append(message)
                await self._on_op(ws, message)
                await self._notify()
        finally:
            if self._ws is ws:
                self._ws = None
            await self._notify()
        return ws

    async def _on_op(self, ws: web.WebSocketResponse, message: Json) -> None:
        op, data = message.get("op"), message.get("d")
        if op == 1:  # acknowledged a moment later, as over a network (discord.py measures the gap)
            asyncio.get_running_loop().call_later(0.02, lambda: asyncio.ensure_future(_ack(ws)))
        elif op == 2:
            if data.get("token") != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            self.identifies += 1
            self._count_lost(self._resume_seq or 0)
            self._session_id = secrets.token_hex(16)
            self._seq = 0
            self._events = []
            await self.dispatch("READY", self._ready())
            for guild_id in self.guilds:
                await self.dispatch("GUILD_CREATE", self._guild(guild_id))
            self._live = ws
        elif op == 6:
            if data.get("token") != self.token or data.get("session_id") != self._session_id:
                self._resume_seq = int(data.get("seq") or 0)
                await ws.send_str(json.dumps({"op": 9, "d": False}))
                return
            self.resumes += 1
            seen = int(data.get("seq") or 0)
            for frame in self._events:
                if frame["s"] > seen:
                    await ws.send_str(json.dumps(frame))
            await self.dispatch("RESUMED", {})
            self._live = ws

    def _count_lost(self, seen: int) -> None:
        """A new session starts: the user events of the old one the client never saw
        are gone (Discord does not send them again)."""
        self.lost_events += sum(
            1 for f in self._events if f["s"] > seen and f["t"] in ("INTERACTION_CREATE", "MESSAGE_CREATE")
        )
        self._resume_seq = None

    def _ready(self) -> Json:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "session_type": "normal",
        }

    def _guild(self, guild_id: int) -> Json:
        return {
            "id": str(guild_id),
            "name": f"guild {guild_id}",
            "unavailable": False,
            "member_count": 3,
            "owner_id": "1",
            "joined_at": iso(time.time()),
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "members": [],
            "presences": [],
            "voice_states": [],
            "threads": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "channels": [
                {
                    "id": str(channel),
                    "type": 0,
                    "name": f"channel-{channel}",
                    "position": index,
                    "guild_id": str(guild_id),
                    "permission_overwrites": [],
                    "nsfw": False,
                    "parent_id": None,
                    "topic": None,
                    "rate_limit_per_user": 0,
                    "last_message_id": None,
                }
                for index, channel in enumerate(self.guilds[guild_id])
            ],
            "roles": [
                {
                    "id": str(role),
                    "name": "@everyone" if role == guild_id else f"role-{role}",
                    "permissions": "1071698660929" if role == guild_id else "0",
                    "position": index,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
                for index, role in enumerate([guild_id, *self.roles.get(guild_id, [])])
            ],
        }

    # ------------------------------------------------------------------ REST plumbing
    def _handler(self, name: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            arrived = time.monotonic()
            bucket = _bucket(name, request)
            self._check_rate_limit_window(bucket, arrived)
            body, files = await _read_body(request)
            try:
                failure = await self._storm_fault(name, request, arrived)
                lose_answer = failure is not None and failure.fault == LOST_ANSWER
                if failure is None or lose_answer:  # the request is carried out, if it may be
                    failure = self._next_failure(name) or self._over_send_limit(name, request, arrived)
                    lose_answer = lose_answer and failure is None
            except _Dropped as dropped:
                call = Call(name, request.method, request.path, body, files, 0, dict(request.query))
                call.fault = dropped.fault
                self.calls.append(call)
                await self._notify()
                return web.Response(status=204)  # never written: the connection is gone
            headers: dict[str, str] = {}
            if failure is not None:
                status, reply, headers = failure.status, failure.body, failure.headers
            else:
                try:
                    status, reply = await getattr(self, "_" + name)(request, body, files)
                except _Refused as refused:
                    status, reply = refused.status, refused.body
            headers = {**headers, **self._send_limit_headers(name, request, arrived)}
            call = Call(name, request.method, request.path, body, files, status, dict(request.query))
            call.fault = LOST_ANSWER if lose_answer else failure.fault if failure is not None else None
            call.channel_id = self._call_channel(request) if name in MESSAGE_ROUTES else None
            self.calls.append(call)
            if status == 429 and isinstance(reply, dict):
                self._limited_until[bucket] = arrived + float(reply.get("retry_after", 0))
            await self._notify()
            if lose_answer:
                drop(request)
                return web.Response(status=204)  # never written: the answer is lost
            if status == 204 or reply is None:
                return web.Response(status=204 if status < 300 else status, headers=headers)
            return web.Response(
                status=status, body=json.dumps(reply).encode(), content_type="application/json", headers=headers
            )

        return handle

    def _check_rate_limit_window(self, bucket: tuple[str, str], now: float) -> None:
        until = self._limited_until.get(bucket)
        if until is not None and now < until:
            self.calls_in_429_window += 1
            self.violations.append(f"{bucket[0]} {until - now:.2f} s before its 429's retry_after passed")

    async def _storm_fault(self, name: str, request: web.Request, now: float) -> Failure | None:
        hit = self.storms.pick(name, now)
        if hit is None:
            return None
        fault, storm = hit
        if fault == "429":
            failure = _rate_limited(storm.retry_after)
        elif fault in ("500", "502", "503"):
            failure = Failure(int(fault), {"message": f"{fault}: storm", "code": 0}, {})
        elif fault == LOST_ANSWER:
            failure = Failure(0, {}, {})
        else:
            if fault == "timeout":
                await hang_then_drop(request, storm.hang_s)
            drop(request)
            raise _Dropped(fault)
        failure.fault = fault
        return failure

    def _send_window(self, name: str, request: web.Request, now: float) -> deque[float] | None:
        if self.send_limit is None or name != "channel_send":
            return None
        window = self._sends.setdefault(int(request.match_info["channel"]), deque())
        while window and window[0] <= now - self.send_limit[1]:
            window.popleft()
        return window

    def _over_send_limit(self, name: str, request: web.Request, now: float) -> Failure | None:
        """A send the channel's bucket has no room for gets Discord's 429; others count."""
        window = self._send_window(name, request, now)
        if window is None or self.send_limit is None:
            return None
        if len(window) >= self.send_limit[0]:
            self.send_limit_hits += 1
            return _rate_limited(window[0] + self.send_limit[1] - now)
        window.append(now)
        return None

    def _send_limit_headers(self, name: str, request: web.Request, now: float) -> dict[str, str]:
        window = self._send_window(name, request, now)
        if window is None or self.send_limit is None:
            return {}
        limit, per_s = self.send_limit
        reset_after = (window[0] + per_s - now) if window else per_s
        return {
            "X-RateLimit-Bucket": "channel-send",
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - len(window))),
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        }

    def _call_channel(self, request: web.Request) -> int | None:
        if "channel" in request.match_info:
            return int(request.match_info["channel"])
        interaction = self.interactions.get(request.match_info.get("token", ""))
        return None if interaction is None else interaction.channel_id

    def rates(self) -> dict[str, int]:
        """The figures Discord's rules are stated in: invalid requests (401/403/429)
        within any 10 minutes, requests within any second (global limit: 50), message
        creates and edits (any route, failed ones included) and channel message creates
        that succeeded, in one channel within any 5 s."""
        invalid = sorted(c.at for c in self.calls if c.status in INVALID_STATUSES)
        per_channel: dict[int, list[float]] = {}
        sends: dict[int, list[float]] = {}
        for call in self.calls:
            if call.channel_id is not None:
                per_channel.setdefault(call.channel_id, []).append(call.at)
                if call.route == "channel_send" and call.status < 300:
                    sends.setdefault(call.channel_id, []).append(call.at)
        return {
            "invalid_per_10min": max_in_window(invalid, 600.0),
            "overall_max_per_s": max_in_window(sorted(c.at for c in self.calls), 1.0),
            "channel_max_per_5s": max((max_in_window(sorted(t), 5.0) for t in per_channel.values()), default=0),
            "channel_sends_max_per_5s": max((max_in_window(sorted(t), 5.0) for t in sends.values()), default=0),
        }

    def _next_failure(self, name: str) -> Failure | None:
        queue = self._failures.get(name)
        return queue.popleft() if queue else None

    async def _unhandled(self, request: web.Request) -> web.Response:
        self.unhandled.append(f"{request.method} {request.path}")
        await self._notify()
        body = {"message": f"fake discord: no route for {request.method} {request.path}", "code": 0}
        return web.Response(status=404, body=json.dumps(body).encode(), content_type="application/json")

    def _bot_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise _Refused(401, {"message": "401: Unauthorized", "code": 0})

    def _interaction(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        interaction = self.interactions.get(token)
        if interaction is None or "app" in request.match_info and request.match_info["app"] != str(self.app_id):
            raise _Refused(404, {"message": "Unknown Webhook", "code": 10015})
        if self.now() >= interaction.created_at + TOKEN_LIFETIME_S:
            raise _Refused(401, {"message": "Invalid Webhook Token", "code": 50027})
        return interaction

    def _snowflake(self) -> int:
        return snowflake_at(time.time(), next(self._ids))

    def _check_message(self, where: str, message: FakeMessage, payload: Json, files: list[tuple[str, bytes]]) -> None:
        """What Discord refuses (400), what it would ping (Discord's mention rules:
        without allowed_mentions everything named pings) and what ovbot promised never
        to send (a message without ``AllowedMentions.none()``)."""
        allowed = payload.get("allowed_mentions")
        if allowed is None:
            self.violations.append(f"{where}: no allowed_mentions")
        elif allowed.get("parse") or allowed.get("users") or allowed.get("roles") or allowed.get("replied_user"):
            self.violations.append(f"{where}: allowed_mentions {allowed} allows pings")
        content = payload["content"] if "content" in payload else message.content
        content = content or ""
        if utf16_len(content) > MESSAGE_LIMIT:
            self.violations.append(f"{where}: content of {utf16_len(content)} characters")
            raise _Refused(400, {"message": "Invalid Form Body: content too long", "code": 50035})
        embeds = payload["embeds"] if "embeds" in payload else message.embeds
        if not content.strip() and not embeds and not files and not message.attachments:
            self.violations.append(f"{where}: empty message")
            raise _Refused(400, {"message": "Cannot send an empty message", "code": 50006})
        reference = None if message.reference_id is None else self.messages.get(message.reference_id)
        parse = None if allowed is None else set(allowed.get("parse", []))
        for target in _mentioned(content, reference):
            kind = "everyone" if target in ("@everyone", "@here") else target.split(":")[0]
            if kind == "replied":
                if allowed is None or allowed.get("replied_user"):
                    self.pings.append((message.id, target))
                continue
            explicit = [] if allowed is None else [str(x) for x in allowed.get(kind, [])]
            if parse is None or kind in parse or target.split(":")[-1] in explicit:
                self.pings.append((message.id, target))

    def _apply(self, message: FakeMessage, payload: Json, files: list[tuple[str, bytes]], where: str) -> None:
        """Create or edit ``message`` from a message payload (checked first)."""
        self._check_message(where, message, payload, files)
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = payload["embeds"] or []
        if "components" in payload:
            message.components = payload["components"] or []
            message.buttons_seen += [b for b in message.custom_ids() if b not in message.buttons_seen]
        if "attachments" in payload or files:
            keep = {str(a.get("id")) for a in payload.get("attachments", [])}
            attachments = [a for a in message.attachments if a["id"] in keep]
            for name, data in files:
                url = f"{self.api_base}/attachments/{name}"
                attachments.append({"id": str(self._snowflake()), "filename": name, "size": len(data), "url": url, "proxy_url": url})
                message.files.append((name, data))
            message.attachments = attachments
        message.flags &= ~LOADING
        message.history.append(message.content)

    def _channel_guild(self, channel_id: int) -> int | None:
        for guild_id, channels in self.guilds.items():
            if channel_id in channels:
                return guild_id
        if channel_id in self.dm_channels.values():
            return None
        raise _Refused(404, {"message": "Unknown Channel", "code": 10003})

    def _message(self, message_id: str, channel_id: int | None = None) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if message is None or message.deleted or (channel_id is not None and message.channel_id != channel_id):
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        return message

    # ------------------------------------------------------------------ REST routes
    async def _get_me(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        return 200, self.bot_user

    async def _app_info(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        owner = {"id": "1", "username": "owner", "discriminator": "0", "avatar": None, "global_name": "Owner"}
        return 200, {
            "id": str(self.app_id),
            "name": "ovbot",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": owner,
            "verify_key": "0" * 64,
            "flags": 0,
        }

    async def _sync_global(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        return self._sync(request, body, "global")

    async def _sync_guild(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        return self._sync(request, body, request.match_info["guild"])

    def _sync(self, request: web.Request, body: Any, scope: str) -> tuple[int, Any]:
        self._bot_auth(request)
        if request.match_info["app"] != str(self.app_id):
            raise _Refused(403, {"message": "Missing Access", "code": 50001})
        echoed = []
        for command in body:
            echoed.append({**command, "id": str(self._snowflake()), "application_id": str(self.app_id), "version": "1"})
            if scope != "global":
                echoed[-1]["guild_id"] = scope
        self.commands[scope] = echoed
        return 200, echoed

    async def _callback(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or str(interaction.id) != request.match_info["id"]:
            raise _Refused(404, {"message": "Unknown interaction", "code": 10062})
        if interaction.acknowledged_at is None:
            interaction.acknowledged_at = time.monotonic()
        if interaction.response_type is not None:
            raise _Refused(400, {"message": "Interaction has already been acknowledged.", "code": 40060})
        kind = int(body["type"])
        data = body.get("data") or {}
        interaction.ephemeral = bool(int(data.get("flags", 0)) & EPHEMERAL)
        resource: Json = {"type": kind}
        if kind not in (4, 5):
            raise _Refused(400, {"message": f"fake discord: callback type {kind} is not modelled", "code": 0})
        flags = (EPHEMERAL if interaction.ephemeral else 0) | (LOADING if kind == 5 else 0)
        message = FakeMessage(
            self._snowflake(), interaction.channel_id, interaction.guild_id, self.bot_user, flags=flags, type=20
        )
        message.interaction_token = interaction.token
        if kind == 4:
            self._apply(message, data, files, "callback")
        self.messages[message.id] = message
        interaction.original_id = message.id
        interaction.response_type = kind
        resource["message"] = message.to_json()
        info = {
            "id": str(interaction.id),
            "type": interaction.type,
            "response_message_loading": kind == 5,
            "response_message_ephemeral": interaction.ephemeral,
        }
        if interaction.original_id is not None:
            info["response_message_id"] = str(interaction.original_id)
        return 200, {"interaction": info, "resource": resource}

    async def _edit_original(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        if interaction.original_id is None:
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        message = self._message(str(interaction.original_id))
        self._apply(message, body, files, "edit original")
        return 200, message.to_json()

    async def _get_original(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        if interaction.original_id is None:
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        return 200, self._message(str(interaction.original_id)).to_json()

    async def _delete_original(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        if interaction.original_id is None:
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        self._message(str(interaction.original_id)).deleted = True
        return 204, None

    async def _followup(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        if interaction.response_type is None:
            raise _Refused(400, {"message": "Interaction has not been acknowledged.", "code": 40060})
        original = None if interaction.original_id is None else self.messages[interaction.original_id]
        if original is not None and original.flags & LOADING:
            message = original  # Discord: the first follow-up fills the deferred message
            self._apply(message, body, files, "follow-up")
        else:
            flags = EPHEMERAL if int(body.get("flags", 0)) & EPHEMERAL else 0
            message = FakeMessage(self._snowflake(), interaction.channel_id, interaction.guild_id, self.bot_user, flags=flags)
            message.interaction_token = interaction.token
            self._apply(message, body, files, "follow-up")
            self.messages[message.id] = message
        return 200, message.to_json()

    async def _edit_followup(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        message = self._message(request.match_info["message"])
        if message.interaction_token != interaction.token:
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        self._apply(message, body, files, "edit follow-up")
        return 200, message.to_json()

    async def _delete_followup(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        interaction = self._interaction(request)
        message = self._message(request.match_info["message"])
        if message.interaction_token != interaction.token:
            raise _Refused(404, {"message": "Unknown Message", "code": 10008})
        message.deleted = True
        return 204, None

    async def _channel_send(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        channel_id = int(request.match_info["channel"])
        nonce = str(body.get("nonce")) if body.get("enforce_nonce") and body.get("nonce") is not None else None
        earlier = self._nonces.get((channel_id, nonce)) if nonce is not None else None
        if earlier is not None and self.now() - snowflake_time(earlier.id) < NONCE_WINDOW_S:
            self.nonce_hits += 1
            return 200, earlier.to_json()  # Discord: the message made with that nonce, not a new one
        message = FakeMessage(self._snowflake(), channel_id, self._channel_guild(channel_id), self.bot_user)
        if nonce is not None:
            self._nonces[(channel_id, nonce)] = message
        reference = body.get("message_reference")
        if reference is not None:
            referenced = self.messages.get(int(reference["message_id"]))
            if referenced is None and reference.get("fail_if_not_exists", True):
                raise _Refused(400, {"message": "Invalid Form Body", "code": 50035})
            if referenced is not None:
                message.reference_id, message.type, message.referenced = referenced.id, 19, referenced.to_json()
        self._apply(message, body, files, "channel send")
        self.messages[message.id] = message
        return 200, message.to_json()

    async def _channel_edit(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        message = self._message(request.match_info["message"], int(request.match_info["channel"]))
        if message.ephemeral or not message.author.get("bot"):
            raise _Refused(404 if message.ephemeral else 403, {"message": "Cannot edit", "code": 10008 if message.ephemeral else 50005})
        self._apply(message, body, files, "channel edit")
        return 200, message.to_json()

    async def _channel_delete(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        self._message(request.match_info["message"], int(request.match_info["channel"])).deleted = True
        return 204, None

    async def _typing(self, request: web.Request, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        self._bot_auth(request)
        self._channel_guild(int(request.match_info["channel"]))
        return 204, None


async def _ack(ws: web.WebSocketResponse) -> None:
    if not ws.closed:
        await ws.send_str(json.dumps({"op": 11}))


def _rate_limited(retry_after: float) -> Failure:
    """A 429 the way Discord sends it: ``Via`` header, ``retry_after`` in the body."""
    body: Json = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    return Failure(429, body, {"Via": "1.1 google", "Retry-After": str(max(1, round(retry_after)))})


def _bucket(name: str, request: web.Request) -> tuple[str, str]:
    """A rate-limit bucket as discord.py keys it: the route and its major parameter."""
    info = request.match_info
    return name, info.get("channel") or info.get("token") or info.get("guild") or info.get("app") or ""


class _Dropped(Exception):
    """The fake closes the connection without an answer."""

    def __init__(self, fault: str) -> None:
        super().__init__(fault)
        self.fault = fault


class _Refused(Exception):
    def __init__(self, status: int, body: Json) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


#: (method, path under /api/v10, route name); the handler is FakeDiscord._<name>
_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/users/@me", "get_me"),
    ("GET", "/oauth2/applications/@me", "app_info"),
    ("PUT", "/applications/{app}/commands", "sync_global"),
    ("PUT", "/applications/{app}/guilds/{guild}/commands", "sync_guild"),
    ("POST", "/interactions/{id}/{token}/callback", "callback"),
    ("GET", "/webhooks/{app}/{token}/messages/@original", "get_original"),
    ("PATCH", "/webhooks/{app}/{token}/messages/@original", "edit_original"),
    ("DELETE", "/webhooks/{app}/{token}/messages/@original", "delete_original"),
    ("POST", "/webhooks/{app}/{token}", "followup"),
    ("PATCH", "/webhooks/{app}/{token}/messages/{message}", "edit_followup"),
    ("DELETE", "/webhooks/{app}/{token}/messages/{message}", "delete_followup"),
    ("POST", "/channels/{channel}/messages", "channel_send"),
    ("PATCH", "/channels/{channel}/messages/{message}", "channel_edit"),
    ("DELETE", "/channels/{channel}/messages/{message}", "channel_delete"),
    ("POST", "/channels/{channel}/typing", "typing"),
]

_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")


def _mentioned(content: str, reference: FakeMessage | None) -> Iterator[str]:
    """Everything a message names that Discord would ping if allowed."""
    for word in ("@everyone", "@here"):
        if word in content:
            yield word
    for user_id in _USER.findall(content):
        yield f"users:{user_id}"
    for role_id in _ROLE.findall(content):
        yield f"roles:{role_id}"
    if reference is not None and not reference.author.get("bot"):
        yield f"replied:{reference.author['id']}"


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
    """JSON, or multipart with ``payload_json`` and ``files[n]`` (discord.py's uploads)."""
    if not request.can_read_body:
        return {}, []
    if request.content_type.startswith("multipart/"):
        body: Any = {}
        files: list[tuple[str, bytes]] = []
        reader = await request.multipart()
        async for part in reader:
            if part.name == "payload_json":
                body = json.loads(await part.text())  # type: ignore[union-attr]
            elif part.filename:
                files.append((part.filename, bytes(await part.read())))  # type: ignore[union-attr]
        return body, files
    raw = await request.read()
    with contextlib.suppress(ValueError):
        return json.loads(raw) if raw else {}, []
    return {"_raw": raw.decode(errors="replace")}, []
