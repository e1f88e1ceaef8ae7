"""The reasoning table: what each reasoning mode (off / short / full) costs a user.

Measured through the real ovbot path an adapter uses: ``App`` (SQLite store, durable
queue, limits, chat service, engine worker process) and its ``Bot`` facade, turns
submitted with ``Bot.submit_turn(..., TurnOptions(reasoning=mode))`` and followed as
typed events. Per turn: time to the first answer character (submit -> first
``TextDelta``), total turn time (submit -> ``TurnDone``), reasoning and answer characters.
Modes are interleaved within each repeat so drift on a shared machine hits all alike.

Random weights never write ``</think>``, so ``short`` and ``full`` reason up to their
bound every time, and never end the answer either, so it runs to the reply limit: the
worst case a real model can hit, which is what a latency requirement has to hold for.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Target, Workload, fmt, median, ratio, table, user_message
from bench.models import BenchModels
from bench.platform import app_settings

from ovbot.core.bot import Bot, TurnOptions
from ovbot.core.chat.answer_stream import RESPONSE_KEY
from ovbot.core.chat.answering import FALLBACK_REPLY, AnswerSettings
from ovbot.core.domain import ChatRef, UserRef
from ovbot.core.turns import REASONING_MODES, ReasoningDelta, ReasoningMode, TextDelta, TurnDone

#: the product requirement the table is read against (on recommended hardware)
REPLY_START_S = 2.0
#: the bench tokenizer's filler vocabulary entries (bench/models.py), what random weights mostly pick
_FILLER = re.compile(r" w\d+")


@dataclass(frozen=True)
class ReasoningConfig:
    users: tuple[int, ...] = (1, 4)
    repeats: int = 3
    #: OVBOT_MAX_NEW_TOKENS: the product default; reasoning and answer share it, and at
    #: 1024 neither bound cuts an answer short (full reasoning ~220 tokens + a 2000-char
    #: reply ~290 tokens on the bench tokenizer)
    max_new_tokens: int = 1024
    kv_cache_gb: int = 2
    #: None: the product defaults (Settings.reasoning_short_chars / reasoning_full_chars)
    short_chars: int | None = None
    full_chars: int | None = None


def smoke_reasoning_config() -> ReasoningConfig:
    return ReasoningConfig(repeats=1, max_new_tokens=160, kv_cache_gb=1, short_chars=20, full_chars=60)


@dataclass(frozen=True)
class TurnSample:
    first_text_s: float
    done_s: float
    reasoning: str
    answer_chars: int
    fallback: bool


async def timed_turn(bot: Bot, name: str, text: str, mode: ReasoningMode, stop_at_text: bool = False) -> TurnSample:
    """One turn from submit to its terminal event. Reasoning is shown (``show_reasoning``)
    only so its characters can be counted; ``stop_at_text`` cancels the turn at its first
    answer character (the warm-up)."""
    user, chat = UserRef("bench", name), ChatRef("bench", name)
    began = time.perf_counter()
    handle = await bot.submit_turn(user, chat, text, TurnOptions(show_reasoning=True, reasoning=mode))
    first: float | None = None
    reasoning: list[str] = []
    async for event in handle:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, TextDelta) and first is None:
            first = time.perf_counter() - began
            if stop_at_text:
                await handle.cancel()
        elif isinstance(event, TurnDone):
            done = time.perf_counter() - began
            fallback = event.text == FALLBACK_REPLY
            return TurnSample(first if first is not None else done, done, "".join(reasoning), len(event.text), fallback)
        elif event.terminal:
            if stop_at_text and first is not None:
                return TurnSample(first, time.perf_counter() - began, "".join(reasoning), 0, False)
            raise RuntimeError(f"turn {handle.job_id} ({mode}) ended {event.kind}: {event.payload()}")
    raise RuntimeError(f"turn {handle.job_id} ({mode}): events ended without a terminal one")


async def run_modes(
    bot: Bot, cfg: ReasoningConfig, log: Callable[[str], None]
) -> dict[tuple[int, ReasoningMode], list[TurnSample]]:
    """Every (users, mode) ``cfg.repeats`` times; each run submits ``users`` distinct
    users' turns at once, each with its own message (no prompt is seen twice)."""
    samples: dict[tuple[int, ReasoningMode], list[TurnSample]] = {}
    index = 0
    for users in cfg.users:
        for repeat in range(cfg.repeats):
            for mode in REASONING_MODES:
                names = [f"r{users}-{mode}-{repeat}-{i}" for i in range(users)]
                turns = [timed_turn(bot, name, user_message(9000 + index + i), mode) for i, name in enumerate(names)]
                index += users
                got = await asyncio.gather(*turns)
                samples.setdefault((users, mode), []).extend(got)
                log(
                    f"  {users} user(s), {mode}, repeat {repeat + 1}: first answer char "
                    f"{max(s.first_text_s for s in got):.2f} s, turn {max(s.done_s for s in got):.1f} s (slowest)"
                )
    return samples


async def reasoning_section(
    models: BenchModels, cfg: ReasoningConfig, log: Callable[[str], None]
) -> tuple[str, list[Target]]:
    """No target: the product's reply-start requirement is for recommended hardware, not
    this machine; the notes say which modes would meet it here."""
    from ovbot.core.app import App

    with tempfile.TemporaryDirectory(prefix="ovbot-bench-reasoning-") as tmp:
        bounds: dict[str, Any] = {"kv_cache_gb": cfg.kv_cache_gb}
        if cfg.short_chars is not None:
            bounds["reasoning_short_chars"] = cfg.short_chars
        if cfg.full_chars is not None:
            bounds["reasoning_full_chars"] = cfg.full_chars
        settings = app_settings(models.main_llm, None, Path(tmp), cfg.max_new_tokens, **bounds)
        app = App(settings, models=("llm",), stop_grace_s=5)
        began = time.perf_counter()
        await app.initialize()
        try:
            await app.start()
            log(f"  App ready in {time.perf_counter() - began:.1f} s")
            # the first turn prefills the shared system prompt: not what a user sees later
            warm = await timed_turn(app.bot, "warm-up", user_message(8999), "off", stop_at_text=True)
            log(f"  warm-up turn: first answer char {warm.first_text_s:.2f} s")
            samples = await run_modes(app.bot, cfg, log)
        finally:
            await app.shutdown()
    limits = {"off": 0, "short": settings.reasoning_short_chars, "full": settings.reasoning_full_chars}
    tokenizer = Workload(models.main_llm)
    return render(samples, limits, cfg, models.tiny, tokenizer.count), []


def generated_tokens(text: str, count_tokens: Callable[[str], int]) -> int:
    """The tokens the model generated for ``text``. Re-encoding would overcount: the BPE
    never produces the filler entries (" w<N>") the random model mostly picks, so each
    counts as one and only the rest is re-encoded (matches the engine's own count)."""
    return len(_FILLER.findall(text)) + count_tokens(_FILLER.sub("", text))


def _spread(values: Sequence[float], digits: int) -> list[str]:
    return [fmt(median(values), digits), fmt(min(values), digits), fmt(max(values), digits)]


def render(
    samples: dict[tuple[int, ReasoningMode], list[TurnSample]],
    limits: dict[str, int],
    cfg: ReasoningConfig,
    tiny: bool,
    count_tokens: Callable[[str], int],
) -> str:
    """``count_tokens`` (the model's tokenizer) turns characters into tokens: time goes
    by tokens, bounds by characters, and the bench tokenizer's characters per token differ
    from the real one's, so the reader needs both to carry the figures over."""
    rows = []
    for (users, mode), got in samples.items():
        first = [s.first_text_s for s in got]
        off = [s.first_text_s for s in samples[(users, "off")]]
        rows.append([
            f"{users} user{'s' if users > 1 else ''}, {mode}", str(limits[mode]), str(len(got)),
            *_spread(first, 2), ratio(median(first), median(off)), *_spread([s.done_s for s in got], 1),
            fmt(median([len(s.reasoning) for s in got]), 0), fmt(median([generated_tokens(s.reasoning, count_tokens) for s in got]), 0),
            fmt(median([s.answer_chars for s in got]), 0),
        ])
    fallbacks = sum(s.fallback for got in samples.values() for s in got)
    opening = f'{{"{RESPONSE_KEY}": "'
    thoughts = [s.reasoning for got in samples.values() for s in got if s.reasoning]
    per_token = sum(map(len, thoughts)) / max(1, sum(generated_tokens(t, count_tokens) for t in thoughts))
    single = {mode: max(s.first_text_s for s in got) for (users, mode), got in samples.items() if users == 1}
    within = [mode for mode, worst in single.items() if worst <= REPLY_START_S]
    model = "tiny models (smoke)" if tiny else "real-shape DeepSeek-R1-Distill-Qwen-1.5B INT4 (random weights)"
    intro = (
        f"{model} through the real ovbot path: `App` (SQLite, durable queue, engine worker process) and its "
        "`Bot` facade, `submit_turn(..., TurnOptions(reasoning=mode))`, events followed as an adapter does. "
        f"Each run submits one turn per user at once (distinct users and messages); {cfg.repeats} runs per row, "
        "modes interleaved; median, min and max over every turn of the row. First answer char = submit to the "
        "first `TextDelta`; turn = submit to `TurnDone`. "
        f"`OVBOT_MAX_NEW_TOKENS` {cfg.max_new_tokens} (shared by reasoning and answer), reply limit "
        f"{AnswerSettings().response_max_chars} characters."
    )
    notes = (
        "Random weights never write `</think>`: `short` and `full` reason up to their bound on every turn (the "
        "engine stops at the first step past it, so a few characters more), the worst case a real model can hit; "
        "a real model that closes its reasoning earlier starts answering sooner. Nor do they end the answer, so "
        "each one runs to the reply limit (or `max_new_tokens`): turn times are worst cases too, compare them "
        "per answer character. Every answer first decodes its JSON opening `{\"assistant_response\": \"` under "
        f"the grammar, {count_tokens(opening)} tokens as the bench's small BPE splits it; random weights take more steps "
        "(whitespace the grammar allows between the parts, the key spelt in shorter tokens), a trained model with "
        "the real Qwen tokenizer ~6: off's first answer character is later here than it would be with real weights. "
        f"The random reasoning here runs {per_token:.1f} characters per token; English runs ~4, so a real model "
        f"needs ~{per_token / 4:.1f}x the reasoning tokens (and time) shown here to reach the same character bound. "
        "Reasoning is shown to the bench (`show_reasoning`) only to count it. "
        f"At 1 user the slowest first answer character is under {REPLY_START_S:g} s in: "
        f"{', '.join(within) if within else 'no mode'} on this machine."
    )
    if fallbacks:
        notes += f" {fallbacks} turns ran out of `max_new_tokens` before any answer and got the fallback reply."
    header = [
        "users, mode", "reasoning bound chars", "turns", "first answer char p50 s", "first char min s",
        "first char max s", "first char vs off", "turn p50 s", "turn min s", "turn max s", "reasoning chars p50",
        "reasoning tokens p50", "answer chars p50",
    ]
    return "\n\n".join(["### Reasoning table (time to the answer per reasoning mode)", intro, table(header, rows), notes])
