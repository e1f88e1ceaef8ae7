"""bench/ scripts run in a seconds-long smoke mode on tiny models, so they cannot rot."""

from __future__ import annotations

import re

from bench.common import ChatRun
from bench.engine_bench import bench, parse_args

NUMBER = re.compile(r"-?\d+(\.\d+)?(x|%| ms| s)?")
#: a ratio over interleaved repeats: median (min-max), n=repeats
SPREAD = re.compile(r"(\d+\.\d\d)x \((\d+\.\d\d)-(\d+\.\d\d)\), n=(\d+)")
#: cells that are not numbers but are allowed: skipped peers, verdicts, free text columns
WORDS = {"n/a", "-", "met", "MISSED", "skipped"}
FREE_TEXT_COLUMNS = {"rejection reasons"}


def table_rows(report: str, header_start: str) -> list[list[str]]:
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def tables(report: str) -> list[tuple[list[str], str, list[list[str]]]]:
    """Every markdown table in the report: (header cells, separator line, rows)."""
    lines = report.splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            header = [cell.strip() for cell in lines[i].strip("|").split("|")]
            separator = lines[i + 1]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([cell.strip() for cell in lines[i].strip("|").split("|")])
                i += 1
            found.append((header, separator, rows))
        else:
            i += 1
    return found


def is_value(cell: str) -> bool:
    return bool(NUMBER.fullmatch(cell) or SPREAD.fullmatch(cell)) or cell in WORDS or cell.startswith((">= ", "best variant"))


async def test_engine_bench_smoke(tiny_models) -> None:
    args = parse_args(
        [
            "--llm-dir", str(tiny_models.llm), "--image-dir", str(tiny_models.image),
            "--concurrency", "1,4", "--new-tokens", "16", "--repeats", "1",
            "--image-size", "64x64", "--image-steps", "3", "--kv-cache-gb", "1",
        ]
    )
    report = await bench(args)
    chats = table_rows(report, "| chats |")
    assert [row[0] for row in chats] == ["1", "4"]
    for row in chats:
        assert len(row) == 6
        assert float(row[1]) > 0 and re.fullmatch(r"\d+\.\d\dx", row[2])
    lag = table_rows(report, "| load |")
    assert lag[0][0] == "4 chats + 1 image" and int(lag[0][1]) > 0
    assert all(float(cell) >= 0 for cell in lag[0][2:])


async def test_bench_command_smoke(tiny_models, tmp_path) -> None:
    """``python -m bench --smoke``: every section runs on the tiny models and every
    table is well-formed (header, separator, rows of the header's width whose cells
    after the label column are numbers, verdicts or n/a for skipped peers)."""
    from bench.__main__ import LATEST, SECTIONS, parse_args as bench_args, run

    latest_before = LATEST.read_bytes() if LATEST.exists() else None
    args = bench_args(["--smoke", "--tiny-dir", str(tiny_models.llm.parent), "--out", str(tmp_path / "r.md")])
    report = await run(args, log=lambda message: None)

    assert report.startswith("# ovbot benchmark results")
    assert "| OpenVINO |" in report and "| cores |" in report and "Date: " in report
    for title in ("### LLM table", "### Single stream", "### Model variant table", "### Multi-turn table",
                  "### Chat TTFT while an image", "### Event-loop table", "### Image table", "### Platform table",
                  "### Reasoning table"):
        assert title in report, title
    found = tables(report)
    assert len(found) >= 10
    for header, separator, rows in found:
        assert len(separator.strip("|").split("|")) == len(header)
        assert rows, header
        for row in rows:
            assert len(row) == len(header), (header, row)
            if header[0] in ("machine", "target"):
                continue
            values = [cell for name, cell in zip(header, row) if name not in FREE_TEXT_COLUMNS]
            assert all(is_value(cell) for cell in values[2 if header[1] == "engine" else 1 :]), (header, row)

    llm = next(rows for header, _, rows in found if header[:2] == ["chats", "engine"])
    assert sorted({int(row[0]) for row in llm}) == [1, 2, 4, 8, 16]
    for row in llm:
        if row[1].startswith(("(a)", "(b)", "(c)")):  # OpenVINO engines always run
            assert float(row[2]) > 0 and float(row[3]) >= 0, row
    ratios = next(rows for header, _, rows in found if header[0] == "chats" and "(a)/(b) overhead" in header)
    # smoke: 2 repeats of every engine at the headline rows (1 and 8 chats), 1 elsewhere
    for row in ratios:
        wanted = "2" if row[0] in ("1", "8") else "1"
        assert all(SPREAD.fullmatch(row[i]).group(4) == wanted for i in (1, 3, 7)), row
        assert row[5] == "n/a", row  # no llama.cpp in smoke mode
    assert "(d) llama.cpp skipped" in report
    llm_targets = {row[0]: row for header, _, rows in found if header[0] == "target" for row in rows}
    for name in ("(a)/(c) at 1 chat, aggregate tok/s", "(a)/(c) at 8 chats, aggregate tok/s", "(a) TTFT p95 at 8 chats"):
        assert SPREAD.fullmatch(llm_targets[name][2].replace(" s (", "x (")), llm_targets[name]
    assert llm_targets["(a)/(d) at 8 chats, aggregate tok/s"][2:] == ["n/a", "n/a"]
    lag = next(rows for header, _, rows in found if header[0] == "load")
    assert any(row[0].startswith("8 chats + 1 image") and int(row[1]) > 0 for row in lag)
    turns = next(rows for header, _, rows in found if header[0] == "turn")
    assert [row[0] for row in turns][:4] == ["turn 1", "turn 2", "turn 5", "turn 10"]
    assert (tmp_path / "r.md").exists() is False  # run() returns the report; main() writes it
    assert set(args.only) == set(SECTIONS)
    assert (LATEST.read_bytes() if LATEST.exists() else None) == latest_before  # smoke never touches it


async def test_bench_overhead_section_smoke(tiny_models) -> None:
    """The optional interleaved overhead breakdown (queue vs worker vs raw pipeline)."""
    from bench.__main__ import parse_args as bench_args, run

    args = bench_args(["--smoke", "--tiny-dir", str(tiny_models.llm.parent), "--only", "overhead"])
    report = await run(args, log=lambda message: None)
    found = tables(report)
    rows = next(rows for header, _, rows in found if header[:2] == ["chats", "path"])
    assert [row[0] for row in rows] == ["1", "1", "1", "4", "4", "4"]
    assert all(float(row[2]) > 0 and row[4].endswith("x") for row in rows)


async def test_bench_levers_section_smoke(tiny_models) -> None:
    """The lever table: every kind of lever (scheduler, compile property, LLMPipeline)
    loads through the worker's own loader in a process of its own and is measured."""
    from bench.__main__ import parse_args as bench_args, run

    args = bench_args(["--smoke", "--tiny-dir", str(tiny_models.llm.parent), "--only", "levers"])
    report = await run(args, log=lambda message: None)
    rows = next(rows for header, _, rows in tables(report) if header[:2] == ["lever", "setting"])
    assert [row[0] for row in rows] == ["default", "batched-128", "dq-32", "llm-pipeline-sdpa-dq128"]
    assert all(float(row[2].split()[0]) > 0 and float(row[9]) > 50 for row in rows)  # tok/s, peak RSS MB
    assert rows[0][2].endswith("n=2")  # the default opens and closes the round
    assert all(row[3].endswith("n=1") for row in rows[1:])  # each lever over its round's defaults
    assert rows[3][5] == "n/a"  # LLMPipeline serves one at a time: no 8-chat figure
    errors = next(rows for header, _, rows in tables(report) if header[0] == "setting")
    assert len(errors) == 5 and all(0 <= float(row[1].rstrip("%")) < 100 for row in errors)


async def test_bench_platform_section_smoke(tiny_models) -> None:
    """The platform table on the tiny models: overhead split adds up, every turn of the
    concurrent sessions is accounted for (none lost), the capped queue rejects with a
    reason, ``ovbot serve`` becomes ready three times, RSS is measured."""
    from bench.models import tiny_bench_models
    from bench.platform import platform_section, smoke_platform_config

    cfg = smoke_platform_config()
    report, targets = await platform_section(
        tiny_bench_models(tiny_models.llm, tiny_models.image), tiny_models.llm, tiny_models.image, cfg, lambda m: None
    )
    found = {header[0]: rows for header, _, rows in tables(report)}
    overhead = {row[0]: [float(cell) for cell in row[1:]] for row in found["ms per turn"]}
    assert overhead["overhead (end-to-end minus engine)"][0] > 0
    assert overhead["engine (LLM call)"][0] > 0
    assert overhead["end-to-end (client)"][2] >= overhead["engine (LLM call)"][0]

    runs = {row[0]: row for row in found["run"]}
    turns = cfg.sessions * cfg.turns_per_session
    for row in runs.values():
        assert int(row[2]) == turns and int(row[5]) == 0, row  # nothing lost
        assert int(row[3]) + int(row[4]) == turns, row  # every turn completed or rejected
    capped = runs[f"queue capped at {cfg.capped_queue}"]
    assert int(capped[4]) > 0 and "queue_full" in capped[10], capped
    assert int(runs["default settings"][3]) == turns

    starts = found["start"]
    assert [row[0].split(",")[1].strip() for row in starts] == [
        "no compile cache (default)", "empty compile cache (cold)", "filled compile cache (warm)"
    ]
    assert all(float(row[1]) > 0 for row in starts)
    rss = {row[0]: float(row[1]) for row in found["RSS"]}
    assert 0 < rss["after start (ready)"] <= rss["peak, sampled sum"]
    assert {t.name: t.ok for t in targets}[f"lost turns at {cfg.sessions} HTTP sessions"] is True


async def test_bench_discord_section_smoke(tiny_models, monkeypatch) -> None:
    """The Discord acknowledgement table on the tiny models: every interaction of the
    burst is counted, acknowledged and finished, and the 3 s target is reported."""
    from bench.discord_ack import discord_ack_section, smoke_ack_config

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cfg = smoke_ack_config()
    report, targets = await discord_ack_section(tiny_models.llm, tiny_models.image, cfg, lambda m: None)
    found = {header[0]: (header, rows) for header, _, rows in tables(report)}
    header, rows = found["burst"]
    assert all(is_value(cell) for row in rows for cell in row[1:]), rows
    (interactions, _users), = cfg.bursts
    row = dict(zip(header, rows[0]))
    assert int(row["sent"]) == int(row["acknowledged"]) == int(row["replies finished"]) == interactions
    assert 0 < float(row["ack p50 ms"]) <= float(row["ack p95 ms"]) <= float(row["ack max ms"])
    assert [t.name for t in targets] == ["Discord interactions acknowledged within 3 s"]
    assert targets[0].ok is (int(row["past 3 s"]) == 0)


def chat_run(tokens_per_s: float, ttft: float = 0.5) -> ChatRun:
    return ChatRun("engine", 1, tokens=round(tokens_per_s * 10), wall_s=10.0, ttfts=[ttft], ends=[10.0])


def test_pairwise_ratio_is_the_median_of_per_repeat_ratios() -> None:
    """Each ratio is taken within a repeat, then summarised: with these runs the ratio of
    the medians (20/15 = 1.33x for three repeats, 25/12.5 = 2x for four) differs from the
    median of the pairwise ratios (1x, then 1.5x), so computing from medians fails here."""
    from bench.common import pairwise_ratio, spread_text

    repeats = [{"a": chat_run(a), "c": chat_run(c)} for a, c in ((10, 10), (20, 40), (30, 15))]
    odd = pairwise_ratio(repeats, "a", "c")
    assert odd is not None
    assert (odd.median, odd.low, odd.high, odd.count) == (1.0, 0.5, 2.0, 3)
    assert spread_text(odd) == "1.00x (0.50-2.00), n=3"

    even = pairwise_ratio(repeats + [{"a": chat_run(40), "c": chat_run(10)}], "a", "c")
    assert even is not None and (even.median, even.low, even.high, even.count) == (1.5, 0.5, 4.0, 4)

    # a repeat missing an engine, or whose denominator measured nothing, is left out
    gappy = repeats + [{"a": chat_run(99)}, {"a": chat_run(50), "c": chat_run(0)}]
    assert pairwise_ratio(gappy, "a", "c") == odd
    assert pairwise_ratio(repeats, "a", "d") is None  # llama.cpp never ran
    assert spread_text(pairwise_ratio(repeats, "a", "d")) == "n/a"
    # the metric is chosen per ratio (single stream: decode tok/s instead of aggregate)
    same_rate = [{"a": chat_run(10, ttft=2.0), "c": chat_run(10, ttft=1.0)}]
    assert pairwise_ratio(same_rate, "a", "c").median == 1.0
    assert pairwise_ratio(same_rate, "a", "c", lambda run: run.ttfts[0]).median == 2.0


def test_llm_targets_judge_the_median_and_show_the_spread() -> None:
    """A target is met by its median even when one repeat falls short, and missed when
    the median does, with the spread written beside it."""
    from bench.llm import LLMResults, llm_targets

    results = LLMResults()
    results.repeats[8] = [
        {"a": chat_run(a, ttft), "b": chat_run(b), "c": chat_run(10)}
        for a, b, ttft in ((30, 33, 0.5), (36, 40, 2.9), (37, 38, 0.6))
    ]
    found = {t.name: t for t in llm_targets(results)}
    one_at_a_time = found["(a)/(c) at 8 chats, aggregate tok/s"]
    assert (one_at_a_time.wanted, one_at_a_time.measured, one_at_a_time.ok) == (">= 3.5x", "3.60x (3.00-3.70), n=3", True)
    overhead = found["(a)/(b) at 8 chats, aggregate tok/s"]
    # 30/33, 36/40, 37/38: the best repeat passes 0.95, the median does not
    assert (overhead.measured, overhead.ok) == ("0.91x (0.90-0.97), n=3", False)
    assert found["(a)/(d) at 8 chats, aggregate tok/s"].ok is None  # no llama.cpp: n/a, not a verdict
    assert found["(a)/(d) at 8 chats, aggregate tok/s"].measured == "n/a"
    assert found["(a) TTFT p95 at 8 chats"].measured == "0.60 s (0.50-2.90), n=3"
    assert "(a)/(c) at 1 chat, aggregate tok/s" not in found  # no 1-chat row measured


async def test_llm_section_ratios_are_pairwise_on_tiny_models(tiny_models) -> None:
    """The LLM section on the tiny model: every engine (one-at-a-time included) runs in
    every headline repeat on that repeat's messages, the others once, and each ratio cell
    is the median (min-max) of the ratios taken within those repeats."""
    import statistics

    from bench.__main__ import smoke_configs
    from bench.llm import llm_section
    from bench.models import tiny_bench_models

    cfg, _ = smoke_configs()
    text, results = await llm_section(tiny_bench_models(tiny_models.llm, tiny_models.image), cfg, lambda m: None)

    for n in cfg.concurrency:
        repeats = results.repeats[n]
        assert len(repeats) == (cfg.headline_repeats if n in cfg.headline else cfg.repeats)
        assert all(set(runs) == {"a", "b", "c"} for runs in repeats)  # no llama.cpp in smoke mode
        assert all(runs["c"].concurrency == n and len(runs["c"].ends) == n for runs in repeats)
        assert all(runs["c"].ends == sorted(runs["c"].ends) for runs in repeats)  # one after another
    assert "(d) llama.cpp skipped" in text and "d" not in results.runs

    ratios = {row[0]: row for header, _, rows in tables(text) if "(a)/(c) advantage" in header for row in rows}
    for n in cfg.concurrency:
        repeats = results.repeats[n]
        for column, top, bottom in ((1, "a", "b"), (3, "a", "c"), (7, "b", "c")):
            values = [runs[top].tokens_per_s / runs[bottom].tokens_per_s for runs in repeats]
            median, low, high, count = SPREAD.fullmatch(ratios[str(n)][column]).groups()
            assert float(median) == round(statistics.median(values), 2), (n, column)
            assert (float(low), float(high), int(count)) == (round(min(values), 2), round(max(values), 2), len(values))
    assert "taken pairwise within a repeat" in text
