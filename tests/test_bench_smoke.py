"""bench/ scripts run in a seconds-long smoke mode on the tiny models, so they cannot rot."""

from __future__ import annotations

import re

from bench.engine_bench import bench, parse_args


def table_rows(report: str, header_start: str) -> list[list[str]]:
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


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
