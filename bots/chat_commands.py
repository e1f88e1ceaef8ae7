"""``ovbot chat`` and ``ovbot imagine``: the engines from a terminal, no platform needed.

Useful on its own (a private local assistant) and as the quickest check that models
and engines work on a new PC before connecting Discord or Telegram.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

from ovbot.core.app import App
from ovbot.core.bot import Bot, TurnOptions
from ovbot.core.config import Settings, load_settings
from ovbot.core.domain import ChatRef, UserRef
from ovbot.core.engines.base import Engines
from ovbot.core.engines.factory import build_engines
from ovbot.core.engines.types import ImageRequest
from ovbot.core.errors import OvbotError
from ovbot.core.turns import (
    Queued,
    ReasoningDelta,
    ReplyDone,
    Status,
    TextDelta,
    Thinking,
    TurnCancelled,
    TurnEvent,
    TurnFailed,
    TurnInterrupted,
)

#: the platform name of terminal users (``cli:<login>``, also the admin syntax)
TERMINAL = "cli"


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with the local model in this terminal")
    chat.add_argument("--show-reasoning", action="store_true", help="print the model's thinking too")
    chat.add_argument("--message", "-m", action="append", help="send this message and exit (repeatable)")
    chat.set_defaults(func=run_chat)

    imagine = commands.add_parser("imagine", help="generate one image into a PNG file")
    imagine.add_argument("prompt")
    imagine.add_argument("--out", "-o", type=Path, default=Path("ovbot-image.png"))
    imagine.add_argument("--negative", default="")
    imagine.add_argument("--steps", type=int)
    imagine.add_argument("--cfg", type=float)
    imagine.add_argument("--seed", type=int)
    imagine.add_argument("--size", help="WxH from OVBOT_IMAGE_SIZES")
    imagine.set_defaults(func=run_imagine)


def _engines(settings: Settings, kinds: tuple[str, ...]) -> Engines:
    if settings.engine == "remote":
        return build_engines(settings)
    from ovbot.models.cache import ModelCache

    dirs = ModelCache(settings).ensure_ready(kinds, progress=sys.stderr.isatty())
    return build_engines(settings, dirs.get("llm"), dirs.get("image"))


def run_chat(args: argparse.Namespace) -> int:
    return asyncio.run(_chat(load_settings(), args))


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    """The terminal as one more adapter: the same facade, store, limits and answer
    grammar as every platform; this user's conversation survives between runs."""
    user = UserRef(TERMINAL, getpass.getuser())
    chat = ChatRef(TERMINAL, user.user_id)
    scripted = list(args.message or [])
    async with App(settings, models=("llm",)) as app:
        await app.start()
        terminal = TerminalChat(app.bot, user, chat, show_reasoning=args.show_reasoning)
        if not scripted:
            print("ovbot chat — /reset starts over, /think off|short|full, /quit or Ctrl-D leaves.")
        while True:
            if scripted:
                text = scripted.pop(0)
            elif args.message:
                return 0
            else:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    return 0
            if not await terminal.handle(text.strip()):
                return 0


class TerminalChat:
    """Reads one line, answers it through the facade, prints the streamed reply."""

    def __init__(self, bot: Bot, user: UserRef, chat: ChatRef, *, show_reasoning: bool) -> None:
        self._bot = bot
        self._user = user
        self._chat = chat
        self._show_reasoning = show_reasoning

    async def handle(self, text: str) -> bool:
        """False when the user wants to leave."""
        if not text:
            return True
        if text == "/quit":
            return False
        try:
            if text.startswith("/reset"):
                await self._bot.reset(self._user, self._chat, forget=text.endswith("forget"))
                print("(new conversation)")
            elif text.startswith("/think"):
                mode = text.removeprefix("/think").strip() or None
                print(f"(reasoning: {await self._bot.set_reasoning(self._user, self._chat, mode)})")
            else:
                await self._answer(text)
        except OvbotError as exc:
            print(f"[{exc.kind}] {exc.user_message}")
        return True

    async def _answer(self, text: str) -> None:
        options = TurnOptions(show_reasoning=self._show_reasoning)
        handle = await self._bot.submit_turn(self._user, self._chat, text, options)
        print("ovbot> ", end="", flush=True)
        try:
            async for event in handle:
                self._print(event)
        except asyncio.CancelledError:
            await handle.cancel()
            raise
        print()

    def _print(self, event: TurnEvent) -> None:
        if isinstance(event, Thinking) and not self._show_reasoning:
            print("(thinking…) ", end="", flush=True)
        elif isinstance(event, (ReasoningDelta, TextDelta)):
            print(event.text, end="", flush=True)
        elif isinstance(event, ReplyDone) and self._show_reasoning:
            print("\n", end="")
        elif isinstance(event, Queued):
            print(f"(queued #{event.position}) ", end="", flush=True)
        elif isinstance(event, Status):
            print(f"\n({event.text})", end="", flush=True)
        elif isinstance(event, (TurnFailed, TurnInterrupted)):
            print(f"\n[error] {event.message}", end="")
        elif isinstance(event, TurnCancelled):
            print("\n(cancelled)", end="")


def run_imagine(args: argparse.Namespace) -> int:
    return asyncio.run(_imagine(load_settings(), args))


async def _imagine(settings: Settings, args: argparse.Namespace) -> int:
    width = height = None
    if args.size:
        from ovbot.core.config import parse_size

        width, height = parse_size(args.size)
    request = ImageRequest(
        args.prompt, args.negative, width, height, args.steps, args.cfg, args.seed
    )
    engines = _engines(settings, ("image",))
    await engines.start()
    try:
        job = await engines.image.generate(request)
        async for progress in job:
            print(f"\rstep {progress.step}/{progress.total}", end="", file=sys.stderr, flush=True)
        result = await job.result()
    finally:
        await engines.close()
    print(file=sys.stderr)
    args.out.write_bytes(result.png)
    used = result.request
    print(
        f"wrote {args.out} ({used.width}x{used.height}, steps={used.steps}, cfg={used.cfg:g}, "
        f"seed={used.seed}, {result.duration_s:.1f} s)"
    )
    return 0
