"""Building python-telegram-bot's ``Application`` from the adapter's config.

- The Bot API root is configurable (``{root}/bot<token>/<method>``, files from
  ``{root}/file/bot<token>/...``): self-hosted Bot API servers, and the tests' fake.
- ``AIORateLimiter`` with retries on: a 429 pauses every request for ``retry_after`` and
  the request is tried again, so a reply is not lost to a flood limit; it also keeps the
  overall rate (``OVERALL_PER_SECOND``, under Telegram's ~30/s in any second) and the
  per-group one (20/min). Per-chat pacing is ovbot's own
  (``pacing.ChatPacer``), because the limiter does not keep Telegram's ~1/s per chat.
- Link previews are off: the model's text may name URLs, and a preview makes Telegram
  fetch whatever the model invented.
- Updates of different chats are handled at once, one chat's in order
  (``ordering.PerChatOrder``).
- Webhook mode has no ``Updater``: ovbot's webhook server feeds the update queue.
- The bot and the Application are ``inbox``'s subclasses: fetched updates are stored
  before they can be confirmed, and marked handled after their handlers ran. The bot is
  built here rather than by the builder, which has no hook for a bot class of its own.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from telegram import LinkPreviewOptions
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, Defaults, ExtBot
from telegram.request import HTTPXRequest

from ovbot.adapters.telegram.config import TelegramConfig
from ovbot.adapters.telegram.inbox import Inbox, InboxApplication, InboxBot
from ovbot.adapters.telegram.ordering import PerChatOrder

#: python-telegram-bot's default application (its context data are plain dicts)
TelegramApp: TypeAlias = Application[
    ExtBot[None], ContextTypes.DEFAULT_TYPE, dict[Any, Any], dict[Any, Any], dict[Any, Any], None
]

#: requests at once to the Bot API (the long poll holds one of them)
_CONNECTIONS = 32
#: calls a second to the Bot API, all chats together. Telegram's flood limit is ~30 a
#: second; AIORateLimiter's default (a bucket of 30, refilled at 30/s) lets a full
#: bucket go at once and 30 more drip in the same second, and under load (dozens of
#: private chats streaming drafts) 31-35 calls landed within one second (bench --only
#: load). A bucket of one, refilled every 1/20 s, lets ~21 through in any second: the
#: margin absorbs calls that the network (or a busy event loop) bunches on the way.
OVERALL_PER_SECOND = 20


def build_application(config: TelegramConfig, inbox: Inbox) -> TelegramApp:
    bot = InboxBot(
        inbox=inbox,
        token=config.token,
        base_url=config.base_url,
        base_file_url=config.base_file_url,
        rate_limiter=AIORateLimiter(
            overall_max_rate=1, overall_time_period=1 / OVERALL_PER_SECOND, max_retries=config.rate_limit_retries
        ),
        defaults=Defaults(link_preview_options=LinkPreviewOptions(is_disabled=True)),
        request=HTTPXRequest(connection_pool_size=_CONNECTIONS, pool_timeout=10.0),
        get_updates_request=HTTPXRequest(connection_pool_size=1),
    )
    builder = (
        ApplicationBuilder()
        .bot(bot)
        .application_class(InboxApplication)
        .concurrent_updates(PerChatOrder())
        .job_queue(None)
    )
    if config.mode == "webhook":
        builder = builder.updater(None)
    application: TelegramApp = builder.build()
    application.inbox = inbox  # type: ignore[attr-defined]
    return application
