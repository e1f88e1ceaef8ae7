"""``ovbot chat`` and ``ovbot imagine``: the engines from a terminal, no platform needed.

Useful on its own (a private local assistant) and as the quickest check that models
and engines work on a new PC before connecting Discord or Telegram.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ovbot.core.config import Settings, load_settings
from ovbot.core.engines.base import Engines
from ovbot.core.engines.factory import build_engines
from ovbot.core.engines.types import ChatMessage, GenerationOptions, ImageRequest
from ovbot.core.errors import EngineError

SYSTEM_PROMPT = "You are ovbot, a helpful assistant running privately on the user's own computer."


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with the local model in this terminal")
    chat.add_argument("--show-reasoning", action="store_true", help="print the model's thinking too")
    chat.add_argument("--max-new-tokens", type=int, default=None)
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
    engines = _engines(settings, ("llm",))
    history: list[ChatMessage] = [ChatMessage("system", SYSTEM_PROMPT)]
    scripted = list(args.message or [])
    await engines.start()
    try:
        if not scripted:
            print("ovbot chat — /reset clears the conversation, /quit or Ctrl-D leaves.")
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
            text = text.strip()
            if not text:
                continue
            if text == "/quit":
                return 0
            if text == "/reset":
                history = history[:1]
                print("(conversation cleared)")
                continue
            history.append(ChatMessage("user", text))
            answer = await _answer(engines, history, args)
            if answer is None:
                history.pop()  # keep the history consistent: no reply, no turn
            else:
                history.append(ChatMessage("assistant", answer))
    finally:
        await engines.close()


async def _answer(engines: Engines, history: list[ChatMessage], args: argparse.Namespace) -> str | None:
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    try:
        stream = await engines.llm.stream(history, options)
        thinking_shown = False
        print("ovbot> ", end="", flush=True)
        async for delta in stream:
            if delta.kind == "reasoning":
                if args.show_reasoning:
                    print(delta.text, end="", flush=True)
                elif not thinking_shown:
                    print("(thinking…) ", end="", flush=True)
                    thinking_shown = True
            else:
                print(delta.text, end="", flush=True)
        print()
        return (await stream.result()).content
    except EngineError as exc:
        print(f"\n[error] {exc.user_message}")
        return None


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
