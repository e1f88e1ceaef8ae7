"""The secrets every test runs with: recognisable, valid-shaped sentinel values.

Each one is shaped like the real thing (so settings validation, the fakes and the
redaction patterns treat it as they would a real token) and carries ``MARK`` plus a tail
of its own, so a leak is found even when a value is cut, re-encoded around its
separators or only partly redacted. ``tests/sentinel_check.py`` fails any test in whose
time a log record shows one; ``tests/test_secrets.py`` drives every platform with them.
"""

from __future__ import annotations

import base64

#: in every sentinel; nothing else in ovbot or its libraries writes it
MARK = "Snt1nelQx"

#: Telegram: ``<bot id>:<35 characters>`` as @BotFather issues them (the fake's bot id)
TELEGRAM_BOT_ID = 123456789
TELEGRAM_TOKEN = f"{TELEGRAM_BOT_ID}:AAH{MARK}tgTokenTail7Kd2_wXy-0ab"
#: the webhook secret Telegram echoes in X-Telegram-Bot-Api-Secret-Token
TELEGRAM_WEBHOOK_SECRET = f"whsec_{MARK}_webhookTail4Rt9"
#: the secret part of a Discord bot token (after ``base64(app id).<timestamp>.``)
DISCORD_TOKEN_SECRET = f"{MARK}dcTokenTail3Lp8_mZq-Vb2Yh"
#: the start of every Discord interaction token the fake hands out (a random tail follows)
DISCORD_INTERACTION_PREFIX = f"aW50ZXJhY3Rpb24{MARK}"
HF_TOKEN = f"hf_{MARK}hfTokenTail9Wc5"
#: HTTP API keys (OVBOT_API_KEYS): two users' keys, and the key ``ovbot serve`` runs with
API_KEY = f"sk-api-{MARK}-apiKeyTail1Qm6"
OTHER_API_KEY = f"sk-other-{MARK}-otherKeyTail8Ns3"
SERVE_API_KEY = f"sk-serve-{MARK}-serveKeyTail2Gx7"
#: OVBOT_REMOTE_API_KEY, the remote engine's bearer key
REMOTE_API_KEY = f"sk-remote-{MARK}-remoteKeyTail5Jv4"


def discord_token(app_id: int) -> str:
    """A bot token shaped like Discord's: base64(app id) . timestamp . secret."""
    head = base64.b64encode(str(app_id).encode()).decode().rstrip("=")
    return f"{head}.GfAkEd.{DISCORD_TOKEN_SECRET}"


#: every configured secret value, whole
SECRETS: tuple[str, ...] = (
    TELEGRAM_TOKEN,
    TELEGRAM_WEBHOOK_SECRET,
    DISCORD_TOKEN_SECRET,
    HF_TOKEN,
    API_KEY,
    OTHER_API_KEY,
    SERVE_API_KEY,
    REMOTE_API_KEY,
)

#: what a log line must never contain: the mark, and each secret's own tail (a value cut
#: before or after its mark still shows one of them)
FRAGMENTS: tuple[str, ...] = (MARK, *(secret[-10:] for secret in SECRETS))


def sentinels_in(text: str) -> list[str]:
    """The sentinel fragments ``text`` shows (empty: none)."""
    return [fragment for fragment in FRAGMENTS if fragment in text]
