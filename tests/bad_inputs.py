"""The bad-input corpus: what users (and attackers) send, as named data, shared by the
HTTP, Telegram and Discord corpus tests (``test_bad_input_*.py``).

Every case has a readable id (it is the pytest id). A case says only what is sent and
which outcomes are acceptable; the tests decide how to send it and check that the answer
is a clear user-facing error or a normal answer, never a crash, a traceback or a ping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- texts


#: texts a person can paste anywhere a text goes (messages, prompts, personas)
NASTY_TEXTS: dict[str, str] = {
    "empty": "",
    "spaces": "     ",
    "tabs-newlines": "\t\n\r \n",
    "unicode-spaces": "\u00a0\u2003\u3000",
    "100k-chars": "x" * 100_000,
    "one-5000-char-word": "w" * 5_000,
    "lone-high-surrogate": "hello \ud800 there",
    "lone-low-surrogate": "\udfff",
    "reversed-surrogates": "a\udc00\ud800b",
    "nul-byte": "a\x00b",
    "c0-controls": "ctl " + "".join(chr(code) for code in range(1, 32)),
    "del-and-c1": "x\x7f\x85\x9f",
    "ansi-escapes": "\x1b[31mred\x1b[0m \x1b]0;title\x07",
    "rtl-override": "\u202eevil.exe\u202c txt",
    "arabic-rtl": "مرحبا بالعالم",
    "zero-width": "he\u200bl\u200cl\u200do\ufeff",
    "only-zero-width": "\u200b\u200b\ufeff",
    "bom-first": "\ufeffhello",
    "zalgo": "Z\u0337\u0322\u0348a\u0338l\u0335g\u0335o\u0338" * 20,
    "emoji-zwj": "👍🏽 👨\u200d👩\u200d👧 🏳️\u200d🌈",
    "cjk": "你好，世界。こんにちは",
    "html": "<b>bold</b><script>alert(1)</script>",
    "html-unbalanced": "<b>unclosed <i>",
    "markdown": "**bold** _it_ `code` [link](http://example.com) ~~x~~ ||spoiler||",
    "markdown-unbalanced": "*_`[ ``` ](",
    "code-fence": "```\nrm -rf /\n```",
    "everyone": "@everyone @here look",
    "discord-mentions": "<@123456> <@!42> <@&789> <#1111>",
    "telegram-mention-command": "@admin /limits set 1 chat=0/hour",
    "sql": "'; DROP TABLE jobs; --",
    "path": "../../etc/passwd",
    "templates": "{{7*7}} ${jndi:ldap://x/a} %s%n {0}",
    "json-in-text": '{"user_id": "root", "admin": true}',
    "newline-command": "hi\n/block telegram:1",
}

#: the texts that are not blank: what Telegram and Discord can deliver as a message
VISIBLE_TEXTS: dict[str, str] = {
    name: text for name, text in NASTY_TEXTS.items() if text.strip() and name != "only-zero-width"
}

#: ids a client picks (HTTP user and conversation ids) or names in a path
NASTY_IDS: dict[str, str] = {
    "empty": "",
    "space": "a b",
    "dotdot-path": "../../etc/passwd",
    "encoded-dotdot": "%2e%2e%2f%2e%2e%2fetc",
    "dots-ok": "..",
    "backslash": "..\\..\\win.ini",
    "slash": "a/b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "129-chars": "u" * 129,
    "10k-chars": "u" * 10_000,
    "unicode": "ünïcödé",
    "rtl": "\u202eabc",
    "zero-width": "a\u200bb",
    "emoji": "🙂",
    "sql": "x' OR '1'='1",
    "percent": "100%",
    "question": "a?b=c",
    "hash": "a#b",
    "128-chars-ok": "u" * 128,
    "punctuation-ok": "a.b@c:d+e-f_g",
}

# ---------------------------------------------------------------- HTTP

#: a body that must be sent exactly as these bytes
Raw = bytes


@dataclass(frozen=True)
class HttpCase:
    """One request. ``body`` is JSON-encoded with Python's encoder (ASCII escapes, so
    lone surrogates and NaN get through as JSON allows them); ``raw`` is sent as is.
    ``{other_job}`` / ``{own_job}`` in the path are filled by the test with a job of
    another API key / of another user under the same key."""

    id: str
    method: str
    path: str
    body: Any = None
    raw: Raw | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    #: acceptable statuses: 2xx ones are normal answers, the rest errors
    allowed: frozenset[int] = frozenset({400, 422})
    authorized: bool = True

    def content(self) -> bytes | None:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return None
        return json.dumps(self.body).encode()


TEXT_ANSWER = frozenset({200, 400, 422})
ACCEPTED_OR_ERROR = frozenset({202, 400, 422})
NOT_FOUND = frozenset({404, 422})


def _http_cases() -> list[HttpCase]:
    cases: list[HttpCase] = []
    add = cases.append
    for name, text in NASTY_TEXTS.items():
        add(HttpCase(f"chat-message-{name}", "POST", "/chat", {"user_id": "corpus", "message": text}, allowed=TEXT_ANSWER))
        add(HttpCase(f"image-prompt-{name}", "POST", "/images", {"user_id": "corpus", "prompt": text, "steps": 1}, allowed=ACCEPTED_OR_ERROR))
        add(HttpCase(f"persona-{name}", "POST", "/persona", {"user_id": "corpus", "persona": text}, allowed=TEXT_ANSWER))
    add(HttpCase("image-negative-100k", "POST", "/images", {"user_id": "corpus", "prompt": "cat", "negative_prompt": "n" * 100_000}))
    add(HttpCase("image-negative-surrogate", "POST", "/images", {"user_id": "corpus", "prompt": "cat", "negative_prompt": "\ud800", "steps": 1}, allowed=ACCEPTED_OR_ERROR))
    for name, ident in NASTY_IDS.items():
        ok = frozenset({200}) if name.endswith("-ok") else frozenset({422})
        add(HttpCase(f"chat-user-id-{name}", "POST", "/chat", {"user_id": ident, "message": "hi"}, allowed=ok))
        add(HttpCase(f"reset-conversation-id-{name}", "POST", "/reset", {"user_id": "corpus", "conversation_id": ident}, allowed=ok))
        add(HttpCase(f"usage-user-id-{name}", "GET", "/usage", params={"user_id": ident}, allowed=ok))
    # image parameters: out of range, of the wrong type, not numbers at all
    nan, inf = float("nan"), float("inf")
    image_values: dict[str, list[tuple[str, Any]]] = {
        "steps": [("minus-1", -1), ("zero", 0), ("501", 501), ("1e9", 10**9), ("2-pow-63", 2**63), ("2-pow-64", 2**64),
                  ("minus-2-pow-63", -(2**63)), ("1.5", 1.5), ("string", "5"), ("true", True), ("list", [1]),
                  ("object", {"n": 1}), ("1e308", 1e308), ("nan", nan), ("inf", inf), ("minus-inf", -inf)],
        "cfg": [("nan", nan), ("inf", inf), ("minus-inf", -inf), ("minus-1", -1), ("zero", 0), ("1e308", 1e308),
                ("string", "7"), ("true", True), ("denormal", 5e-324), ("2-pow-70", 2**70)],
        "seed": [("minus-1", -1), ("2-pow-32", 2**32), ("2-pow-64", 2**64), ("1.5", 1.5), ("string", "1"), ("nan", nan)],
        "width": [("zero", 0), ("minus-64", -64), ("65", 65), ("1e9", 10**9), ("2-pow-64", 2**64), ("nan", nan),
                  ("string", "64"), ("float", 64.5)],
        "height": [("zero", 0), ("minus-64", -64), ("huge", 10**12), ("inf", inf)],
    }
    for name, values in image_values.items():
        for label, value in values:
            add(HttpCase(f"image-{name}-{label}", "POST", "/images", {"user_id": "corpus", "prompt": "cat", name: value}))
    for label, options in {
        "steps-minus-1": {"steps": -1}, "cfg-nan": {"cfg": nan}, "width-huge": {"width": 10**9, "height": 64},
        "seed-2-pow-64": {"seed": 2**64}, "unknown-option": {"sampler": "euler"}, "not-an-object": "big",
        "list": [64, 64], "negative-100k": {"negative_prompt": "n" * 100_000},
    }.items():
        add(HttpCase(f"chat-image-{label}", "POST", "/chat", {"user_id": "corpus", "message": "draw", "image": options}))
    # wrong types and unknown fields
    for label, body in {
        "user-id-int": {"user_id": 123, "message": "hi"}, "user-id-null": {"user_id": None, "message": "hi"},
        "user-id-list": {"user_id": ["a"], "message": "hi"}, "message-int": {"user_id": "corpus", "message": 5},
        "message-null": {"user_id": "corpus", "message": None}, "message-list": {"user_id": "corpus", "message": ["hi"]},
        "message-object": {"user_id": "corpus", "message": {"text": "hi"}},
        "show-reasoning-string": {"user_id": "corpus", "message": "hi", "show_reasoning": "yes"},
        "show-reasoning-int": {"user_id": "corpus", "message": "hi", "show_reasoning": 1},
        "reasoning-unknown": {"user_id": "corpus", "message": "hi", "reasoning": "max"},
        "unknown-field": {"user_id": "corpus", "message": "hi", "stpes": 3},
        "proto-field": {"user_id": "corpus", "message": "hi", "__proto__": {"admin": True}},
        "empty-field-name": {"user_id": "corpus", "message": "hi", "": 1},
        "long-field-name": {"user_id": "corpus", "message": "hi", "f" * 5000: 1},
        "no-message": {"user_id": "corpus"}, "no-user-id": {"message": "hi"}, "empty-object": {},
    }.items():
        add(HttpCase(f"chat-{label}", "POST", "/chat", body))
    add(HttpCase("reset-forget-string", "POST", "/reset", {"user_id": "corpus", "forget": "true"}))
    add(HttpCase("reset-forget-int", "POST", "/reset", {"user_id": "corpus", "forget": 1}))
    add(HttpCase("think-mode-unknown", "POST", "/think", {"user_id": "corpus", "mode": "sometimes"}))
    add(HttpCase("think-mode-missing", "POST", "/think", {"user_id": "corpus"}))
    add(HttpCase("think-mode-int", "POST", "/think", {"user_id": "corpus", "mode": 1}))
    add(HttpCase("persona-int", "POST", "/persona", {"user_id": "corpus", "persona": 42}))
    # malformed bodies
    as_json = {"Content-Type": "application/json"}
    for label, raw in {
        "nothing": b"", "open-brace": b"{", "close-brace": b"}", "array": b"[]", "null": b"null", "true": b"true",
        "number": b"1", "string": b'"hi"', "single-quotes": b"{'user_id': 'a'}", "trailing-comma": b'{"user_id": "a",}',
        "bom": b'\xef\xbb\xbf{"user_id": "corpus", "message": "hi"}',
        "invalid-utf8": b'{"user_id": "corpus", "message": "\xff\xfe bad"}',
        "utf16": json.dumps({"user_id": "corpus", "message": "hi"}).encode("utf-16"),
        "deep-arrays": b"[" * 100_000 + b"]" * 100_000,
        "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "duplicate-keys": b'{"user_id": "corpus", "message": "hi", "message": ""}',
        "huge-exponent": b'{"user_id": "corpus", "message": "hi", "show_reasoning": 1e999999}',
        "huge-integer": b'{"user_id": "corpus", "prompt": "cat", "steps": ' + b"9" * 5000 + b"}",
        "nul-byte": b"\x00",
        "form-encoded": b"user_id=corpus&message=hi",
    }.items():
        path = "/images" if label == "huge-integer" else "/chat"
        add(HttpCase(f"body-{label}", "POST", path, raw=raw, headers=as_json, allowed=frozenset({200, 400, 422})))
    for label, content_type in {
        "text-plain": "text/plain", "form": "application/x-www-form-urlencoded", "multipart": "multipart/form-data",
        "latin1-charset": "application/json; charset=latin-1", "xml": "application/xml",
    }.items():
        raw = json.dumps({"user_id": "corpus", "message": "hi"}).encode()
        add(HttpCase(f"content-type-{label}", "POST", "/chat", raw=raw, headers={"Content-Type": content_type},
                     allowed=frozenset({200, 400, 415, 422})))
    # job and image ids in paths: unknown, path-like, someone else's
    job_ids = {
        "unknown": "0123456789abcdef", "dotdot": "..%2F..%2Fetc%2Fpasswd", "encoded-dots": "%2e%2e",
        "double-encoded": "%252e%252e%252f", "nul": "abc%00def", "65-chars": "j" * 65, "10k-chars": "j" * 10_000,
        "unicode": "%C3%BC%E2%80%AE", "space": "a%20b", "other-key-job": "{other_job}", "dot": ".",
    }
    for label, job_id in job_ids.items():
        add(HttpCase(f"job-get-{label}", "GET", f"/jobs/{job_id}", allowed=NOT_FOUND))
        add(HttpCase(f"job-events-{label}", "GET", f"/jobs/{job_id}/events", allowed=NOT_FOUND))
        add(HttpCase(f"job-cancel-{label}", "DELETE", f"/jobs/{job_id}", params={"user_id": "corpus"}, allowed=NOT_FOUND))
        add(HttpCase(f"image-file-{label}", "GET", f"/images/{job_id}.png", allowed=NOT_FOUND))
    add(HttpCase("job-cancel-other-users-job", "DELETE", "/jobs/{own_job}", params={"user_id": "mallory"}, allowed=frozenset({403})))
    add(HttpCase("job-cancel-bad-user-id", "DELETE", "/jobs/{own_job}", params={"user_id": "../x"}, allowed=frozenset({422})))
    add(HttpCase("job-events-last-id-text", "GET", "/jobs/{own_job}/events", headers={"Last-Event-ID": "abc"}, allowed=frozenset({200, 422})))
    add(HttpCase("job-events-last-id-huge", "GET", "/jobs/{own_job}/events", headers={"Last-Event-ID": "9" * 40}, allowed=frozenset({200, 422})))
    add(HttpCase("job-events-last-id-negative", "GET", "/jobs/{own_job}/events", headers={"Last-Event-ID": "-5"}, allowed=frozenset({200, 422})))
    # admins naming users: odd keys, and a non-admin asking
    user_keys = {
        "dotdot": "..%2F..%2Fetc%2Fpasswd", "http-dotdot": "http:..%2F..", "encoded-dots": "http:%2e%2e",
        "nul": "telegram:%00", "no-colon": "nocolon", "only-colon": ":", "no-id": "telegram:", "upper": "TELEGRAM:1",
        "300-digits": "telegram:" + "9" * 300, "space": "telegram:1%202", "rtl": "telegram:%E2%80%AE1",
        "everyone": "discord:@everyone", "negative": "telegram:-1",
    }
    for label, key in user_keys.items():
        allowed = frozenset({200, 400, 404, 422})
        add(HttpCase(f"admin-limits-show-{label}", "GET", f"/admin/limits/{key}", params={"user_id": "boss"}, allowed=allowed))
        add(HttpCase(f"admin-block-{label}", "PUT", f"/admin/blocked/{key}", params={"user_id": "boss"}, allowed=allowed))
    add(HttpCase("admin-limits-by-non-admin", "GET", "/admin/limits/telegram:1", params={"user_id": "corpus"}, allowed=frozenset({403})))
    add(HttpCase("admin-limits-negative", "PUT", "/admin/limits/telegram:1", {"user_id": "boss", "chat_per_window": -1}))
    add(HttpCase("admin-limits-2-pow-70", "PUT", "/admin/limits/telegram:1", {"user_id": "boss", "images_per_day": 2**70}))
    add(HttpCase("admin-limits-float", "PUT", "/admin/limits/telegram:1", {"user_id": "boss", "chat_per_window": 1.5}))
    add(HttpCase("admin-limits-nan", "PUT", "/admin/limits/telegram:1", {"user_id": "boss", "chat_per_window": nan}))
    add(HttpCase("admin-block-self", "PUT", "/admin/blocked/http:{boss}", params={"user_id": "boss"}, allowed=frozenset({200, 400, 403, 422})))
    # query parameters, authentication, methods and routes
    add(HttpCase("chat-stream-maybe", "POST", "/chat", {"user_id": "corpus", "message": "hi"}, params={"stream": "maybe"}))
    add(HttpCase("usage-no-user-id", "GET", "/usage"))
    add(HttpCase("queue-user-id-list", "GET", "/queue?user_id=a&user_id=b", allowed=frozenset({200, 422})))
    unauthorized = frozenset({401})
    for label, value in {
        "none": None, "bearer-only": "Bearer", "bearer-two-spaces": "Bearer  x", "long-key": "Bearer " + "k" * 10_000,
        "basic": "Basic dXNlcjpwYXNz", "token-scheme": "Token abc", "wrong-key": "Bearer wrong-key-0123456789",
        "two-words": "Bearer a b", "latin1": "Bearer cl\xe9",
    }.items():
        headers = {} if value is None else {"Authorization": value}
        add(HttpCase(f"auth-{label}", "POST", "/chat", {"user_id": "corpus", "message": "hi"}, headers=headers,
                     allowed=unauthorized, authorized=False))
    for label, (method, path) in {
        "put-chat": ("PUT", "/chat"), "get-chat": ("GET", "/chat"), "patch-images": ("PATCH", "/images"),
        "delete-reset": ("DELETE", "/reset"), "upper-case-path": ("POST", "/CHAT"), "trailing-slash": ("POST", "/chat/"),
        "double-slash": ("POST", "//chat"), "nul-in-path": ("POST", "/chat%00"), "dotdot-route": ("GET", "/%2e%2e/etc/passwd"),
        "unknown-route": ("GET", "/admin"), "limits-without-key": ("GET", "/admin/limits/"),
        "very-long-path": ("GET", "/" + "p" * 8000),
    }.items():
        add(HttpCase(f"route-{label}", method, path, allowed=frozenset({307, 404, 405, 422})))
    return cases


HTTP_CASES: list[HttpCase] = _http_cases()

# ---------------------------------------------------------------- Telegram


@dataclass(frozen=True)
class TelegramCase:
    """A message text (``text``) or a whole update (``update``; ``{chat}`` and ``{user}``
    are the case's own). ``answer``: "reply" (the chat must get one), "silent" (ovbot must
    not write: not addressed to it) or "any"."""

    id: str
    text: str | None = None
    update: dict[str, Any] | None = None
    admin: bool = False
    answer: str = "reply"


def _telegram_cases() -> list[TelegramCase]:
    cases = [TelegramCase(f"text-{name}", text=text) for name, text in VISIBLE_TEXTS.items()]
    add = cases.append
    for label, args in {
        "steps-minus-1": "cat --steps -1", "steps-zero": "cat --steps 0", "steps-huge": "cat --steps 99999999999",
        "steps-word": "cat --steps lots", "steps-fraction": "cat --steps 1.5", "steps-twice": "cat --steps 1 --steps 2",
        "steps-no-value": "cat --steps", "cfg-nan": "cat --cfg nan", "cfg-inf": "cat --cfg inf",
        "cfg-minus-inf": "cat --cfg -inf", "cfg-overflow": "cat --cfg 1e309", "cfg-hex": "cat --cfg 0x10",
        "seed-negative": "cat --seed -1", "seed-huge": "cat --seed 99999999999", "size-zero": "cat --size 0x0",
        "size-huge": "cat --size 999999x999999", "size-negative": "cat --size -64x64", "size-one-number": "cat --size 64",
        "size-word": "cat --size big", "unknown-option": "cat --sampler euler", "file-with-value": "cat --file=yes",
        "empty": "", "only-options": "--steps 1", "neg-without-text": "cat --neg", "dash-option": "cat —steps -3",
        "prompt-100k": "p " * 50_000, "prompt-rtl": "\u202ecat", "prompt-everyone": "@everyone --steps 0",
    }.items():
        add(TelegramCase(f"imagine-{label}", text=f"/imagine {args}".rstrip()))
    add(TelegramCase("imagine-valid-tiny", text="/imagine a red cube --size 64x64 --steps 1 --seed 1"))
    for label, args in {
        "no-args": "", "unknown-action": "frob 1", "set-no-user": "set chat=1/hour", "set-no-values": "set 5",
        "set-negative": "set 5 chat=-1/hour", "set-word": "set 5 chat=lots", "set-bad-period": "set 5 chat=1/fortnight",
        "set-huge": "set 5 chat=99999999999999/hour", "set-tiny-period": "set 5 images=1/0.0000001s",
        "set-unknown-limit": "set 5 tokens=1", "set-twice": "set 5 chat=1/hour chat=2/hour",
        "set-path-user": "set ../../etc/passwd chat=1/hour", "set-encoded-user": "set telegram:%2e%2e chat=1/hour",
        "show-username": "show @someone", "show-two-users": "show 1 2", "reset-with-values": "reset 5 chat=1",
        "show-empty-key": "show discord:", "show-5000-digits": "show " + "9" * 5000, "show-rtl-key": "show telegram:\u202e1",
        "show-unknown-platform": "show mastodon:1",
    }.items():
        add(TelegramCase(f"limits-{label}", text=f"/limits {args}".rstrip(), admin=True))
    add(TelegramCase("limits-by-non-admin", text="/limits set 5 chat=0/hour"))
    add(TelegramCase("admins-add-by-non-admin", text="/admins add 5"))
    for label, text in {
        "unknown-command": "/frobnicate now", "unknown-long-command": "/" + "c" * 64, "help-with-args": "/help me please",
        "reset-word": "/reset now", "think-unknown": "/think maybe", "think-100k": "/think " + "t" * 100_000,
        "persona-100k": "/persona " + "p" * 100_000, "persona-html": "/persona <b>boss</b> @everyone",
        "cancel-args": "/cancel ../../x", "queue-args": "/queue everything", "usage-args": "/usage of root",
        "chat-empty": "/chat", "chat-flag-only": "/chat --show-reasoning", "chat-upper": "/CHAT hello",
        "start-other-bot": "/start@some_other_bot", "block-nobody": "/block", "block-path": "/block ../../x",
        "unblock-rtl": "/unblock telegram:\u202e1", "admins-username": "/admins add @bob", "admins-unknown": "/admins frob",
    }.items():
        admin = label.startswith(("block", "unblock", "admins"))
        answer = "any" if label == "start-other-bot" else "reply"
        add(TelegramCase(f"command-{label}", text=text, admin=admin, answer=answer))
    message = {"message_id": 1, "date": 1_700_000_000, "chat": "{chat}", "from": "{user}"}
    for label, update, answer in [
        ("edited-message", {"edited_message": {**message, "text": "edited", "edit_date": 1_700_000_001}}, "any"),
        ("message-without-text", {"message": message}, "any"),
        ("message-empty-text", {"message": {**message, "text": ""}}, "any"),
        ("message-without-from", {"message": {k: v for k, v in message.items() if k != "from"} | {"text": "hi"}}, "any"),
        ("message-from-a-bot", {"message": {**message, "text": "hi", "from": "{bot_user}"}}, "silent"),
        ("entities-out-of-range", {"message": {**message, "text": "/chat hi", "entities": [{"type": "bot_command", "offset": 50, "length": 99}]}}, "any"),
        ("command-entity-mid-text", {"message": {**message, "text": "hi /chat", "entities": [{"type": "bot_command", "offset": 3, "length": 5}]}}, "any"),
        ("unknown-update-type", {"brand_new_update": {"x": 1}}, "silent"),
        ("callback-unknown-data", {"callback_query": {"id": "cbx1", "from": "{user}", "chat_instance": "c", "data": "nonsense"}}, "any"),
        ("callback-path-data", {"callback_query": {"id": "cbx2", "from": "{user}", "chat_instance": "c", "data": "ovbot:cancel:../../etc"}}, "any"),
        ("callback-no-data", {"callback_query": {"id": "cbx3", "from": "{user}", "chat_instance": "c"}}, "any"),
        ("callback-huge-data", {"callback_query": {"id": "cbx4", "from": "{user}", "chat_instance": "c", "data": "d" * 10_000}}, "any"),
        ("sender-name-lone-surrogate", {"message": {**message, "text": "hi", "from": "{odd_user}"}}, "reply"),
        ("channel-post", {"channel_post": {"message_id": 1, "date": 1_700_000_000, "chat": {"id": -100999, "type": "channel", "title": "c"}, "text": "hi"}}, "silent"),
    ]:
        add(TelegramCase(f"update-{label}", update=update, answer=answer))
    return cases


TELEGRAM_CASES: list[TelegramCase] = _telegram_cases()

# ---------------------------------------------------------------- Discord


@dataclass(frozen=True)
class DiscordCase:
    """A slash command (``command`` with ``options``; a ``subcommand`` for groups) or a
    message (``message``: in a DM, or in a channel mentioning the bot)."""

    id: str
    command: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    subcommand: str | None = None
    message: str | None = None
    in_dm: bool = False
    admin: bool = False


def _discord_cases() -> list[DiscordCase]:
    cases = [DiscordCase(f"chat-{name}", "chat", {"message": text}) for name, text in NASTY_TEXTS.items()]
    add = cases.append
    nan, inf = float("nan"), float("inf")
    for label, options in {
        "steps-minus-1": {"steps": -1}, "steps-zero": {"steps": 0}, "steps-huge": {"steps": 10**9},
        "steps-2-pow-70": {"steps": 2**70}, "steps-string": {"steps": "lots"}, "steps-float": {"steps": 1.5},
        "cfg-nan": {"cfg": nan}, "cfg-inf": {"cfg": inf}, "cfg-negative": {"cfg": -3.0}, "cfg-string": {"cfg": "high"},
        "seed-negative": {"seed": -1}, "seed-2-pow-64": {"seed": 2**64}, "size-not-a-choice": {"size": "99999x99999"},
        "size-path": {"size": "../../etc/passwd"}, "unknown-option": {"sampler": "euler"},
        "negative-100k": {"negative": "n" * 100_000}, "prompt-empty": {"prompt": ""},
        "prompt-100k": {"prompt": "p" * 100_000}, "prompt-everyone": {"prompt": "@everyone <@&1>"},
        "prompt-missing": {"prompt": None},
    }.items():
        chosen = {"prompt": "cat", **options}
        add(DiscordCase(f"imagine-{label}", "imagine", {k: v for k, v in chosen.items() if v is not None}))
    add(DiscordCase("chat-no-message", "chat", {}))
    add(DiscordCase("chat-message-int", "chat", {"message": 12345}))
    add(DiscordCase("chat-unknown-option", "chat", {"message": "hi", "temperature": 9}))
    add(DiscordCase("think-unknown-mode", "think", {"mode": "maybe"}))
    add(DiscordCase("think-no-mode", "think", {}))
    add(DiscordCase("persona-100k", "persona", {"text": "p" * 100_000}))
    add(DiscordCase("persona-everyone", "persona", {"text": "@everyone <@123>"}))
    add(DiscordCase("reset-forget-string", "reset", {"forget": "yes"}))
    add(DiscordCase("queue-extra-option", "queue", {"all": True}))
    add(DiscordCase("unknown-command", "frobnicate", {"x": 1}))
    add(DiscordCase("limits-show-by-non-admin", "limits", {"user": "{someone}"}, subcommand="show"))
    add(DiscordCase("limits-set-negative", "limits", {"user": "{someone}", "chat_per_window": -5}, subcommand="set", admin=True))
    add(DiscordCase("limits-set-2-pow-70", "limits", {"user": "{someone}", "images_per_day": 2**70}, subcommand="set", admin=True))
    add(DiscordCase("limits-set-string", "limits", {"user": "{someone}", "images_per_day": "many"}, subcommand="set", admin=True))
    add(DiscordCase("limits-unknown-user-id", "limits", {"user": "424242"}, subcommand="show", admin=True))
    add(DiscordCase("limits-path-user-id", "limits", {"user": "../../etc/passwd"}, subcommand="show", admin=True))
    add(DiscordCase("limits-no-subcommand", "limits", {}, admin=True))
    add(DiscordCase("limits-unknown-subcommand", "limits", {}, subcommand="explode", admin=True))
    add(DiscordCase("admins-add-missing-user", "admins", {}, subcommand="add", admin=True))
    add(DiscordCase("block-self", "block", {"user": "{self}"}, admin=True))
    add(DiscordCase("block-by-non-admin", "block", {"user": "{someone}"}))
    for name in ("everyone", "discord-mentions", "100k-chars", "lone-high-surrogate", "markdown-unbalanced", "rtl-override", "nul-byte"):
        add(DiscordCase(f"dm-{name}", message=NASTY_TEXTS[name], in_dm=True))
        add(DiscordCase(f"mention-{name}", message=NASTY_TEXTS[name]))
    return cases


DISCORD_CASES: list[DiscordCase] = _discord_cases()


def ids(cases: list[Any]) -> list[str]:
    found = [case.id for case in cases]
    assert len(found) == len(set(found)), "case ids must be unique"
    return found
