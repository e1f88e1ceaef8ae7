"""The lever table: what each OpenVINO / scheduler setting does to one lone chat and to
8 chats at once (issue 15).

Every lever loads the chat pipeline exactly as ovbot's worker does (``load_llm`` with
one ``LLMTuning`` field changed) in a process of its own, so peak memory is that
lever's alone; the levers run in turns, in a rotated order, for several rounds, and each
ratio is taken against the default's run of the same round (pairwise, like the LLM
table). The LLMPipeline rows are the single-user baseline with each attention backend.

    python -m bench --only levers [--repeats 3]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.common import NA, ChatRun, Spread, Workload, fmt, median, percentile, spread, spread_text, table
from bench.harness import worker_config
from bench.quant_error import PROMPT_TOKENS, ErrorRow, measure_in_child

#: the default's row; every ratio is to it
DEFAULT = "default"
#: the default's second run of a round (it closes the round)
CLOSING = "default, closing the round"


@dataclass(frozen=True)
class Lever:
    """One row: the settings changed from ovbot's defaults (``tuning`` fields of
    LLMTuning, or the KV cache size), or an LLMPipeline with an attention backend."""

    setting: str
    tuning: dict[str, object] = field(default_factory=dict)
    kv_cache_gb: int | None = None
    #: "" = ovbot's ContinuousBatchingPipeline; "SDPA" / "PA" = LLMPipeline with that backend
    llm_pipeline: str = ""


LEVERS: dict[str, Lever] = {
    DEFAULT: Lever("ovbot's defaults (the worker's load_llm as committed)"),
    "dq-32": Lever("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE=32 (OpenVINO's CPU default)", {"dynamic_quantization_group_size": 32}),
    "kv-f16": Lever("OVBOT_LLM_KV_CACHE_PRECISION=f16 (CPU default u8)", {"kv_cache_precision": "f16"}),
    "no-split-fuse": Lever("OVBOT_LLM_SPLIT_FUSE=false (whole prompts first)", {"dynamic_split_fuse": False, "max_num_batched_tokens": 2048}),
    "batched-64": Lever("OVBOT_LLM_MAX_BATCHED_TOKENS=64", {"max_num_batched_tokens": 64}),
    "batched-128": Lever("OVBOT_LLM_MAX_BATCHED_TOKENS=128", {"max_num_batched_tokens": 128}),
    "batched-512": Lever("OVBOT_LLM_MAX_BATCHED_TOKENS=512", {"max_num_batched_tokens": 512}),
    "batched-1024": Lever("OVBOT_LLM_MAX_BATCHED_TOKENS=1024", {"max_num_batched_tokens": 1024}),
    "cache-1gb": Lever("OVBOT_KV_CACHE_GB=1", kv_cache_gb=1),
    "cache-4gb": Lever("OVBOT_KV_CACHE_GB=4", kv_cache_gb=4),
    "threads-1": Lever("OVBOT_LLM_THREADS=1", {"threads": 1}),
    "no-pinning": Lever("OVBOT_LLM_CPU_PINNING=false (CPU default true)", {"cpu_pinning": False}),
    "hint-throughput": Lever("OVBOT_LLM_PERFORMANCE_HINT=THROUGHPUT (CPU default LATENCY)", {"performance_hint": "THROUGHPUT"}),
    "dq-off": Lever("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (no dynamic quantization)", {"dynamic_quantization_group_size": 0}),
    "dq-64": Lever("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE=64", {"dynamic_quantization_group_size": 64}),
    "dq-256": Lever("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE=256", {"dynamic_quantization_group_size": 256}),
    "precision-f32": Lever("OVBOT_LLM_INFERENCE_PRECISION=f32 (CPU default bf16 here)", {"inference_precision": "f32"}),
    "llm-pipeline-sdpa": Lever("LLMPipeline, ATTENTION_BACKEND=SDPA (stateful)", llm_pipeline="SDPA"),
    "llm-pipeline-pa": Lever("LLMPipeline, ATTENTION_BACKEND=PA", llm_pipeline="PA"),
    "llm-pipeline-sdpa-dq128": Lever("LLMPipeline, SDPA, DYNAMIC_QUANTIZATION_GROUP_SIZE=128", llm_pipeline="SDPA", tuning={"dynamic_quantization_group_size": 128}),
}


@dataclass
class LeverConfig:
    levers: tuple[str, ...] = tuple(LEVERS)
    rounds: int = 3
    new_tokens: int = 128
    chats: int = 8
    kv_cache_gb: int = 2


@dataclass
class LeverRun:
    """One lever's measurements in one round (what the child process prints)."""

    load_s: float
    rss_loaded_mb: float
    peak_rss_mb: float
    single_decode: float
    single_ttft: float
    #: 8 chats at once; None for the LLMPipeline rows (one at a time: the LLM table's (c))
    many_tps: float | None = None
    many_ttft_p50: float | None = None
    many_ttft_p95: float | None = None


# --------------------------------------------------------------------------- child


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(name: str, model: Path, cfg: LeverConfig, round_index: int) -> LeverRun:
    """In the child: load the lever's pipeline, warm it up (the shared system prompt
    gets cached, as in a running bot), one lone chat, then ``cfg.chats`` at once."""
    import openvino_genai as og

    from bench.llm import OneAtATime, RawCB
    from ovbot.core.engines.local.worker import load_llm

    lever = LEVERS[name]
    workload = Workload(model)
    offset = 3000 + 100 * round_index
    started = time.perf_counter()
    if lever.llm_pipeline:
        properties: dict[str, object] = {"ATTENTION_BACKEND": lever.llm_pipeline}
        if "dynamic_quantization_group_size" in lever.tuning:
            properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = lever.tuning["dynamic_quantization_group_size"]
        one = OneAtATime(model, properties)
        load_s, rss = time.perf_counter() - started, _rss_mb()
        one.one(workload.chat(90000), 8)
        ttft, duration, tokens = one.one(workload.chat(offset), cfg.new_tokens)
        decode = (tokens - 1) / (duration - ttft) if duration > ttft else 0.0
        return LeverRun(load_s, rss, _peak_rss_mb(), decode, ttft)
    config = worker_config(model, None, max_num_seqs=16, kv_cache_gb=lever.kv_cache_gb or cfg.kv_cache_gb)
    config = replace(config, llm_tuning=replace(config.llm_tuning, **lever.tuning))  # type: ignore[arg-type]
    raw = RawCB(load_llm(og, config))
    load_s, rss = time.perf_counter() - started, _rss_mb()
    raw.run(workload.chats(2, 90000), 8)
    single = raw.run([workload.chat(offset)], cfg.new_tokens)
    many = raw.run(workload.chats(cfg.chats, offset + 10), cfg.new_tokens)
    return LeverRun(
        load_s, rss, _peak_rss_mb(), single.decode_tokens_per_s, single.ttfts[0],
        many.tokens_per_s, percentile(many.ttfts, 0.5), percentile(many.ttfts, 0.95),
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(name: str, model: Path, cfg: LeverConfig, round_index: int) -> LeverRun:
    """One lever, one round, in a fresh process (its memory is its own)."""
    command = [
        sys.executable, "-m", "bench.levers", name, str(model), str(round_index),
        json.dumps({"new_tokens": cfg.new_tokens, "chats": cfg.chats, "kv_cache_gb": cfg.kv_cache_gb}),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"lever {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return LeverRun(**json.loads(done.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- parent


def lever_rounds(model: Path, cfg: LeverConfig, log: Callable[[str], None]) -> list[dict[str, LeverRun]]:
    rounds: list[dict[str, LeverRun]] = []
    others = [name for name in cfg.levers if name != DEFAULT]
    for index in range(cfg.rounds):
        # serpentine: a lever early in one round is late in the next, so the machine's
        # drift over a round does not favour a position; the default opens and closes
        # every round and each lever is compared with the mean of those two runs
        order = [DEFAULT, *(others if index % 2 == 0 else others[::-1]), CLOSING]
        runs = {}
        for name in order:
            runs[name] = run_child(DEFAULT if name == CLOSING else name, model, cfg, index)
            found = runs[name]
            many = (
                f", {cfg.chats} chats {found.many_tps:.1f} tok/s TTFT p50 {found.many_ttft_p50:.2f} p95 {found.many_ttft_p95:.2f} s"
                if found.many_tps else ""
            )
            log(f"  round {index + 1} {name}: 1 chat {found.single_decode:.1f} tok/s{many}, peak {found.peak_rss_mb:.0f} MB")
        rounds.append(runs)
    return rounds


def _pairwise(rounds: Sequence[dict[str, LeverRun]], name: str, metric: Callable[[LeverRun], float | None]) -> Spread | None:
    """``name`` over the mean of its round's two default runs (opening and closing)."""
    values = []
    for runs in rounds:
        top = runs.get(name)
        defaults = [found for key in (DEFAULT, CLOSING) if key in runs and (found := metric(runs[key])) is not None]
        upper = metric(top) if top is not None else None
        if upper is not None and defaults and sum(defaults) > 0:
            values.append(upper / (sum(defaults) / len(defaults)))
    return spread(values)


def _values(rounds: Sequence[dict[str, LeverRun]], name: str, metric: Callable[[LeverRun], float | None]) -> list[float]:
    keys = (DEFAULT, CLOSING) if name == DEFAULT else (name,)
    return [value for runs in rounds for key in keys if key in runs and (value := metric(runs[key])) is not None]


def lever_table(rounds: Sequence[dict[str, LeverRun]], cfg: LeverConfig) -> str:
    rows = []
    for name in cfg.levers:
        def spread_of(metric: Callable[[LeverRun], float | None], digits: int = 1) -> str:
            return spread_text(spread(_values(rounds, name, metric)), digits, "")

        def median_of(metric: Callable[[LeverRun], float | None], digits: int) -> str:
            values = _values(rounds, name, metric)
            return fmt(median(values), digits) if values else NA

        def versus(metric: Callable[[LeverRun], float | None]) -> str:
            return NA if name == DEFAULT else spread_text(_pairwise(rounds, name, metric))

        rows.append([
            name, LEVERS[name].setting,
            spread_of(lambda r: r.single_decode), versus(lambda r: r.single_decode), median_of(lambda r: r.single_ttft, 2),
            spread_of(lambda r: r.many_tps), versus(lambda r: r.many_tps),
            median_of(lambda r: r.many_ttft_p50, 2), spread_of(lambda r: r.many_ttft_p95, 2),
            median_of(lambda r: r.peak_rss_mb, 0), median_of(lambda r: r.load_s, 1),
        ])
    header = [
        "lever", "setting", "1 chat decode tok/s", "vs default", "1 chat TTFT s",
        f"{cfg.chats} chats tok/s", "vs default", f"{cfg.chats} chats TTFT p50 s", f"{cfg.chats} chats TTFT p95 s",
        "peak RSS MB", "load s",
    ]
    return table(header, rows)


TITLE = "### Lever table (issue 15)"


def smoke_lever_config() -> LeverConfig:
    """Seconds on the tiny model: one round of a scheduler lever, a compile property and
    an LLMPipeline row, so every kind of lever is shown to load."""
    return LeverConfig(levers=(DEFAULT, "batched-128", "dq-32", "llm-pipeline-sdpa-dq128"), rounds=1, new_tokens=8, kv_cache_gb=1)


def levers_section(model: Path, cfg: LeverConfig, log: Callable[[str], None], tiny: bool = False) -> str:
    rounds = lever_rounds(model, cfg, log)
    intro = (
        f"Each lever changes one setting from ovbot's defaults and loads the chat pipeline as the worker does "
        f"(``load_llm``), in a process of its own (peak RSS is that process's: weights, compiled model, KV cache "
        f"as used). Per process: a warm-up that caches the shared system prompt, one lone chat ({cfg.new_tokens} "
        f"new tokens, EOS ignored, greedy), then {cfg.chats} chats with distinct messages at once. {cfg.rounds} "
        "rounds; the default opens and closes every round, the other levers run in between, in reverse order every "
        "other round; figures are median (min-max), n = runs; \"vs default\" is each run over the mean of its "
        "round's two default runs. The LLMPipeline rows serve one "
        "request at a time (their 8-chat figure is the LLM table's (c))."
    )
    smoke = "\n\n(Smoke mode: the tiny model; the figures mean nothing.)" if tiny else ""
    log("  numeric error of the precision settings")
    return "\n\n".join([TITLE, intro, lever_table(rounds, cfg), error_text(measure_in_child(model))]) + smoke


def error_text(rows: Sequence[ErrorRow]) -> str:
    intro = (
        "What the faster settings cost in exactness (bench/quant_error.py): the IR's logits for one "
        f"{PROMPT_TOKENS}-token prompt and one decode step under each setting, against f32 without dynamic "
        "quantization on the same token ids. Random weights measure the arithmetic error a setting adds, "
        "not answer quality; their near-flat logits make top-1 agreement a harsh measure."
    )
    body = table(
        ["setting", "prompt logits error", "top-1 agreement", "decode step logits error"],
        [[row.setting, f"{100 * row.prefill_error:.1f}%", f"{100 * row.top1_agreement:.1f}%", f"{100 * row.decode_error:.1f}%"]
         for row in rows],
    )
    return intro + "\n\n" + body


def main(argv: Sequence[str]) -> None:
    name, model, round_index, options = argv
    cfg = LeverConfig(**json.loads(options))
    print(json.dumps(asdict(measure(name, Path(model), cfg, int(round_index)))))


if __name__ == "__main__":
    main(sys.argv[1:])
