"""What the Telegram adapter needs from the settings, in one frozen value.

Built from ``Settings`` at the entry point (``TelegramConfig.from_settings``); tests
build it the same way and override the few timings that are not user settings (how long
a long poll waits, how long ``stop()`` lets replies in flight finish). The token and the
webhook secret are kept out of ``repr`` so that a config printed by accident is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from ovbot.core.config import Settings

PLATFORM = "telegram"
#: Telegram's limits (characters are UTF-16 code units)
MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_ANSWER_LIMIT = 200

Mode = Literal["polling", "webhook"]


@dataclass(frozen=True, slots=True)
class TelegramConfig:
    token: str = field(repr=False)
    api_base: str = "https://api.telegram.org"
    mode: Mode = "polling"
    webhook_url: str | None = None
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8443
    webhook_secret: str | None = field(default=None, repr=False)
    #: least seconds between two message calls (send, edit, draft) in one chat
    chat_interval_s: float = 1.0
    #: message calls per minute in one group
    group_per_minute: int = 20
    #: stream private replies with sendMessageDraft
    drafts: bool = True
    #: seconds one getUpdates long poll waits for updates
    poll_timeout_s: float = 30.0
    #: times python-telegram-bot's rate limiter retries a request Telegram answered 429
    rate_limit_retries: int = 3
    #: seconds ``stop()`` lets replies in flight finish before leaving them for the restart
    stop_grace_s: float = 10.0
    #: a draft disappears ~30 s after its last update: refreshed this often while waiting
    draft_refresh_s: float = 20.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> TelegramConfig | None:
        """The adapter's config, or None when no token is set (the adapter does not run)."""
        if settings.telegram_token is None:
            return None
        secret = settings.telegram_webhook_secret
        config = cls(
            token=settings.telegram_token.get_secret_value(),
            api_base=settings.telegram_api_base.rstrip("/"),
            mode=settings.telegram_mode,
            webhook_url=settings.telegram_webhook_url,
            webhook_host=settings.telegram_webhook_host,
            webhook_port=settings.telegram_webhook_port,
            webhook_secret=None if secret is None else secret.get_secret_value(),
            chat_interval_s=settings.telegram_chat_interval_s,
            group_per_minute=settings.telegram_group_per_minute,
            drafts=settings.telegram_drafts,
        )
        return replace(config, **overrides) if overrides else config  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        """What python-telegram-bot appends the token to: ``{root}/bot<token>/<method>``."""
        return f"{self.api_base}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.api_base}/file/bot"

    @property
    def webhook_path(self) -> str:
        """The path of the public webhook URL, served as is by the local webhook server
        (a reverse proxy forwards the URL unchanged)."""
        path = urlsplit(self.webhook_url or "").path
        return path if path.startswith("/") else "/"
