"""Chat benchmarks: the LLM table (ovbot vs raw ContinuousBatchingPipeline vs
one-at-a-time LLMPipeline vs llama.cpp), single stream vs the bandwidth roofline, the
model variant table and the multi-turn (prefix caching) table."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    NA,
    Chat,
    ChatRun,
    Target,
    Workload,
    dir_size_mb,
    fmt,
    median,
    median_run,
    percentile,
    ratio,
    table,
    verdict,
)
from bench.harness import BotHarness, gather_chats, worker_config
from bench.models import LLM_VARIANTS, BenchModels

ENGINES = {
    "a": "(a) ovbot: core job queue + LocalEngines worker",
    "b": "(b) raw ContinuousBatchingPipeline",
    "c": "(c) LLMPipeline, one request after another",
    "d": "(d) llama.cpp Q4_0, batched, 2 threads",
}


@dataclass
class LLMConfig:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    new_tokens: int = 128
    repeats: int = 3
    llama_repeats: int = 2
    kv_cache_gb: int = 2
    variant_tokens: int = 128
    variant_repeats: int = 3
    multiturn_turns: int = 10
    multiturn_tokens: int = 16
    multiturn_repeats: int = 2
    bandwidth_mb: int = 1024


@dataclass
class LLMResults:
    runs: dict[str, dict[int, ChatRun]] = field(default_factory=dict)  # engine -> concurrency -> run
    load_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bandwidth_gbs: float | None = None
    weights_mb: float | None = None
    targets: list[Target] = field(default_factory=list)


def _offset(concurrency: int, repeat: int) -> int:
    """Distinct user messages for every (concurrency, repeat); the same ones for every
    engine, so they all see the same prompts."""
    return 1000 * (repeat + 1) + 20 * concurrency


# --------------------------------------------------------------------------- (b) raw CB


def load_raw_cb(llm_dir: Path, max_num_seqs: int, kv_cache_gb: int) -> Any:
    """The pipeline exactly as ovbot's worker loads it (same scheduler settings)."""
    import openvino_genai as og

    from ovbot.core.engines.local.worker import _load_llm

    return _load_llm(og, worker_config(llm_dir, None, max_num_seqs=max_num_seqs, kv_cache_gb=kv_cache_gb))


class RawCB:
    """Drives add_request/step/read directly: no process hop, no detokenization."""

    def __init__(self, pipe: Any) -> None:
        import openvino as ov
        import openvino_genai as og

        self._pipe = pipe
        self._og = og
        self._ov = ov
        self._ids = 0

    def run(self, chats: Sequence[Chat], new_tokens: int, on_step: Callable[[], None] | None = None) -> ChatRun:
        config = self._og.GenerationConfig()
        config.max_new_tokens = new_tokens
        config.ignore_eos = True
        started = time.perf_counter()
        handles = []
        for chat in chats:
            self._ids += 1
            tensor = self._ov.Tensor(np.array([chat.ids], dtype=np.int64))
            handles.append(self._pipe.add_request(self._ids, tensor, config))
        count = len(chats)
        first: list[float | None] = [None] * count
        ends: list[float | None] = [None] * count
        tokens = [0] * count
        while any(end is None for end in ends):
            self._pipe.step()
            if on_step is not None:
                on_step()
            now = time.perf_counter() - started
            for i, handle in enumerate(handles):
                if ends[i] is not None:
                    continue
                status = handle.get_status()
                while handle.can_read():
                    for output in handle.read().values():
                        got = len(output.generated_ids)
                        tokens[i] += got
                        if got and first[i] is None:
                            first[i] = now
                if status.name != "RUNNING":
                    ends[i] = now
        wall = time.perf_counter() - started
        return ChatRun(
            engine="raw-cb",
            concurrency=count,
            tokens=sum(tokens),
            wall_s=wall,
            ttfts=[f if f is not None else wall for f in first],
            prompt_tokens=[len(c.ids) for c in chats],
            ends=[e or wall for e in ends],
        )


# --------------------------------------------------------------------------- (c) one at a time


class OneAtATime:
    """LLMPipeline serving one request after another (a default single-user bot)."""

    def __init__(self, llm_dir: Path) -> None:
        import openvino as ov
        import openvino_genai as og

        self._og, self._ov = og, ov
        started = time.perf_counter()
        self._pipe = og.LLMPipeline(str(llm_dir), "CPU")
        self.load_s = time.perf_counter() - started

    def one(self, chat: Chat, new_tokens: int) -> tuple[float, float, int]:
        """(TTFT, duration, generated tokens) of one request."""
        og = self._og
        config = og.GenerationConfig()
        config.max_new_tokens = new_tokens
        config.ignore_eos = True

        class FirstToken(og.StreamerBase):
            def __init__(self) -> None:
                super().__init__()
                self.at: float | None = None

            def write(self, token: Any) -> Any:
                if self.at is None:
                    self.at = time.perf_counter()
                return og.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        streamer = FirstToken()
        begin = time.perf_counter()
        result = self._pipe.generate(self._ov.Tensor(np.array([chat.ids], dtype=np.int64)), config, streamer)
        end = time.perf_counter()
        return (streamer.at or end) - begin, end - begin, sum(len(t) for t in result.tokens)


def sequence_runs(sequence: list[tuple[float, float, int]], concurrency: Sequence[int]) -> dict[int, ChatRun]:
    """Rows of the one-at-a-time engine from one sequence of requests: N chats arriving
    together are served in order, so row N is the first N requests of the sequence; the
    1-chat row is the median single request."""
    runs: dict[int, ChatRun] = {}
    for n in concurrency:
        if n == 1:
            ttft, duration, generated = sorted(sequence, key=lambda s: s[1])[(len(sequence) - 1) // 2]
            runs[1] = ChatRun("llm-pipeline", 1, generated, duration, [ttft], ends=[duration])
            continue
        clock = 0.0
        ttfts, ends, tokens = [], [], 0
        for ttft, duration, generated in sequence[:n]:
            ttfts.append(clock + ttft)
            clock += duration
            ends.append(clock)
            tokens += generated
        runs[n] = ChatRun("llm-pipeline", n, tokens, clock, ttfts, ends=ends)
    return runs


# --------------------------------------------------------------------------- (d) llama.cpp

_PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bench.llama_peer import LlamaBatched
    peer = LlamaBatched(Path(sys.argv[1]), n_seq_max=2, n_ctx=512, extra_bufts=True)
    peer.cache_prefix(list(range(10, 80)))
    peer.run([list(range(10, 90))], 2)
    print("ok")
    """
)


def extra_bufts_work(gguf: Path) -> bool:
    """Whether llama.cpp's CPU extra buffer types (weight repacking, AMX) run on this
    machine: some builds crash in the AMX kernel when the VM does not grant AMX."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "ok" in done.stdout


def load_llama(models: BenchModels, workload: Workload, cfg: LLMConfig) -> tuple[Any, list[str]]:
    """The llama.cpp peer, or None with the reason."""
    if models.gguf is None or not models.gguf.is_file():
        return None, ["(d) llama.cpp skipped: no GGUF model (llama-cpp-python missing or conversion failed)"]
    try:
        from bench.llama_peer import LlamaBatched
    except ImportError as exc:
        return None, [f"(d) llama.cpp skipped: {exc}"]
    notes = []
    extra = extra_bufts_work(models.gguf)
    if not extra:
        notes.append(
            "(d) llama.cpp runs without its CPU extra buffer types (weight repacking/AMX): with them "
            "llama_decode crashed on this machine (probed in a child process); see bench/README.md"
        )
    longest = max(len(c.ids) for c in workload.chats(max(cfg.concurrency), _offset(max(cfg.concurrency), 0)))
    n_ctx = max(2048, (max(cfg.concurrency) + 1) * (longest + cfg.new_tokens + 32))
    peer = LlamaBatched(models.gguf, n_seq_max=max(cfg.concurrency) + 1, n_ctx=n_ctx, extra_bufts=extra)
    warm = workload.chats(2, offset=90000)
    peer.cache_prefix(os.path.commonprefix([list(c.ids) for c in warm]))
    peer.run([c.ids for c in warm], 8)
    return peer, notes


# --------------------------------------------------------------------------- roofline


def read_bandwidth_gbs(size_mb: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth: summing a large array (1 and 2 threads, best of a few)."""
    data = np.ones(size_mb * 1024 * 1024 // 8, dtype=np.int64)
    halves = np.array_split(data, 2)
    best = 0.0
    with ThreadPoolExecutor(2) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            data.sum()
            best = max(best, data.nbytes / (time.perf_counter() - started))
            started = time.perf_counter()
            list(pool.map(np.sum, halves))
            best = max(best, data.nbytes / (time.perf_counter() - started))
    return best / 1e9


# --------------------------------------------------------------------------- tables


def llm_tables(results: LLMResults, workload: Workload, cfg: LLMConfig) -> str:
    runs = results.runs
    a = runs.get("a", {})
    rows = []
    for n in cfg.concurrency:
        for key in ("a", "b", "c", "d"):
            run = runs.get(key, {}).get(n)
            if run is None:
                rows.append([n, ENGINES[key], NA, NA, NA, NA])
                continue
            rows.append([
                n, ENGINES[key], fmt(run.tokens_per_s), fmt(percentile(run.ttfts, 0.5), 2),
                fmt(percentile(run.ttfts, 0.95), 2), fmt(max(run.ends) if run.ends else run.wall_s, 2),
            ])
    main = table(["chats", "engine", "aggregate tok/s", "TTFT p50 s", "TTFT p95 s", "last user done s"], rows, "rlrrrr")

    ratio_rows = []
    for n in cfg.concurrency:
        ra = a.get(n)
        tps = {k: (runs.get(k, {}).get(n).tokens_per_s if runs.get(k, {}).get(n) else None) for k in "abcd"}
        ab = None if ra is None or tps["b"] is None else ra.tokens_per_s / tps["b"]
        ac = None if ra is None or tps["c"] is None else ra.tokens_per_s / tps["c"]
        ad = None if ra is None or tps["d"] is None else ra.tokens_per_s / tps["d"]
        marks = [verdict(None if ab is None else ab >= 0.95)]
        marks.append(verdict(None if ac is None else ac >= 3.5) if n == 8 else "")
        marks.append(verdict(None if ad is None else ad >= 2.0) if n == 8 else "")
        ratio_rows.append([
            n, fmt(ab, 2, "x"), marks[0], fmt(ac, 2, "x"), marks[1] or "-", fmt(ad, 2, "x"), marks[2] or "-",
        ])
    ratios = table(
        ["chats", "(a)/(b) overhead", "target >= 0.95", "(a)/(c) advantage", "target >= 3.5x at 8",
         "(a)/(d) advantage", "target >= 2x at 8"],
        ratio_rows,
    )
    return main + "\n\n" + ratios


def single_stream_table(results: LLMResults) -> str:
    runs = results.runs
    llama = runs.get("d", {}).get(1)
    llama_tps = llama.decode_tokens_per_s if llama else None
    roof = None
    if results.bandwidth_gbs and results.weights_mb:
        roof = results.bandwidth_gbs * 1e3 / results.weights_mb
    rows = []
    for key in ("a", "b", "c", "d"):
        run = runs.get(key, {}).get(1)
        if run is None:
            rows.append([ENGINES[key], NA, NA, NA, NA, "-"])
            continue
        tps = run.decode_tokens_per_s
        target = "-"
        if key == "a":
            target = verdict(None if llama_tps is None else tps >= llama_tps)
        rows.append([
            ENGINES[key], fmt(run.ttfts[0], 2), fmt(tps), fmt(100 * tps / roof if roof else None, 0, "%"),
            ratio(tps, llama_tps), target,
        ])
    rows.append([
        f"bandwidth roofline: {fmt(results.bandwidth_gbs)} GB/s / {fmt(results.weights_mb, 0)} MB per token",
        "-", fmt(roof), "100%", ratio(roof, llama_tps), "-",
    ])
    return table(
        ["single stream", "TTFT s", "decode tok/s", "of roofline", "vs llama.cpp", "target: (a) >= llama.cpp"],
        rows,
    )


# --------------------------------------------------------------------------- section


async def llm_section(models: BenchModels, cfg: LLMConfig, log: Callable[[str], None]) -> tuple[str, LLMResults]:
    """All four engines loaded at once and run back to back for every (repeat,
    concurrency), so drift in the machine's speed hits them alike."""
    workload = Workload(models.main_llm)
    results = LLMResults()
    samples: dict[str, dict[int, list[ChatRun]]] = {k: {} for k in "abd"}
    config = worker_config(models.main_llm, None, max_num_seqs=max(cfg.concurrency), kv_cache_gb=cfg.kv_cache_gb)
    sequence_length = max(cfg.concurrency)
    sequence_chats = workload.chats(sequence_length, _offset(sequence_length, 0) + 500)
    sequence: list[tuple[float, float, int]] = []
    async with BotHarness(config) as harness:
        results.load_s["a"] = harness.load_s
        await gather_chats(harness, workload.chats(2, offset=90000), 8)  # warm-up, caches the system prompt
        started = time.perf_counter()
        raw = RawCB(await asyncio.to_thread(load_raw_cb, models.main_llm, max(cfg.concurrency), cfg.kv_cache_gb))
        results.load_s["b"] = time.perf_counter() - started
        await asyncio.to_thread(raw.run, workload.chats(2, offset=90000), 8)
        one = await asyncio.to_thread(OneAtATime, models.main_llm)
        results.load_s["c"] = one.load_s
        await asyncio.to_thread(one.one, workload.chat(90000), 8)
        peer, notes = await asyncio.to_thread(load_llama, models, workload, cfg)
        results.notes += notes
        if peer is not None:
            results.load_s["d"] = peer.load_s
        try:
            for repeat in range(cfg.repeats):
                for n in cfg.concurrency:
                    chats = workload.chats(n, _offset(n, repeat))
                    done = {"a": await gather_chats(harness, chats, cfg.new_tokens)}
                    done["b"] = await asyncio.to_thread(raw.run, chats, cfg.new_tokens)
                    if peer is not None and repeat < cfg.llama_repeats:
                        done["d"] = await asyncio.to_thread(peer.run, [c.ids for c in chats], cfg.new_tokens)
                    if repeat == 0:  # the one-at-a-time sequence grows to n requests
                        while len(sequence) < n:
                            sequence.append(await asyncio.to_thread(one.one, sequence_chats[len(sequence)], cfg.new_tokens))
                    for key, run in done.items():
                        samples[key].setdefault(n, []).append(run)
                    log(f"  repeat {repeat + 1}, {n} chats: " + ", ".join(f"({k}) {r.tokens_per_s:.1f}" for k, r in done.items()) + " tok/s")
        finally:
            if peer is not None:
                peer.close()
            del raw, one
            gc.collect()
    for key, by_n in samples.items():
        if by_n:
            results.runs[key] = {n: median_run(runs) for n, runs in by_n.items()}
    results.runs["c"] = sequence_runs(sequence, cfg.concurrency)
    results.runs = {k: results.runs[k] for k in "abcd" if k in results.runs}
    log("bandwidth roofline")
    results.bandwidth_gbs = read_bandwidth_gbs(cfg.bandwidth_mb)
    results.weights_mb = dir_size_mb(models.main_llm, "openvino_model.bin")

    prompt_tokens = [len(c.ids) for c in workload.chats(8, _offset(8, 0))]
    header = (
        f"Workload: shared system prompt of {workload.system_tokens} tokens + a distinct ~"
        f"{workload.count(workload.chats(1, 5)[0].user)}-token user message per chat "
        f"(whole prompt {min(prompt_tokens)}-{max(prompt_tokens)} tokens with the chat template), "
        f"{cfg.new_tokens} new tokens, EOS ignored, greedy. Same token ids for every engine. "
        f"The engines run back to back for every concurrency and repeat (interleaved, so drift in the "
        f"machine's speed hits all alike); median of {cfg.repeats} runs for (a) and (b), "
        f"{min(cfg.llama_repeats, cfg.repeats)} for (d); (c) is one sequence of {max(cfg.concurrency)} requests, "
        f"grown alongside the first repeat (row N = its first N, 1-chat row = median request). "
        f"Load times: " + ", ".join(f"({k}) {v:.1f} s" for k, v in results.load_s.items() if v) + "."
    )
    ovbot_tokens = [t for run in results.runs["a"].values() for t in run.prompt_tokens]
    if ovbot_tokens:
        header += f" ovbot's worker saw prompts of {min(ovbot_tokens)}-{max(ovbot_tokens)} tokens (it applies the template itself)."
    text = "\n\n".join([
        "### LLM table (real-shape DeepSeek-R1-Distill-Qwen-1.5B, INT4 channel-wise)" if not models.tiny
        else "### LLM table (tiny model, smoke mode)",
        header,
        llm_tables(results, workload, cfg),
        "### Single stream vs the bandwidth roofline and llama.cpp",
        "Decode tok/s = (tokens - 1) / (time after the first token), 1 chat. Roofline = measured "
        "memory read bandwidth (numpy sum over a "
        f"{cfg.bandwidth_mb} MB array, best of 1 and 2 threads) / bytes of weights read per token "
        "(the IR's openvino_model.bin; it includes the 151936-row embedding table of which only one row "
        "is read, so the true roofline is somewhat higher).",
        single_stream_table(results),
    ])
    a, b, c, d = (results.runs.get(k, {}) for k in "abcd")
    if 8 in a:
        for key, other, wanted, limit in (("(a)/(b)", b, ">= 0.95", 0.95), ("(a)/(c)", c, ">= 3.5x", 3.5), ("(a)/(d)", d, ">= 2x", 2.0)):
            value = a[8].tokens_per_s / other[8].tokens_per_s if 8 in other else None
            results.targets.append(Target(f"{key} at 8 chats", wanted, fmt(value, 2, "x"), None if value is None else value >= limit))
    if 1 in a:
        mine = a[1].decode_tokens_per_s
        theirs = d[1].decode_tokens_per_s if 1 in d else None
        results.targets.append(Target(
            "single stream vs llama.cpp", ">= 1.00x", f"{fmt(mine)} vs {fmt(theirs)} tok/s",
            None if theirs is None else mine >= theirs,
        ))
    return text, results


# --------------------------------------------------------------------------- variants


def variants_section(models: BenchModels, cfg: LLMConfig, log: Callable[[str], None]) -> str:
    """All variants loaded at once and measured in turns (interleaved, like the LLM table)."""
    loaded = {}
    for name in LLM_VARIANTS:
        path = models.llm[name]
        started = time.perf_counter()
        raw = RawCB(load_raw_cb(path, 8, cfg.kv_cache_gb))
        load_s = time.perf_counter() - started
        workload = Workload(path)
        raw.run(workload.chats(2, offset=90000), 8)
        loaded[name] = (raw, workload, load_s, path)
    singles: dict[str, list[ChatRun]] = {name: [] for name in loaded}
    eights: dict[str, list[ChatRun]] = {name: [] for name in loaded}
    for r in range(cfg.variant_repeats):
        for name, (raw, workload, _, _) in loaded.items():
            singles[name].append(raw.run([workload.chat(50000 + 10 * r)], cfg.variant_tokens))
    for name, (raw, workload, _, _) in loaded.items():
        eights[name].append(raw.run(workload.chats(8, 60000), cfg.variant_tokens))
    rows = []
    base_tps = None
    for name, (raw, workload, load_s, path) in loaded.items():
        tps = median([s.decode_tokens_per_s for s in singles[name]])
        ttft = median([s.ttfts[0] for s in singles[name]])
        eight = median([s.tokens_per_s for s in eights[name]])
        base_tps = base_tps or tps
        rows.append([
            f"{name}: {LLM_VARIANTS[name][1]}", fmt(dir_size_mb(path, "openvino_model.bin"), 0), fmt(load_s, 1),
            fmt(ttft, 2), fmt(tps), ratio(tps, base_tps), fmt(eight),
        ])
        log(f"  variant {name}: {tps:.1f} tok/s single, {eight:.1f} tok/s at 8")
    loaded.clear()
    gc.collect()
    intro = (
        f"ContinuousBatchingPipeline with ovbot's scheduler settings, CPU, all variants loaded and run in "
        f"turns; single stream: median of {cfg.variant_repeats} requests (~200-token prompt, "
        f"{cfg.variant_tokens} new tokens); 8 chats: one run each. The export with the best single-stream "
        f"decode rate is the CPU recommendation."
    )
    title = "### Model variant table (CPU)" + (" (smoke: all rows are the same tiny model)" if models.tiny else "")
    return "\n\n".join([title, intro, table(
        ["variant", "IR MB", "load s", "TTFT s", "decode tok/s (1 chat)", "vs int4-cw", "aggregate tok/s (8 chats)"], rows
    )])


# --------------------------------------------------------------------------- multi-turn

ANSWER = (
    "Sure, here is a short explanation with an example you can share. Think of it as a "
    "simple idea: {topic} becomes clear once you try it yourself, so start small tonight."
)


async def multiturn_section(models: BenchModels, cfg: LLMConfig, log: Callable[[str], None]) -> tuple[str, list[Target]]:
    """One conversation of ``turns`` turns through ovbot (queue + engine, prefix caching
    on): TTFT per turn as the user sees it. Each repeat starts a conversation with its
    own system prompt, so turn 1 finds nothing cached."""
    from bench.common import SYSTEM, user_message

    workload = Workload(models.main_llm)
    config = worker_config(models.main_llm, None, max_num_seqs=8, kv_cache_gb=cfg.kv_cache_gb)
    turns = cfg.multiturn_turns
    per_turn: dict[int, list[float]] = {t: [] for t in range(1, turns + 1)}
    uncached: list[float] = []
    history_tokens = 0
    async with BotHarness(config) as harness:
        await harness.chat([("system", "warm-up"), ("user", "hello")], 4, time.perf_counter())
        for repeat in range(cfg.multiturn_repeats):
            system = f"Conversation {repeat + 1} of the multi-turn benchmark. " + SYSTEM
            messages: list[tuple[str, str]] = [("system", system)]
            for turn in range(1, turns + 1):
                messages.append(("user", user_message(7000 + 100 * repeat + turn)))
                started = time.perf_counter()
                first, _, data = await harness.chat(list(messages), cfg.multiturn_tokens, started)
                per_turn[turn].append(first or 0.0)
                if turn == turns:
                    history_tokens = int(data["prompt_tokens"])
                topic = user_message(turn).split("about ")[1].split(" and I")[0]
                messages.append(("assistant", ANSWER.format(topic=topic)))
            # the same turn-10 prompt with nothing cached: a different first word
            cold = [("system", f"Uncached copy {repeat + 1}. " + system)] + messages[1:-1]
            started = time.perf_counter()
            first, _, _ = await harness.chat(cold, cfg.multiturn_tokens, started)
            uncached.append(first or 0.0)
            log(f"  multi-turn repeat {repeat + 1}: turn 1 {per_turn[1][-1]:.2f} s, turn {turns} {per_turn[turns][-1]:.2f} s, uncached {uncached[-1]:.2f} s")
    t1 = median(per_turn[1])
    rows = []
    for turn in sorted({1, 2, 5, turns} & set(per_turn)):
        value = median(per_turn[turn])
        mark = verdict(value <= 1.5 * t1) if turn == turns else "-"
        rows.append([f"turn {turn}", fmt(value, 2), ratio(value, t1), mark])
    rows.append([f"turn {turns} prompt, nothing cached (for contrast)", fmt(median(uncached), 2), ratio(median(uncached), t1), "-"])
    intro = (
        f"One conversation through ovbot (queue + worker, prefix caching on), {turns} turns, "
        f"{cfg.multiturn_tokens} new tokens per turn; history holds the user messages and short "
        f"answers (reasoning is never replayed). Turn {turns} prompt: {history_tokens} tokens. "
        f"Turn 1 starts cold (its own system prompt). TTFT = submit to first text event; median of "
        f"{cfg.multiturn_repeats} conversations."
    )
    value = median(per_turn[turns])
    target = Target(f"turn-{turns} TTFT vs turn 1", "<= 1.5x", ratio(value, t1), value <= 1.5 * t1)
    return "\n\n".join(["### Multi-turn table (prefix caching)", intro, table(
        ["turn", "TTFT s", "vs turn 1", "target: turn 10 <= 1.5x turn 1"], rows
    )]), [target]
