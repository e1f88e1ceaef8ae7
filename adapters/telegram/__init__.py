"""The Telegram adapter (python-telegram-bot): translation only, every decision is the
core facade's. See ``adapter.TelegramAdapter`` and README "Telegram"."""

from ovbot.adapters.telegram.adapter import TelegramAdapter
from ovbot.adapters.telegram.config import PLATFORM, TelegramConfig

__all__ = ["PLATFORM", "TelegramAdapter", "TelegramConfig"]
