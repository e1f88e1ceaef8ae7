"""HOOK(platform table): the platform table of issue 5 is not measured yet.

It needs the HTTP API (adapters/http) that is being finished in parallel. When it lands,
implement ``platform_section`` here (tiny models): HTTP turn overhead (end-to-end minus
engine time) p50/p99; 200 concurrent HTTP sessions x several turns: completed,
rejected-with-reason, lost (must be 0), p95 latency; start-to-ready time cold and warm
(compiled-model cache); peak RSS with both real-shape models loaded. Targets: HTTP
overhead p99 <= 5 ms, 0 lost turns at 200 sessions. Return ``(markdown, targets)`` like
the other sections; ``python -m bench --only platform`` already calls it.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Target
from bench.models import BenchModels

PENDING = "not measured yet (needs the HTTP API; see bench/platform.py)"


async def platform_section(models: BenchModels, log: Callable[[str], None]) -> tuple[str, list[Target]]:
    log("  platform table: pending (HTTP API not wired into the bench yet)")
    text = "\n\n".join([
        "### Platform table",
        f"Pending: {PENDING}. It will report HTTP turn overhead p50/p99, 200 concurrent sessions "
        "(completed / rejected with reason / lost / p95 latency), start-to-ready cold and warm, and "
        "peak RSS with both real-shape models loaded.",
    ])
    targets = [
        Target("HTTP overhead p99", "<= 5 ms", PENDING, None),
        Target("lost turns at 200 HTTP sessions", "0", PENDING, None),
    ]
    return text, targets
