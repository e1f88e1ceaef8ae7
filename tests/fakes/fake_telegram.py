"""A fake Telegram Bot API server on 127.0.0.1 for the real python-telegram-bot client.

It speaks the wire protocol PTB uses (``POST /bot<token>/<method>``, form-encoded or
multipart bodies whose values are strings or JSON, ``{"ok": ..., "result"}`` answers;
see ../shared/notes/platform-fakes.md) and keeps what a chat would show: the bot's
messages with their edits, drafts, photos, documents, deletions, and the users'
messages that tests inject (long polling, or pushed to a webhook with its secret).

Tests can queue failures per method (429 with ``retry_after``, 400, 403, 5xx), block
a chat (every message call there answers 403 "bot was blocked by the user"), and start
a storm (``storms.start``, see ``storm.py``): for a while a share of the calls answer
429, 500/502/503, hang or lose their connection; ``rates()`` reports the rates seen.

It also checks what the real Telegram would punish or refuse, and records each breach
in ``violations`` (``assert_clean`` fails the test with them):

- message calls (send, edit, draft, photo, document) in one chat closer than
  ``min_gap_s`` (Telegram: ~1 per second per chat), more than ``group_per_minute`` in a
  group within 60 s, more than ``overall_per_second`` in all chats within a second;
- any call in a chat (or, without a chat, of a method) before an announced
  ``retry_after`` has passed (also counted in ``calls_in_retry_window``);
- text or captions that would not parse: empty, over 4096 / 1024 UTF-16 units, a parse
  mode whose markup is broken; callback data over 64 bytes; drafts outside private chats;
- any method or route it does not know (also answered with a loud JSON 404).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from tests.fakes.storm import LOST_ANSWER, Storms, drop, hang_then_drop, max_in_window, min_gap
from tests.sentinels import TELEGRAM_TOKEN

TOKEN = TELEGRAM_TOKEN  # a sentinel: tests/sentinel_check.py fails a test that logs it
BOT_ID = 123456789
BOT_USERNAME = "ovbot_test_bot"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

#: methods that post or change a message: paced, and counted against flood limits
MESSAGE_METHODS = frozenset({"sendMessage", "editMessageText", "sendMessageDraft", "sendPhoto", "sendDocument"})
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
T = TypeVar("T")
JSON = dict[str, Any]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, str]
    files: dict[str, bytes]
    at: float
    chat_id: int | None
    status: int = 200
    #: the storm fault that hit it ("429", "500", "timeout", "drop", ...), if any
    fault: str | None = None

    def json(self, name: str) -> Any:
        value = self.params.get(name)
        return None if value is None else json.loads(value)


@dataclass
class Posted:
    """A message in a chat, as a client would see it."""

    chat_id: int
    message_id: int
    from_bot: bool
    user: JSON
    kind: str = "text"  # text, photo, document
    text: str | None = None
    caption: str | None = None
    reply_markup: JSON | None = None
    reply_to: int | None = None
    thread_id: int | None = None
    file: bytes | None = None
    filename: str | None = None
    entities: list[JSON] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    deleted: bool = False

    @property
    def edits(self) -> int:
        return max(0, len(self.history) - 1)

    @property
    def body(self) -> str:
        return self.text if self.text is not None else self.caption or ""


@dataclass
class Failure:
    method: str
    code: int
    description: str
    retry_after: int | None
    chat_id: int | None
    times: int


#: how many update ids each fake server has to itself (see ``FakeTelegram.__init__``)
UPDATE_ID_BLOCK = 1_000_000
_FAKES = itertools.count(1)


class FakeTelegram:
    def __init__(
        self,
        *,
        token: str = TOKEN,
        username: str = BOT_USERNAME,
        min_gap_s: float = 0.9,
        group_per_minute: int = 20,
        overall_per_second: int = 30,
        drafts: bool = True,
    ) -> None:
        self.token = token
        self.bot_user: JSON = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "ovbot",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.min_gap_s = min_gap_s
        self.group_per_minute = group_per_minute
        self.overall_per_second = overall_per_second
        #: storms of faults for a while (``storms.start``); what they injected
        self.storms = Storms()
        #: calls made while a retry_after announced for their chat (or, for calls
        #: without a chat, their method) had not passed
        self.calls_in_retry_window = 0
        self._method_retry_until: dict[str, float] = {}
        self._recent_message_calls: deque[float] = deque()
        #: False: behave like a Bot API server without sendMessageDraft (404)
        self.drafts_supported = drafts
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.messages: dict[tuple[int, int], Posted] = {}
        self.drafts: dict[int, list[tuple[int, str]]] = {}
        self.callback_answers: list[JSON] = []
        self.commands: list[JSON] = []
        self.webhook: JSON | None = None
        self.webhook_posts: list[int] = []
        self.not_modified = 0
        self.confirmed_offset = 0
        self._updates: list[JSON] = []
        # update ids are the bot's and never repeat; every fake here is the same bot
        # (one token), later in time, so each continues from a block of its own:
        # ovbot's update log would rightly drop a reused id as a duplicate
        self._update_ids = itertools.count(next(_FAKES) * UPDATE_ID_BLOCK + 1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._callback_ids = itertools.count(1)
        self._failures: list[Failure] = []
        #: methods whose calls wait (unanswered) until ``release``
        self._held: dict[str, asyncio.Event] = {}
        self._blocked: set[int] = set()
        self._last_message_call: dict[int, float] = {}
        self._group_calls: dict[int, deque[float]] = {}
        self._retry_until: dict[int, float] = {}
        self._new_update = asyncio.Event()
        self._closing = False
        self._tick = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pushes: set[asyncio.Task[None]] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._unhandled)
        # a client that gives up a long poll cancels its handler (no 30 s wait at stop)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True
        self._new_update.set()  # long polls still waiting return now
        for gate in self._held.values():
            gate.set()
        for task in list(self._pushes):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ people and chats
    @staticmethod
    def person(user_id: int, first_name: str = "Ann", username: str | None = None) -> JSON:
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        return user

    @staticmethod
    def private_chat(user: JSON) -> JSON:
        return {"id": user["id"], "type": "private", "first_name": user["first_name"]}

    @staticmethod
    def group_chat(chat_id: int, title: str = "The group") -> JSON:
        assert chat_id < 0, "group ids are negative"
        return {"id": chat_id, "type": "supergroup", "title": title}

    # ------------------------------------------------------------------ injecting updates
    def say(
        self,
        chat: JSON,
        user: JSON,
        text: str,
        *,
        reply_to: int | None = None,
        entities: list[JSON] | None = None,
    ) -> int:
        """``user`` writes ``text`` in ``chat`` (commands and @mentions get their
        entities as Telegram's clients make them); returns the message id."""
        message = Posted(chat["id"], self._next_message_id(chat["id"]), False, user, text=text, reply_to=reply_to)
        message.entities = entities if entities is not None else _entities(text)
        message.history.append(text)
        self.messages[(chat["id"], message.message_id)] = message
        self.inject({"message": self._message_json(message, chat)})
        return message.message_id

    def send_other(self, chat: JSON, user: JSON) -> int:
        """A sticker (a message without text)."""
        message = Posted(chat["id"], self._next_message_id(chat["id"]), False, user, kind="sticker")
        self.messages[(chat["id"], message.message_id)] = message
        data = self._message_json(message, chat)
        data["sticker"] = {
            "file_id": "sticker-1", "file_unique_id": "s1", "type": "regular",
            "width": 512, "height": 512, "is_animated": False, "is_video": False,
        }  # fmt: skip
        self.inject({"message": data})
        return message.message_id

    def press(self, chat: JSON, user: JSON, message_id: int, data: str) -> str:
        """``user`` presses the inline button with ``data`` under a bot message."""
        message = self.messages[(chat["id"], message_id)]
        query_id = f"cb{next(self._callback_ids)}"
        self.inject(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": self._message_json(message, chat),
                    "chat_instance": f"ci{chat['id']}",
                    "data": data,
                }
            }
        )
        return query_id

    def inject(self, update: JSON) -> int:
        update = {"update_id": next(self._update_ids), **update}
        if self.webhook is not None:
            task = asyncio.ensure_future(self._push(update))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)
        else:
            self._updates.append(update)
            self._new_update.set()
        return int(update["update_id"])

    async def _push(self, update: JSON) -> None:
        assert self.webhook is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {}
        if self.webhook.get("secret_token"):
            headers[SECRET_HEADER] = self.webhook["secret_token"]
        async with self._session.post(self.webhook["url"], json=update, headers=headers) as response:
            self.webhook_posts.append(response.status)
        self._notify()

    # ------------------------------------------------------------------ failures
    def fail(
        self,
        method: str,
        code: int,
        description: str,
        *,
        retry_after: int | None = None,
        chat_id: int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls of ``method`` (in ``chat_id``, if given) fail."""
        self._failures.append(Failure(method, code, description, retry_after, chat_id, times))

    def too_many_requests(
        self, method: str, *, retry_after: int = 1, chat_id: int | None = None, times: int = 1
    ) -> None:
        description = f"Too Many Requests: retry after {retry_after}"
        self.fail(method, 429, description, retry_after=retry_after, chat_id=chat_id, times=times)

    def hold(self, method: str) -> None:
        """Calls of ``method`` get no answer until ``release(method)``: the client's
        handler that made the call stays blocked (e.g. to crash ovbot inside it)."""
        self._held.setdefault(method, asyncio.Event())

    def release(self, method: str) -> None:
        gate = self._held.pop(method, None)
        if gate is not None:
            gate.set()

    def clear_failures(self) -> None:
        self._failures.clear()

    def unblock(self, chat_id: int) -> None:
        self._blocked.discard(chat_id)

    def block(self, chat_id: int) -> None:
        """The user blocked the bot: every message call there answers 403."""
        self._blocked.add(chat_id)

    # ------------------------------------------------------------------ reading
    def calls_of(self, method: str | None = None, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if (method is None or c.method == method) and (chat_id is None or c.chat_id == chat_id)
        ]

    def bot_messages(self, chat_id: int, *, include_deleted: bool = False) -> list[Posted]:
        found = [m for (c, _), m in self.messages.items() if c == chat_id and m.from_bot]
        return sorted((m for m in found if include_deleted or not m.deleted), key=lambda m: m.message_id)

    def texts(self, chat_id: int) -> list[str]:
        return [m.body for m in self.bot_messages(chat_id)]

    def replies_by_origin(self, chat_id: int) -> dict[int | None, list[Posted]]:
        """The bot's visible messages in ``chat_id`` by the message each replies to
        (None: none, as in private chats), oldest first: how a test counts the final
        deliveries of each turn (a reply posted twice shows up twice)."""
        grouped: dict[int | None, list[Posted]] = {}
        for message in self.bot_messages(chat_id):
            grouped.setdefault(message.reply_to, []).append(message)
        return grouped

    async def wait_until(self, check: Callable[[], T], timeout: float = 60.0, what: str = "a condition") -> T:
        """Bounded wait for ``check()`` to be truthy (re-checked at every call)."""
        deadline = time.monotonic() + timeout
        while True:
            self._tick.clear()
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = ", ".join(f"{c.method}({c.chat_id})={c.status}" for c in self.calls[-12:])
                raise AssertionError(f"timed out waiting for {what}; last calls: {recent}")
            try:
                await asyncio.wait_for(self._tick.wait(), min(remaining, 0.25))
            except asyncio.TimeoutError:
                pass

    def assert_clean(self) -> None:
        assert not self.violations, "the client broke Telegram's rules:\n" + "\n".join(self.violations)

    # ------------------------------------------------------------------ the API
    async def _unhandled(self, request: web.Request) -> web.Response:
        self.violations.append(f"unhandled route {request.method} {_redact(request.path, self.token)}")
        self._notify()
        return _error(404, f"Not Found: the fake has no {_redact(request.path, self.token)}")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        try:
            params, files = await _read_params(request)
        except ConnectionResetError:  # the client gave up (a long poll cancelled at stop)
            return _error(400, "Bad Request: connection lost")
        chat_id = _int(params.get("chat_id"))
        call = Call(method, params, files, time.monotonic(), chat_id)
        self.calls.append(call)
        try:
            response = await self._dispatch(call, request)
        except _ApiError as error:
            response = _error(error.code, error.description, error.parameters)
        except _Dropped:
            drop(request)
            self._notify()
            return web.Response(status=204)  # never written: the connection is gone
        call.status = response.status
        self._notify()
        if call.fault == LOST_ANSWER:
            drop(request)
            return web.Response(status=204)  # never written: the answer is lost
        return response

    async def _dispatch(self, call: Call, request: web.Request) -> web.Response:
        method = call.method
        self._check_retry_window(call)
        if method in MESSAGE_METHODS and call.chat_id is not None:
            self._check_pace(call)
        await self._storm_fault(call, request)
        failure = self._take_failure(call)
        if failure is not None:
            if failure.retry_after is not None and call.chat_id is not None:
                self._retry_until[call.chat_id] = call.at + failure.retry_after
            parameters = {"retry_after": failure.retry_after} if failure.retry_after is not None else None
            raise _ApiError(failure.code, failure.description, parameters)
        if method in MESSAGE_METHODS and call.chat_id in self._blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        gate = self._held.get(method)
        if gate is not None:
            await gate.wait()
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            self.violations.append(f"unknown method {method}")
            raise _ApiError(404, "Not Found: method not found")
        result = await handler(call)
        return web.json_response({"ok": True, "result": result})

    def _take_failure(self, call: Call) -> Failure | None:
        for failure in self._failures:
            if failure.method == call.method and failure.chat_id in (None, call.chat_id) and failure.times > 0:
                failure.times -= 1
                return failure
        return None

    def _check_pace(self, call: Call) -> None:
        chat_id = call.chat_id
        assert chat_id is not None
        now = call.at
        last = self._last_message_call.get(chat_id)
        if last is not None and now - last < self.min_gap_s:
            self.violations.append(
                f"{call.method} in chat {chat_id} only {now - last:.3f} s after the previous message call "
                f"(at most one per {self.min_gap_s:g} s)"
            )
        self._last_message_call[chat_id] = now
        overall = self._recent_message_calls
        while overall and overall[0] <= now - 1.0:
            overall.popleft()
        overall.append(now)
        if len(overall) > self.overall_per_second:
            self.violations.append(f"{len(overall)} message calls within a second (at most {self.overall_per_second})")
        if chat_id < 0:
            window = self._group_calls.setdefault(chat_id, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            window.append(now)
            if len(window) > self.group_per_minute:
                self.violations.append(f"{len(window)} message calls in group {chat_id} within a minute")

    def _check_retry_window(self, call: Call) -> None:
        if call.chat_id is not None:
            until, scope = self._retry_until.get(call.chat_id), f"chat {call.chat_id}"
        else:
            until, scope = self._method_retry_until.get(call.method), f"method {call.method}"
        if until is not None and call.at < until:
            self.calls_in_retry_window += 1
            self.violations.append(f"{call.method} in {scope} {until - call.at:.2f} s before retry_after passed")

    async def _storm_fault(self, call: Call, request: web.Request) -> None:
        """Fail ``call`` the way a storm says, if one hits it."""
        hit = self.storms.pick(call.method, call.at)
        if hit is None:
            return
        fault, storm = hit
        call.fault = fault
        if fault == LOST_ANSWER:
            return  # the call is carried out; ``_handle`` loses its answer
        if fault == "429":
            seconds = max(1, round(storm.retry_after))
            if call.chat_id is not None:
                self._retry_until[call.chat_id] = call.at + seconds
            else:
                self._method_retry_until[call.method] = call.at + seconds
            raise _ApiError(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})
        if fault in ("500", "502", "503"):
            raise _ApiError(int(fault), _SERVER_ERRORS[fault])
        call.status = 0
        if fault == "timeout":
            self._notify()
            await hang_then_drop(request, storm.hang_s)
        raise _Dropped()

    def rates(self) -> dict[str, float | int | None]:
        """The highest message-call rates seen (every call that reached the server,
        failed ones included): least gap in one chat, most in one chat within a
        second, most in one group within a minute, most overall within a second."""
        per_chat: dict[int, list[float]] = {}
        for call in self.calls:
            if call.method in MESSAGE_METHODS and call.chat_id is not None:
                per_chat.setdefault(call.chat_id, []).append(call.at)
        everything = sorted(at for times in per_chat.values() for at in times)
        gaps = [gap for times in per_chat.values() if (gap := min_gap(times)) is not None]
        return {
            "chat_min_gap_s": min(gaps) if gaps else None,
            "chat_max_per_s": max((max_in_window(t, 1.0) for t in per_chat.values()), default=0),
            "group_max_per_min": max((max_in_window(t, 60.0) for c, t in per_chat.items() if c < 0), default=0),
            "overall_max_per_s": max_in_window(everything, 1.0),
        }

    # ---- methods
    async def _api_getMe(self, call: Call) -> JSON:
        return self.bot_user

    async def _api_setMyCommands(self, call: Call) -> bool:
        commands = call.json("commands") or []
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command.get("command", "")) or not (
                1 <= len(command.get("description", "")) <= 256
            ):
                self.violations.append(f"bad bot command {command!r}")
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        self.commands = commands
        return True

    async def _api_deleteWebhook(self, call: Call) -> bool:
        self.webhook = None
        return True

    async def _api_setWebhook(self, call: Call) -> bool:
        self.webhook = {"url": call.params["url"], "secret_token": call.params.get("secret_token")}
        return True

    async def _api_getUpdates(self, call: Call) -> list[JSON]:
        if self.webhook is not None:
            raise _ApiError(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = _int(call.params.get("offset")) or 0
        timeout = float(call.params.get("timeout") or 0)
        if offset:
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0 and not self._closing:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        limit = _int(call.params.get("limit")) or 100
        return self._updates[:limit]

    async def _api_sendMessage(self, call: Call) -> JSON:
        text = self._checked_text(call, call.params.get("text"), TEXT_LIMIT)
        return self._post(call, Posted(self._chat(call), 0, True, self.bot_user, text=text))

    async def _api_editMessageText(self, call: Call) -> JSON:
        text = self._checked_text(call, call.params.get("text"), TEXT_LIMIT)
        message = self._own_message(call, "Bad Request: message to edit not found")
        markup = call.json("reply_markup")
        if message.text == text and (markup is None or markup == message.reply_markup):
            self.not_modified += 1
            raise _ApiError(400, NOT_MODIFIED)
        message.text = text
        message.history.append(text)
        if markup is not None:
            message.reply_markup = markup
        return self._message_json(message)

    async def _api_sendMessageDraft(self, call: Call) -> bool:
        if not self.drafts_supported:
            raise _ApiError(404, "Not Found: method not found")
        chat_id = self._chat(call)
        if chat_id <= 0:
            self.violations.append(f"sendMessageDraft in chat {chat_id}, which is not private")
            raise _ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        draft_id = _int(call.params.get("draft_id")) or 0
        if draft_id == 0:
            self.violations.append("sendMessageDraft with draft_id 0")
            raise _ApiError(400, "Bad Request: draft_id must be non-zero")
        text = call.params.get("text", "")
        if text:
            self._checked_text(call, text, TEXT_LIMIT)
        self.drafts.setdefault(chat_id, []).append((draft_id, text))
        return True

    async def _api_sendPhoto(self, call: Call) -> JSON:
        return self._post_file(call, "photo")

    async def _api_sendDocument(self, call: Call) -> JSON:
        return self._post_file(call, "document")

    async def _api_deleteMessage(self, call: Call) -> bool:
        message = self._own_message(call, "Bad Request: message to delete not found")
        message.deleted = True
        return True

    async def _api_answerCallbackQuery(self, call: Call) -> bool:
        text = call.params.get("text")
        if text is not None and len(text) > 200:
            self.violations.append(f"callback answer of {len(text)} characters (at most 200)")
            raise _ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self.callback_answers.append(
            {"id": call.params.get("callback_query_id"), "text": text, "alert": call.params.get("show_alert") == "true"}
        )
        return True

    # ---- helpers
    def _chat(self, call: Call) -> int:
        if call.chat_id is None:
            raise _ApiError(400, "Bad Request: chat_id is empty")
        return call.chat_id

    def _own_message(self, call: Call, missing: str) -> Posted:
        message = self.messages.get((self._chat(call), _int(call.params.get("message_id")) or 0))
        if message is None or message.deleted or not message.from_bot:
            raise _ApiError(400, missing)
        return message

    def _post(self, call: Call, message: Posted) -> JSON:
        message.message_id = self._next_message_id(message.chat_id)
        reply = call.json("reply_parameters")
        if reply:
            message.reply_to = int(reply["message_id"])
        markup = call.json("reply_markup")
        if markup is not None:
            for row in markup.get("inline_keyboard", []):
                for button in row:
                    data = button.get("callback_data")
                    if data is not None and len(data.encode()) > 64:
                        self.violations.append(f"callback data of {len(data.encode())} bytes (at most 64)")
                        raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
            message.reply_markup = markup
        message.thread_id = _int(call.params.get("message_thread_id"))
        message.history.append(message.body)
        self.messages[(message.chat_id, message.message_id)] = message
        return self._message_json(message)

    def _post_file(self, call: Call, kind: str) -> JSON:
        data = call.files.get(kind)
        if data is None:
            self.violations.append(f"send{kind.title()} without an uploaded {kind}")
            raise _ApiError(400, f"Bad Request: there is no {kind} in the request")
        caption = call.params.get("caption")
        if caption is not None:
            self._checked_text(call, caption, CAPTION_LIMIT, what="caption")
        message = Posted(self._chat(call), 0, True, self.bot_user, kind=kind, caption=caption, file=data)
        message.filename = call.params.get(f"{kind}__filename")
        return self._post(call, message)

    def _checked_text(self, call: Call, text: str | None, limit: int, what: str = "message text") -> str:
        if text is None or not text.strip():
            self.violations.append(f"{call.method}: empty {what}")
            raise _ApiError(400, f"Bad Request: {what} is empty")
        if utf16_len(text) > limit:
            self.violations.append(f"{call.method}: {what} of {utf16_len(text)} UTF-16 units (at most {limit})")
            raise _ApiError(400, f"Bad Request: {what} is too long")
        mode = call.params.get("parse_mode")
        if mode:
            problem = _markup_problem(text, mode)
            if problem:
                self.violations.append(f"{call.method}: {what} does not parse as {mode}: {problem}")
                raise _ApiError(400, f"Bad Request: can't parse entities: {problem}")
        return text

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _message_json(self, message: Posted, chat: JSON | None = None, *, nested: bool = True) -> JSON:
        chat = chat or (
            {"id": message.chat_id, "type": "private", "first_name": "Ann"}
            if message.chat_id > 0
            else {"id": message.chat_id, "type": "supergroup", "title": "The group"}
        )
        data: JSON = {"message_id": message.message_id, "date": int(time.time()), "chat": chat, "from": message.user}
        if message.text is not None:
            data["text"] = message.text
        if message.entities:
            data["entities"] = message.entities
        if message.caption is not None:
            data["caption"] = message.caption
        if message.kind == "photo" and message.file is not None:
            data["photo"] = [
                {"file_id": f"photo-{message.message_id}", "file_unique_id": f"p{message.message_id}",
                 "width": 64, "height": 64, "file_size": len(message.file)}
            ]  # fmt: skip
        if message.kind == "document" and message.file is not None:
            data["document"] = {
                "file_id": f"doc-{message.message_id}", "file_unique_id": f"d{message.message_id}",
                "file_name": message.filename or "file", "mime_type": "image/png", "file_size": len(message.file),
            }  # fmt: skip
        if message.reply_markup is not None:
            data["reply_markup"] = message.reply_markup
        if message.thread_id is not None:
            data["message_thread_id"] = message.thread_id
        if nested and message.reply_to is not None:
            replied = self.messages.get((message.chat_id, message.reply_to))
            if replied is not None:
                data["reply_to_message"] = self._message_json(replied, chat, nested=False)
        return data

    def _notify(self) -> None:
        self._tick.set()


_SERVER_ERRORS = {"500": "Internal Server Error", "502": "Bad Gateway", "503": "Service Unavailable"}


class _Dropped(Exception):
    """The fake closes the connection without an answer."""


class _ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def _error(code: int, description: str, parameters: JSON | None = None) -> web.Response:
    body: JSON = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


async def _read_params(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
    params: dict[str, str] = dict(request.query)
    files: dict[str, bytes] = {}
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            for key, value in (await request.json()).items():
                params[key] = value if isinstance(value, str) else json.dumps(value)
        else:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = value.file.read()
                    params[f"{key}__filename"] = value.filename
                else:
                    params[key] = str(value)
    # PTB attaches uploads by name: photo="attach://<name>"
    for key, value in list(params.items()):
        if value.startswith("attach://") and value[len("attach://") :] in files:
            files[key] = files[value[len("attach://") :]]
    return params, files


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _redact(path: str, token: str) -> str:
    return path.replace(token, "<token>")


_MENTION = re.compile(r"@[A-Za-z0-9_]{5,32}")


def _entities(text: str) -> list[JSON]:
    """What Telegram's clients mark: a leading /command and @mentions (UTF-16 offsets)."""
    entities: list[JSON] = []
    command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command.group(0))})
    for match in _MENTION.finditer(text):
        entities.append(
            {"type": "mention", "offset": utf16_len(text[: match.start()]), "length": utf16_len(match.group(0))}
        )
    return entities


# ---------------------------------------------------------------- markup checks

_HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
              "blockquote", "tg-emoji"}  # fmt: skip
_MARKDOWN_V2_SPECIAL = set("_*[]()~`>#+-=|{}.!\\")


class _HtmlCheck(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            self.problem = self.problem or f"unsupported start tag {tag!r}"
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problem = self.problem or f"unexpected end tag {tag!r}"
        else:
            self.stack.pop()

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            self.problem = self.problem or f"unsupported entity &{name};"


def _markup_problem(text: str, mode: str) -> str | None:
    if mode.upper() == "HTML":
        if re.search(r"&(?![a-zA-Z]+;|#\d+;|#x[0-9a-fA-F]+;)", text):
            return "a bare & (write &amp;)"
        if re.search(r"<(?![a-zA-Z/])", text):
            return "a bare < (write &lt;)"
        check = _HtmlCheck()
        check.feed(text)
        check.close()
        if check.problem:
            return check.problem
        return f"unclosed tag {check.stack[-1]!r}" if check.stack else None
    if mode == "MarkdownV2":
        escaped = False
        for char in text:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in _MARKDOWN_V2_SPECIAL:
                return f"character {char!r} is reserved and must be escaped"
        return None
    return f"the fake does not check parse mode {mode!r}; send plain text"
