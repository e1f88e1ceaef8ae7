"""The Telegram adapter: python-telegram-bot's ``Application`` driven by ovbot's
lifecycle, translating Telegram into calls of the core facade.

``start()`` follows the Application's own order (``initialize`` -> ``start`` -> the
replay of updates a crash left unhandled (``inbox``) -> the updater's
``start_polling``, or the webhook server and ``setWebhook``), registers the
commands with ``setMyCommands``, and then continues the replies a restart left
undelivered; ``stop()`` goes in reverse and gives replies in flight a grace period
(those that do not finish are continued after the next start). ``run_polling`` is never
used: it blocks and installs signal handlers, and ``ovbot serve`` owns both.

The token is in every request URL python-telegram-bot makes, so the loggers that print
URLs stay at WARNING (``ovbot serve`` also redacts tokens from every record).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from telegram import BotCommand
from telegram.error import InvalidToken, NetworkError, TelegramError

from ovbot.adapters.base import AdapterBase
from ovbot.adapters.telegram.build import TelegramApp, build_application
from ovbot.adapters.telegram.commands import COMMANDS
from ovbot.adapters.telegram.config import PLATFORM, TelegramConfig
from ovbot.adapters.telegram.delivery import Deliveries
from ovbot.adapters.telegram.errors import TelegramUnavailable, where
from ovbot.adapters.telegram.handlers import ALLOWED_UPDATES, Handlers
from ovbot.adapters.telegram.inbox import Inbox
from ovbot.adapters.telegram.outbox import Outbox
from ovbot.adapters.telegram.pacing import ChatPacer
from ovbot.adapters.telegram.webhook import WebhookServer
from ovbot.core.app import Check
from ovbot.core.bot import Bot

log = logging.getLogger("ovbot.telegram")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: loggers that print request URLs, i.e. the token (httpx logs every request at INFO)
_URL_LOGGERS = ("httpx", "httpcore")


class TelegramAdapter(AdapterBase):
    name = PLATFORM

    def __init__(
        self,
        bot: Bot,
        config: TelegramConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._config = config
        self.inbox = Inbox(bot, config.token.split(":", 1)[0])
        self.application: TelegramApp = build_application(config, self.inbox)
        self.pacer = ChatPacer(
            interval_s=config.chat_interval_s, group_per_minute=config.group_per_minute, clock=clock, sleep=sleep
        )
        self.outbox = Outbox(self.application.bot, self.pacer, sleep=sleep)
        self.inbox.connect(self.outbox)
        self.deliveries = Deliveries(bot, self.outbox, config, clock=clock, sleep=sleep)
        Handlers(bot, self.outbox, self.deliveries).register(self.application)
        self._webhook: WebhookServer | None = None
        self._started = False
        self._poll_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        _quiet_url_loggers()
        application = self.application
        try:
            await application.initialize()  # getMe: checks the token
        except InvalidToken:
            raise TelegramUnavailable(
                f"the Bot API at {self._config.api_base} refused the token (OVBOT_TELEGRAM_TOKEN); "
                "check it with @BotFather"
            ) from None
        except NetworkError as exc:
            raise TelegramUnavailable(
                f"cannot reach the Bot API at {self._config.api_base} ({type(exc).__name__}); "
                "check OVBOT_TELEGRAM_API_BASE and the network"
            ) from None
        try:
            await application.bot.set_my_commands(
                [BotCommand(spec.name, spec.description) for spec in COMMANDS if not spec.admin]
            )
            await application.start()
            await self.inbox.replay(application)  # before any new update: oldest first
            if self._config.mode == "webhook":
                await self._start_webhook()
            else:
                assert application.updater is not None
                await application.updater.start_polling(
                    timeout=dt.timedelta(seconds=self._config.poll_timeout_s),
                    allowed_updates=ALLOWED_UPDATES,
                    drop_pending_updates=False,  # messages sent while ovbot was down count
                    error_callback=self._on_poll_error,
                )
        except BaseException:
            await self._stop_application()
            raise
        self._started = True
        log.info("telegram: @%s is %s", application.bot.username, self._listening())
        try:
            await self.deliveries.resume_undelivered()
        except Exception as exc:  # the bot works; those replies wait for the next start
            log.error("telegram: replies from before the restart could not be continued: %s", where(exc))

    async def _start_webhook(self) -> None:
        config = self._config
        assert config.webhook_url is not None and config.webhook_secret is not None
        self._webhook = WebhookServer(
            self.application,
            self.inbox,
            host=config.webhook_host,
            port=config.webhook_port,
            path=config.webhook_path,
            secret=config.webhook_secret,
        )
        await self._webhook.start()
        await self.application.bot.set_webhook(
            config.webhook_url,
            secret_token=config.webhook_secret,
            allowed_updates=ALLOWED_UPDATES,
            drop_pending_updates=False,
        )

    async def stop(self) -> None:
        """Stop taking updates, let replies in flight finish (bounded), then close."""
        if not self._started and not self.application.running:
            return
        self._started = False
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self._webhook is not None:
            await self._webhook.stop()  # the webhook stays set: Telegram keeps updates for us
        if self.application.running:
            await self.application.stop()
        await self.deliveries.close(self._config.stop_grace_s)
        await self.outbox.drain(self._config.stop_grace_s)
        await self.application.shutdown()

    async def _stop_application(self) -> None:
        try:
            updater = self.application.updater
            if updater is not None and updater.running:
                await updater.stop()
            if self._webhook is not None:
                await self._webhook.stop()
            if self.application.running:
                await self.application.stop()
            await self.application.shutdown()
        except Exception:
            log.debug("telegram: cleaning up after a failed start failed too", exc_info=True)

    def health(self) -> Check:
        if not self._started:
            return Check(False, "stopped")
        if self._webhook is not None:
            return Check(self._webhook.running, "webhook" if self._webhook.running else "webhook server down")
        updater = self.application.updater
        running = updater is not None and updater.running
        if not running:
            return Check(False, "not polling")
        return Check(True, "polling" if self._poll_error is None else f"polling (last error: {self._poll_error})")

    def _listening(self) -> str:
        if self._webhook is not None:
            return f"listening for its webhook on {self._config.webhook_host}:{self._webhook.port}{self._webhook.path}"
        return f"polling {self._config.api_base}"

    def _on_poll_error(self, error: TelegramError) -> None:
        # python-telegram-bot retries by itself; one line, never the URL (it has the token)
        self._poll_error = type(error).__name__
        log.warning("telegram: fetching updates failed (%s); retrying", type(error).__name__)


def _quiet_url_loggers() -> None:
    """Keep request URLs (and with them the token) out of the logs even when ovbot's
    logging setup did not run (embedding, tests)."""
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
