"""Building python-telegram-bot's ``Application`` from the adapter's config.

- The Bot API root is configurable (``{root}/bot<token>/<method>``, files from
  ``{root}/file/bot<token>/...``): self-hosted Bot API servers, and the tests' fake.
- ``AIORateLimiter`` with retries on: a 429 pauses every request for ``retry_after`` and
  the request is tried again, so a reply is not lost to a flood limit; it also keeps the
  overall (30/s) and per-group (20/min) rates. Per-chat pacing is ovbot's own
  (``pacing.ChatPacer``), because the limiter does not keep Telegram's ~1/s per chat.
- Link previews are off: the model's text may name URLs, and a preview makes Telegram
  fetch whatever the model invented.
- Webhook mode has no ``Updater``: ovbot's webhook server feeds the update queue.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from telegram import LinkPreviewOptions
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, Defaults, ExtBot

from ovbot.adapters.telegram.config import TelegramConfig

#: python-telegram-bot's default application (its context data are plain dicts)
TelegramApp: TypeAlias = Application[
    ExtBot[None], ContextTypes.DEFAULT_TYPE, dict[Any, Any], dict[Any, Any], dict[Any, Any], None
]

#: requests at once to the Bot API (the long poll holds one of them)
_CONNECTIONS = 32


def build_application(config: TelegramConfig) -> TelegramApp:
    builder = (
        ApplicationBuilder()
        .token(config.token)
        .base_url(config.base_url)
        .base_file_url(config.base_file_url)
        .rate_limiter(AIORateLimiter(max_retries=config.rate_limit_retries))
        .defaults(Defaults(link_preview_options=LinkPreviewOptions(is_disabled=True)))
        .connection_pool_size(_CONNECTIONS)
        .pool_timeout(10.0)
        .job_queue(None)
    )
    if config.mode == "webhook":
        builder = builder.updater(None)
    application: TelegramApp = builder.build()
    return application
