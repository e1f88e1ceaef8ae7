"""What every edit-in-place platform adapter (Telegram, Discord) shares: the live
reply — turning a turn's events into throttled message edits, split to the platform's
length limit. Pure logic and an asyncio driver; no platform library is imported here."""

from ovbot.adapters.common.live_reply import LiveReply, Outcome, ReplyView
from ovbot.adapters.common.render import Clock, ReplyTarget, RetryLater, Sleep, render_live
from ovbot.adapters.common.split import Measure, split_message, utf16_length

__all__ = [
    "Clock",
    "LiveReply",
    "Measure",
    "Outcome",
    "ReplyTarget",
    "ReplyView",
    "RetryLater",
    "Sleep",
    "render_live",
    "split_message",
    "utf16_length",
]
