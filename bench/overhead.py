"""Where ovbot's chat overhead comes from: the same chats, interleaved run by run (so
machine noise hits every path alike), through

1. ovbot as a bot runs it (job queue + SQLite + LocalEngines worker process),
2. LocalEngines alone (worker process, no queue),
3. the raw ContinuousBatchingPipeline in this process,

    python -m bench.overhead [--models-dir DIR] [--chats 1,8] [--repeats 3] [--new-tokens 128]

Prints one markdown table (medians) with the ratios to the raw pipeline. Also available
as the ``overhead`` section of ``python -m bench`` (not part of the default run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import ChatRun, Workload, fmt, median, percentile, ratio, table
from bench.harness import BotHarness, chat_options, gather_chats, worker_config
from bench.llm import RawCB, load_raw_cb
from bench.models import BenchModels, build_real_models, default_cache

from ovbot.core.engines.types import ChatMessage


async def engines_only(harness: BotHarness, chats: list, new_tokens: int) -> ChatRun:
    """LocalEngines without the queue: stream straight from the engine."""
    started = time.perf_counter()

    async def one(chat) -> tuple[float, float, int]:
        stream = await harness.engines.llm.stream(
            [ChatMessage("system", chat.system), ChatMessage("user", chat.user)], chat_options(new_tokens)
        )
        first = None
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - started
        result = await stream.result()
        end = time.perf_counter() - started
        return first if first is not None else end, end, result.metrics.generated_tokens

    results = await asyncio.gather(*(one(chat) for chat in chats))
    wall = time.perf_counter() - started
    return ChatRun("engines", len(chats), sum(r[2] for r in results), wall, [r[0] for r in results], ends=[r[1] for r in results])


async def overhead_section(
    models: BenchModels, concurrency: tuple[int, ...], repeats: int, new_tokens: int, kv_cache_gb: int,
    log: Callable[[str], None],
) -> tuple[str, list]:
    workload = Workload(models.main_llm)
    samples: dict[tuple[str, int], list[ChatRun]] = {}
    raw_pipe = await asyncio.to_thread(load_raw_cb, models.main_llm, max(concurrency), kv_cache_gb)
    raw = RawCB(raw_pipe)
    config = worker_config(models.main_llm, None, max_num_seqs=max(concurrency), kv_cache_gb=kv_cache_gb)
    async with BotHarness(config) as harness:
        await gather_chats(harness, workload.chats(2, offset=90000), 8)
        await asyncio.to_thread(raw.run, workload.chats(2, offset=90000), 8)
        for repeat in range(repeats):
            for n in concurrency:
                base = 200000 + 1000 * repeat + 20 * n
                # the three paths back to back on distinct prompts of the same shape
                runs = {
                    "queue": await gather_chats(harness, workload.chats(n, base), new_tokens),
                    "engines": await engines_only(harness, workload.chats(n, base + 100), new_tokens),
                    # raw CB in a thread so its step() does not stall the worker's pipe reader
                    "raw": await asyncio.to_thread(raw.run, workload.chats(n, base + 200), new_tokens),
                }
                for name, run in runs.items():
                    samples.setdefault((name, n), []).append(run)
                log(f"  overhead repeat {repeat + 1}, {n} chats: " + ", ".join(f"{k} {v.tokens_per_s:.1f}" for k, v in runs.items()))
    del raw, raw_pipe
    gc.collect()
    labels = {
        "queue": "ovbot: job queue + LocalEngines worker",
        "engines": "LocalEngines worker alone (no queue)",
        "raw": "raw ContinuousBatchingPipeline, in process",
    }
    rows = []
    for n in concurrency:
        raw_tps = median([r.tokens_per_s for r in samples[("raw", n)]])
        for name in ("queue", "engines", "raw"):
            runs = samples[(name, n)]
            tps = median([r.tokens_per_s for r in runs])
            ttft = median([percentile(r.ttfts, 0.5) for r in runs])
            rows.append([n, labels[name], fmt(tps), fmt(ttft, 2), ratio(tps, raw_tps)])
    intro = (
        f"The three paths run back to back for every repeat and concurrency ({repeats} repeats, "
        f"{new_tokens} new tokens, medians), so machine noise hits them alike."
    )
    return "\n\n".join([
        "### Overhead breakdown (interleaved)", intro,
        table(["chats", "path", "aggregate tok/s", "TTFT p50 s", "vs raw"], rows, "rlrrr"),
    ]), []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--chats", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 8))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    models = build_real_models(args.models_dir or default_cache(), {"llm"})
    text, _ = asyncio.run(overhead_section(models, args.chats, args.repeats, args.new_tokens, 2, print))
    print(text)


if __name__ == "__main__":
    main()
