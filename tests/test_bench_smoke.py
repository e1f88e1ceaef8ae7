"""bench/ scripts run in a seconds-long smoke mode on tiny models, so they cannot rot."""

from __future__ import annotations

import re

from bench.engine_bench import bench, parse_args

NUMBER = re.compile(r"-?\d+(\.\d+)?(x|%| ms| s)?")
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
    return bool(NUMBER.fullmatch(cell)) or cell in WORDS or cell.startswith((">= ", "best variant"))


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
    assert all(re.fullmatch(r"\d+\.\d\dx", row[1]) for row in ratios)
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
