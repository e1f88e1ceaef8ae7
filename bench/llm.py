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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    NA,
    Chat,
    ChatRun,
    Spread,
    Target,
    Workload,
    dir_size_mb,
    fmt,
    median,
    median_run,
    pairwise_ratio,
    percentile,
    ratio,
    spread,
    spread_text,
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


#: (chats, numerator, denominator) -> the least median ratio of aggregate tok/s wanted
#: (the design's targets and issue 15's)
AGGREGATE_TARGETS = {(1, "a", "c"): 1.0, (8, "a", "b"): 0.95, (8, "a", "c"): 3.5, (8, "a", "d"): 2.0}
#: the least median ratio of single-stream decode tok/s, ovbot over llama.cpp (issue 15)
SINGLE_STREAM_VS_LLAMA = 1.1
#: (a)/(b) overhead wanted at every concurrency
OVERHEAD_LIMIT = 0.95


@dataclass
class LLMConfig:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    new_tokens: int = 128
    #: repeats of (a) and (b) at the other rows; (c) runs once there (it is slow)
    repeats: int = 3
    llama_repeats: int = 2
    #: the rows the targets are judged on: every engine, (c) included, runs in every repeat
    headline: tuple[int, ...] = (1, 8)
    headline_repeats: int = 5
    kv_cache_gb: int = 2
    variant_tokens: int = 128
    variant_repeats: int = 3
    multiturn_turns: int = 10
    multiturn_tokens: int = 16
    multiturn_repeats: int = 2
    bandwidth_mb: int = 1024

    def repeats_of(self, chats: int, engine: str) -> int:
        """How many interleaved repeats ``engine`` runs at ``chats``: the headline rows
        get enough for a spread, the others stay cheap."""
        if chats in self.headline:
            return max(self.headline_repeats, self.repeats)
        if engine == "c":
            return 1
        if engine == "d":
            return min(self.llama_repeats, self.repeats)
        return self.repeats


@dataclass
class LLMResults:
    runs: dict[str, dict[int, ChatRun]] = field(default_factory=dict)  # engine -> concurrency -> median run
    #: concurrency -> one {engine: run} per interleaved repeat (what pairwise ratios are taken from)
    repeats: dict[int, list[dict[str, ChatRun]]] = field(default_factory=dict)
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

    from ovbot.core.engines.local.worker import load_llm

    return load_llm(og, worker_config(llm_dir, None, max_num_seqs=max_num_seqs, kv_cache_gb=kv_cache_gb))


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

    def __init__(self, llm_dir: Path, properties: dict[str, Any] | None = None) -> None:
        import openvino as ov
        import openvino_genai as og

        self._og, self._ov = og, ov
        started = time.perf_counter()
        self._pipe = og.LLMPipeline(str(llm_dir), "CPU", **(properties or {}))
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

    def run(self, chats: Sequence[Chat], new_tokens: int) -> ChatRun:
        return serial_run([self.one(chat, new_tokens) for chat in chats])


def serial_run(requests: Sequence[tuple[float, float, int]]) -> ChatRun:
    """N chats arriving together at a one-at-a-time bot: (TTFT, duration, tokens) of
    each request in the order served; user k waits for the k-1 before."""
    clock = 0.0
    ttfts, ends, tokens = [], [], 0
    for ttft, duration, generated in requests:
        ttfts.append(clock + ttft)
        clock += duration
        ends.append(clock)
        tokens += generated
    return ChatRun("llm-pipeline", len(requests), tokens, clock, ttfts, ends=ends)


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


def judged(found: Spread | None, limit: float | None) -> str:
    """A target's verdict on the median of its pairwise ratios ("-" where none applies)."""
    if limit is None:
        return "-"
    return verdict(None if found is None else found.median >= limit)


def decode_rate(run: ChatRun) -> float:
    return run.decode_tokens_per_s


def llm_tables(results: LLMResults, workload: Workload, cfg: LLMConfig) -> str:
    runs = results.runs
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
        repeats = results.repeats.get(n, [])
        ab, ac, ad, bc = (pairwise_ratio(repeats, top, bottom) for top, bottom in ("ab", "ac", "ad", "bc"))
        ratio_rows.append([
            n, spread_text(ab), judged(ab, OVERHEAD_LIMIT), spread_text(ac), judged(ac, AGGREGATE_TARGETS.get((n, "a", "c"))),
            spread_text(ad), judged(ad, AGGREGATE_TARGETS.get((n, "a", "d"))), spread_text(bc),
        ])
    ratios = table(
        ["chats", "(a)/(b) overhead", "target >= 0.95", "(a)/(c) advantage", "target >= 1x at 1, >= 3.5x at 8",
         "(a)/(d) advantage", "target >= 2x at 8", "(b)/(c) raw CB vs LLMPipeline"],
        ratio_rows,
    )
    return main + "\n\n" + ratios


def single_stream_table(results: LLMResults) -> str:
    runs = results.runs
    singles = results.repeats.get(1, [])
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
        versus = pairwise_ratio(singles, key, "d", decode_rate)
        rows.append([
            ENGINES[key], fmt(run.ttfts[0], 2), fmt(tps), fmt(100 * tps / roof if roof else None, 0, "%"),
            spread_text(versus), judged(versus, SINGLE_STREAM_VS_LLAMA) if key == "a" else "-",
        ])
    rows.append([
        f"bandwidth roofline: {fmt(results.bandwidth_gbs)} GB/s / {fmt(results.weights_mb, 0)} MB per token",
        "-", fmt(roof), "100%", ratio(roof, llama_tps), "-",
    ])
    return table(
        ["single stream", "TTFT s", "decode tok/s", "of roofline", "vs llama.cpp", f"target: (a) >= {SINGLE_STREAM_VS_LLAMA}x llama.cpp"],
        rows,
    )


def llm_targets(results: LLMResults) -> list[Target]:
    """The Targets rows: each judged on the median of its pairwise ratios, the spread
    shown beside it."""
    targets = []
    for (n, top, bottom), limit in AGGREGATE_TARGETS.items():
        if n not in results.repeats:
            continue
        found = pairwise_ratio(results.repeats[n], top, bottom)
        name = f"({top})/({bottom}) at {n} chat{'s' if n > 1 else ''}, aggregate tok/s"
        targets.append(Target(name, f">= {limit:g}x", spread_text(found), None if found is None else found.median >= limit))
    if 1 in results.repeats:
        found = pairwise_ratio(results.repeats[1], "a", "d", decode_rate)
        targets.append(Target(
            "single stream decode tok/s, (a)/(d) llama.cpp", f">= {SINGLE_STREAM_VS_LLAMA:g}x", spread_text(found),
            None if found is None else found.median >= SINGLE_STREAM_VS_LLAMA,
        ))
    if 8 in results.repeats:
        p95 = spread([percentile(runs["a"].ttfts, 0.95) for runs in results.repeats[8] if "a" in runs])
        targets.append(Target(
            "(a) TTFT p95 at 8 chats", "reported (issue 15: before/after)", spread_text(p95, 2, " s"), p95 is not None,
        ))
    return targets


# --------------------------------------------------------------------------- section


Runner = Callable[[list[Chat]], Awaitable[ChatRun]]


async def load_peers(models: BenchModels, workload: Workload, cfg: LLMConfig, results: LLMResults) -> tuple[dict[str, Runner], Any]:
    """Engines (b), (c) and (d), loaded and warmed up, as runners of one repeat's chats
    (in the order they run), and the llama.cpp peer to close (None when it is missing)."""
    started = time.perf_counter()
    raw = RawCB(await asyncio.to_thread(load_raw_cb, models.main_llm, max(cfg.concurrency), cfg.kv_cache_gb))
    results.load_s["b"] = time.perf_counter() - started
    await asyncio.to_thread(raw.run, workload.chats(2, offset=90000), 8)
    one = await asyncio.to_thread(OneAtATime, models.main_llm)
    results.load_s["c"] = one.load_s
    await asyncio.to_thread(one.one, workload.chat(90000), 8)
    peer, notes = await asyncio.to_thread(load_llama, models, workload, cfg)
    results.notes += notes
    engines: dict[str, Runner] = {"b": lambda chats: asyncio.to_thread(raw.run, chats, cfg.new_tokens)}
    if peer is not None:
        results.load_s["d"] = peer.load_s
        engines["d"] = lambda chats: asyncio.to_thread(peer.run, [c.ids for c in chats], cfg.new_tokens)
    engines["c"] = lambda chats: asyncio.to_thread(one.run, chats, cfg.new_tokens)
    return engines, peer


async def llm_section(models: BenchModels, cfg: LLMConfig, log: Callable[[str], None]) -> tuple[str, LLMResults]:
    """All four engines loaded at once and run back to back for every (repeat,
    concurrency), so drift in the machine's speed hits them alike and each ratio can be
    taken within a repeat."""
    workload = Workload(models.main_llm)
    results = LLMResults()
    config = worker_config(models.main_llm, None, max_num_seqs=max(cfg.concurrency), kv_cache_gb=cfg.kv_cache_gb)
    async with BotHarness(config) as harness:
        results.load_s["a"] = harness.load_s
        await gather_chats(harness, workload.chats(2, offset=90000), 8)  # warm-up, caches the system prompt
        engines, peer = await load_peers(models, workload, cfg, results)
        engines = {"a": lambda chats: gather_chats(harness, chats, cfg.new_tokens), **engines}
        rounds = max(cfg.repeats_of(n, key) for n in cfg.concurrency for key in "abcd")
        try:
            for repeat in range(rounds):
                for n in cfg.concurrency:
                    due = [key for key in engines if repeat < cfg.repeats_of(n, key)]
                    if not due:
                        continue
                    chats = workload.chats(n, _offset(n, repeat))
                    done = {key: await engines[key](chats) for key in due}
                    results.repeats.setdefault(n, []).append(done)
                    log(f"  repeat {repeat + 1}, {n} chats: " + ", ".join(f"({k}) {r.tokens_per_s:.1f}" for k, r in done.items()) + " tok/s")
        finally:
            if peer is not None:
                peer.close()
            engines.clear()  # the pipelines' memory, before the bandwidth measurement
            gc.collect()
    for key in "abcd":
        by_n = {n: [runs[key] for runs in repeats if key in runs] for n, repeats in results.repeats.items()}
        medians = {n: median_run(found) for n, found in by_n.items() if found}
        if medians:
            results.runs[key] = medians
    log("bandwidth roofline")
    results.bandwidth_gbs = read_bandwidth_gbs(cfg.bandwidth_mb)
    results.weights_mb = dir_size_mb(models.main_llm, "openvino_model.bin")

    text = "\n\n".join([
        "### LLM table (real-shape DeepSeek-R1-Distill-Qwen-1.5B, INT4 channel-wise)" if not models.tiny
        else "### LLM table (tiny model, smoke mode)",
        llm_description(results, workload, cfg),
        llm_tables(results, workload, cfg),
        "### Single stream vs the bandwidth roofline and llama.cpp",
        "Decode tok/s = (tokens - 1) / (time after the first token), 1 chat (median run). Roofline = measured "
        "memory read bandwidth (numpy sum over a "
        f"{cfg.bandwidth_mb} MB array, best of 1 and 2 threads) / bytes of weights read per token "
        "(the IR's openvino_model.bin; it includes the 151936-row embedding table of which only one row "
        "is read, so the true roofline is somewhat higher). \"vs llama.cpp\": decode tok/s ratio taken within "
        "each repeat, median (min-max), n = repeats.",
        single_stream_table(results),
    ])
    results.targets = llm_targets(results)
    return text, results


def llm_description(results: LLMResults, workload: Workload, cfg: LLMConfig) -> str:
    """The section's paragraph: the workload, how many repeats each row had and how the
    ratios are taken."""
    prompt_tokens = [len(c.ids) for c in workload.chats(8, _offset(8, 0))]
    headline = [n for n in cfg.concurrency if n in cfg.headline]
    others = [n for n in cfg.concurrency if n not in cfg.headline]
    repeats = [f"{', '.join(map(str, headline))} chats (the headline rows): {cfg.repeats_of(headline[0], 'a')} "
               "repeats of every engine, (c) included"] if headline else []
    if others:
        sample = others[0]
        repeats.append(
            f"{', '.join(map(str, others))} chats: (a) and (b) in {cfg.repeats_of(sample, 'a')}, (d) in the first "
            f"{cfg.repeats_of(sample, 'd')}, (c) in the first {cfg.repeats_of(sample, 'c')} (it is the slow one)"
        )
    text = (
        f"Workload: shared system prompt of {workload.system_tokens} tokens + a distinct ~"
        f"{workload.count(workload.chats(1, 5)[0].user)}-token user message per chat "
        f"(whole prompt {min(prompt_tokens)}-{max(prompt_tokens)} tokens with the chat template), "
        f"{cfg.new_tokens} new tokens, EOS ignored, greedy. Same token ids for every engine. "
        "The engines run back to back in every repeat of every concurrency (interleaved, so drift in the "
        "machine's speed hits all alike), on that repeat's own distinct messages; (c) serves the N chats one "
        f"after another in the same repeat. Repeats: {'; '.join(repeats)}. The engine table shows each "
        "engine's median run (by aggregate tok/s). Each ratio is taken pairwise within a repeat (the two engines' "
        "runs on the same messages, back to back) and reported as the median of those ratios with their min-max "
        "over the repeats and n = how many repeats had both engines; targets are judged on that median. "
        "Load times: " + ", ".join(f"({k}) {v:.1f} s" for k, v in results.load_s.items() if v) + "."
    )
    if "d" not in results.runs:
        text += " " + "; ".join(note for note in results.notes if note.startswith("(d)")) + "."
    ovbot_tokens = [t for run in results.runs.get("a", {}).values() for t in run.prompt_tokens]
    if ovbot_tokens:
        text += f" ovbot's worker saw prompts of {min(ovbot_tokens)}-{max(ovbot_tokens)} tokens (it applies the template itself)."
    return text


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
