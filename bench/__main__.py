"""ovbot benchmarks: one command, markdown tables, a results file.

    python -m bench [--smoke] [--out bench/results/RESULTS.md] [--only llm,multiturn,variants,loop,image,platform,discord,reasoning]
    python -m bench --only load    # 200 sessions on HTTP, Telegram and Discord; updates its section of bench/LATEST.md

Builds the real-shape random models once into a cache outside git
(``$OVBOT_BENCH_MODELS_DIR`` or ``~/.cache/ovbot/bench-models``; ``--models-dir``), then
measures ovbot against its peers and the machine's limit. ``--smoke`` runs the same code
on the tiny test models in seconds (llama.cpp and diffusers peers skipped). A full run
with every section also refreshes ``bench/LATEST.md`` (the copy the README links to).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

from bench.common import NoiseMeter, Target, machine_description, table, verdict
from bench.discord_ack import AckConfig, discord_ack_section, smoke_ack_config
from bench.llm import LLMConfig, llm_section, multiturn_section, variants_section
from bench.mixed import ImageConfig, image_section, shared_cpu_section
from bench.levers import TITLE as LEVERS_TITLE
from bench.levers import LeverConfig, levers_section, smoke_lever_config
from bench.load import TITLE as LOAD_TITLE
from bench.load import LoadConfig, load_section, smoke_load_config
from bench.models import BenchModels, build_real_models, default_cache, recorded_build_times, tiny_bench_models
from bench.overhead import overhead_section
from bench.platform import PlatformConfig, platform_section, smoke_platform_config
from bench.reasoning import ReasoningConfig, reasoning_section, smoke_reasoning_config

SECTIONS = ("llm", "variants", "multiturn", "loop", "image", "platform", "discord", "reasoning")
#: sections that run only when named in --only
EXTRA_SECTIONS = ("overhead", "load", "levers")
#: extra sections whose part of bench/LATEST.md is their own run's (kept across full runs)
OWN_RUN_TITLES = {"load": LOAD_TITLE, "levers": LEVERS_TITLE}
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "RESULTS.md"
LATEST = BENCH_DIR / "LATEST.md"


def smoke_configs() -> tuple[LLMConfig, ImageConfig]:
    llm = LLMConfig(
        concurrency=(1, 2, 4, 8, 16), new_tokens=16, repeats=1, llama_repeats=1, headline_repeats=2, kv_cache_gb=1,
        variant_tokens=16, variant_repeats=1, multiturn_turns=10, multiturn_tokens=4, multiturn_repeats=1,
        bandwidth_mb=64,
    )
    image = ImageConfig(
        size=(64, 64), short_steps=1, long_steps=2, repeats=1, probe_tokens=4, probes=2, lag_tokens=16,
        lag_image_steps=2, contrast_tokens=8, kv_cache_gb=1,
    )
    return llm, image


def tiny_models_root() -> Path:
    configured = os.environ.get("OVBOT_TEST_MODELS_DIR")
    if configured:
        return Path(configured).expanduser()
    return BENCH_DIR.parent / ".cache" / "test-models"


def parse_sections(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SECTIONS + EXTRA_SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS + EXTRA_SECTIONS)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, seconds long (what the tests run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (markdown)")
    parser.add_argument("--only", type=parse_sections, default=SECTIONS, help=f"comma list of {','.join(SECTIONS + EXTRA_SECTIONS)} (default: all but {','.join(EXTRA_SECTIONS)})")
    parser.add_argument("--models-dir", type=Path, default=None, help="real-shape model cache (default $OVBOT_BENCH_MODELS_DIR or ~/.cache/ovbot/bench-models)")
    parser.add_argument("--tiny-dir", type=Path, default=None, help="tiny model dir for --smoke (default: the test suite's cache)")
    parser.add_argument("--latest", type=Path, default=None, help="also write the report here (default: bench/LATEST.md after a full real run)")
    parser.add_argument("--no-latest", action="store_true", help="never write bench/LATEST.md")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (median reported)")
    parser.add_argument(
        "--headline-repeats", type=int, default=None,
        help="interleaved repeats of every engine at the LLM table's headline rows, 1 and 8 chats (default 5; at least --repeats)",
    )
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--concurrency", type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
    return parser.parse_args(argv)


def prepare_models(args: argparse.Namespace, log) -> tuple[BenchModels, str]:
    if args.smoke:
        from ovbot.models.tiny import build_tiny_models

        started = time.perf_counter()
        tiny = build_tiny_models(args.tiny_dir or tiny_models_root())
        took = time.perf_counter() - started
        return tiny_bench_models(tiny.llm, tiny.image), f"tiny models ready in {took:.1f} s ({tiny.llm.parent})"
    cache = (args.models_dir or default_cache()).expanduser()
    parts = set()
    if set(args.only) & {"llm", "variants", "multiturn", "loop", "overhead", "levers"}:
        parts.add("llm")
    if "llm" in args.only:
        parts.add("gguf")
    if set(args.only) & {"loop", "image", "platform"}:
        parts.add("image")
    if "platform" in args.only:
        parts.add("llm")
    if "reasoning" in args.only:
        parts.add("llm-main")  # only the INT4 model: minutes, not three exports
    started = time.perf_counter()
    models = build_real_models(cache, parts, log)
    took = time.perf_counter() - started
    if models.build_s:
        built = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in models.build_s.items())
        summary = f"built this run in {took:.0f} s ({built}) into {cache}"
    else:
        recorded = recorded_build_times(cache)
        total = sum(recorded.values())
        detail = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in recorded.items())
        summary = f"all cached in {cache} (checked in {took:.1f} s); the build took {total:.0f} s when it ran ({detail})"
    return models, summary


def configs(args: argparse.Namespace) -> tuple[LLMConfig, ImageConfig]:
    llm, image = smoke_configs() if args.smoke else (LLMConfig(), ImageConfig())
    if args.repeats is not None:
        llm = replace(llm, repeats=args.repeats, llama_repeats=args.repeats, variant_repeats=args.repeats)
        image = replace(image, repeats=args.repeats)
    if args.headline_repeats is not None:
        llm = replace(llm, headline_repeats=args.headline_repeats)
    if args.new_tokens is not None:
        llm = replace(llm, new_tokens=args.new_tokens, variant_tokens=args.new_tokens)
    if args.concurrency is not None:
        llm = replace(llm, concurrency=args.concurrency)
    return llm, image


def targets_table(targets: list[Target]) -> str:
    rows = [[t.name, t.wanted, t.measured, verdict(t.ok)] for t in targets]
    return table(["target", "wanted", "measured", "result"], rows, "lllr")


async def run(args: argparse.Namespace, log=print) -> str:
    """Run the selected sections and return the whole report (markdown)."""
    started = time.perf_counter()
    stamp = dt.datetime.now().astimezone()
    models, model_summary = prepare_models(args, log)
    llm_cfg, image_cfg = configs(args)
    sections: list[str] = []
    targets: list[Target] = []
    notes: list[str] = list(models.notes)
    timings: list[str] = []

    async def timed(name: str, awaitable) -> None:
        began = time.perf_counter()
        log(f"== {name}")
        noise = NoiseMeter()
        noise.start()
        text, found = await awaitable
        other = noise.other_share()
        if other is not None:
            text += f"\n\nOther processes on this machine used {100 * other:.0f}% of the CPU during this section."
            if other > 0.10:
                notes.append(f"{name}: other processes used {100 * other:.0f}% of the CPU while it ran; its figures are noisier")
        sections.append(text)
        targets.extend(found)
        timings.append(f"{name} {time.perf_counter() - began:.0f} s")

    async def llm() -> tuple[str, list[Target]]:
        text, results = await llm_section(models, llm_cfg, log)
        notes.extend(results.notes)
        return text, results.targets

    async def variants() -> tuple[str, list[Target]]:
        return await asyncio.to_thread(variants_section, models, llm_cfg, log), []

    if "llm" in args.only:
        await timed("llm", llm())
    if "variants" in args.only:
        await timed("variants", variants())
    if "multiturn" in args.only:
        await timed("multiturn", multiturn_section(models, llm_cfg, log))
    if "loop" in args.only:
        await timed("loop", shared_cpu_section(models, image_cfg, log))
    if "image" in args.only:
        await timed("image", image_section(models, image_cfg, log, notes))
    if "overhead" in args.only:
        chats = (1, 8) if not args.smoke else (1, 4)
        await timed("overhead", overhead_section(models, chats, llm_cfg.repeats, llm_cfg.new_tokens, llm_cfg.kv_cache_gb, log))
    if "platform" in args.only:
        from ovbot.models.tiny import build_tiny_models

        tiny = build_tiny_models(args.tiny_dir or tiny_models_root())  # cached after the first build
        platform_cfg = smoke_platform_config() if args.smoke else PlatformConfig()
        await timed("platform", platform_section(models, tiny.llm, tiny.image, platform_cfg, log))
    if "discord" in args.only:
        from ovbot.models.tiny import build_tiny_models

        tiny = build_tiny_models(args.tiny_dir or tiny_models_root())  # the bursts run on the tiny models
        ack_cfg = smoke_ack_config() if args.smoke else AckConfig()
        await timed("discord", discord_ack_section(tiny.llm, tiny.image, ack_cfg, log))
    if "load" in args.only:
        from ovbot.models.tiny import build_tiny_models

        tiny = build_tiny_models(args.tiny_dir or tiny_models_root())  # the load runs on the tiny models
        await timed("load", load_section(tiny, smoke_load_config() if args.smoke else LoadConfig(), log))
    if "levers" in args.only:
        lever_cfg = smoke_lever_config() if args.smoke else LeverConfig()
        if args.repeats is not None:
            lever_cfg = replace(lever_cfg, rounds=args.repeats)
        if args.new_tokens is not None:
            lever_cfg = replace(lever_cfg, new_tokens=args.new_tokens)
        text = asyncio.to_thread(levers_section, models.main_llm, lever_cfg, log, models.tiny)
        await timed("levers", _no_targets(text))
    if "reasoning" in args.only:
        reasoning_cfg = smoke_reasoning_config() if args.smoke else ReasoningConfig(kv_cache_gb=llm_cfg.kv_cache_gb)
        if args.repeats is not None:
            reasoning_cfg = replace(reasoning_cfg, repeats=args.repeats)
        await timed("reasoning", reasoning_section(models, reasoning_cfg, log))

    total = time.perf_counter() - started
    machine = machine_description()
    header = [
        "# ovbot benchmark results" + (" (smoke mode: tiny models, numbers mean nothing)" if args.smoke else ""),
        "",
        f"Date: {stamp:%Y-%m-%d %H:%M %Z}. Command: `{getattr(args, 'command', 'python -m bench')}`.",
        "",
        table(["machine", ""], [[k, v] for k, v in machine.items()], "ll"),
        "",
        f"Models: {model_summary}.",
        "",
        f"Run time: {total:.0f} s ({', '.join(timings)}). The machine is shared and noisy: compare "
        "figures within one run (ratios are taken between runs of the same section).",
        "",
        "## Targets",
        "",
        targets_table(targets) if targets else "(no target measured in this run)",
    ]
    body = header + ["", *[part for section in sections for part in (section, "")]]
    if notes:
        body += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(body)


async def _no_targets(text: Awaitable[str]) -> tuple[str, list[Target]]:
    return await text, []


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = asyncio.run(run(args, log))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    latest = args.latest
    if latest is None and not args.no_latest and not args.smoke and set(args.only) == set(SECTIONS):
        latest = LATEST
    own_runs = {name: title for name, title in OWN_RUN_TITLES.items() if name in args.only}
    if latest is not None:
        previous = latest.read_text(encoding="utf-8") if latest.exists() else ""
        latest.write_text(report + "\n", encoding="utf-8")
        for name, title in OWN_RUN_TITLES.items():  # these sections have runs of their own
            kept = section_of(previous, title)
            if kept is not None and name not in args.only:
                update_section(latest, kept, title)
        log(f"wrote {latest}")
    elif not args.no_latest and not args.smoke and own_runs:
        for name, title in own_runs.items():
            update_section(LATEST, report, title)
            log(f"updated the {name} section of {LATEST}")


def section_of(report: str, title: str) -> str | None:
    """The section that starts with the heading ``title``, up to the next heading of
    its level or above (None when the report has none)."""
    lines = report.splitlines()
    if title not in lines:
        return None
    start = lines.index(title)
    level = len(title) - len(title.lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines))
         if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level),
        len(lines),
    )
    return "\n".join(lines[start:end]).rstrip()


def update_section(path: Path, report: str, title: str) -> None:
    """Put the report's ``title`` section (with its date) into ``path`` in place of
    the one there, or before the notes: a run of one section leaves the others alone."""
    section = section_of(report, title)
    if section is None:
        return
    date = next((line for line in report.splitlines() if line.startswith("Date: ")), None)
    if date is not None:  # a whole report: say when this section ran
        section += f"\n\n(A run of its own. {date})"
    current = path.read_text(encoding="utf-8") if path.exists() else "# ovbot benchmark results\n"
    old = section_of(current, title)
    if old is not None:
        updated = current.replace(old, section)
    elif "\n## Notes\n" in current:
        updated = current.replace("\n## Notes\n", f"\n{section}\n\n## Notes\n", 1)
    else:
        updated = current.rstrip() + f"\n\n{section}\n"
    path.write_text(updated, encoding="utf-8")


if __name__ == "__main__":
    main()
