"""200 people at once on HTTP, Telegram and Discord against one ``ovbot serve`` process:
every turn is answered once or refused with a reason and a retry time, nothing is lost
or shown twice, and the process still serves afterwards.

The driver is the bench's (``bench/load.py``, ``python -m bench --only load`` prints the
figures): ``ovbot serve`` as a subprocess on the tiny models with the real
python-telegram-bot and discord.py clients against the fakes, a real SQLite file read
after the run. This test asserts the accounting, never latency or memory.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import section_of, update_section
from bench.load import (
    PLATFORMS,
    TITLE,
    ChatTally,
    LoadConfig,
    LoadResult,
    StoredChat,
    TurnRecord,
    classify_chat_reply,
    is_burst,
    platform_of,
    render,
    run_load,
)
from tests.test_bench_smoke import tables

CFG = LoadConfig(sessions=200, turns_per_session=2, burst_every=10, burst_size=7, max_new_tokens=12)


async def test_200_sessions_on_three_platforms_lose_nothing_and_refuse_with_reasons(
    tiny_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    result = await run_load(tiny_models, tmp_path, CFG, log=lambda line: None)

    # every session ran on its platform and every message it sent has an outcome
    sessions = Counter(platform_of(s) for s in range(CFG.sessions))
    assert sessions == {"http": 67, "telegram": 67, "discord": 66}
    expected = sum(CFG.burst_size if is_burst(s, CFG) else CFG.turns_per_session for s in range(CFG.sessions))
    assert len(result.turns) == expected
    outcomes = Counter(t.outcome for t in result.turns)
    unexpected = [t for t in result.turns if t.outcome not in ("answered", "refused")]
    assert not unexpected, f"{outcomes}: {unexpected[:5]}"

    for platform in PLATFORMS:
        assert result.lost(platform) == 0, platform
        assert result.duplicated(platform) == 0, platform
        assert result.failed_jobs(platform) == 0, platform
        answered = sum(t.outcome == "answered" for t in result.of(platform))
        stored = sum(s.answers for s in result.stored_of(platform))
        done = sum(s.done_jobs for s in result.stored_of(platform))
        assert answered == stored == done > 0, platform  # one stored answer per answer seen

    # the per-user bound refuses part of every burst by design; each refusal says why
    # and when to try again (checked where it was classified: a reason before a retry time)
    refused = [t for t in result.turns if t.outcome == "refused"]
    assert refused and all(t.reason for t in refused)
    assert any(t.burst for t in refused)
    steady = [t for t in result.turns if not t.burst and t.outcome == "answered"]
    assert steady and all(t.final_s is not None and t.first_s is not None for t in steady)

    # under this load the clients keep the platforms' rules too (Telegram: ~30 calls a
    # second overall, ~1 a second per chat; Discord: mentions off, nothing unknown)
    assert result.violations == []
    assert result.serving_after, "ovbot did not answer a new turn after the load"
    assert result.exit_code == 0
    assert result.processes >= 2 and result.rss_peak_mb > 0  # the engine worker was measured too

    # the bench's table shows the same accounting
    rows = {row[0]: row for header, _, rows in tables(render(result)) if header[0] == "platform" for row in rows}
    assert set(rows) == set(PLATFORMS)
    for platform, row in rows.items():
        assert int(row[2]) == len(result.of(platform)) == int(row[3]) + int(row[4])  # answered + refused
        assert row[5:8] == ["0", "0", "0"], row  # lost, duplicated, failed


# ---------------------------------------------------------------- the checks can fail


def _result(turns: list[TurnRecord], chats: list[ChatTally], stored: dict[tuple[str, str], StoredChat]) -> LoadResult:
    return LoadResult(CFG, turns, chats, stored, 1.0, 1.0, 1.0, 1.0, 1.0, 2, [], [], True, 0)


def test_an_accepted_turn_whose_answer_never_showed_is_lost_and_a_second_copy_is_duplicated() -> None:
    answered = TurnRecord("telegram", 1, False, 0.0, outcome="answered")
    unanswered = TurnRecord("telegram", 2, False, 0.0)  # no reply at all
    stored = {
        ("telegram", "1"): StoredChat(done_jobs=2, answers=2),  # two answers stored, one shown
        ("telegram", "2"): StoredChat(other_jobs=Counter(queued=1)),  # still waiting
        ("discord", "3"): StoredChat(done_jobs=1, answers=1),
    }
    chats = [
        ChatTally("telegram", 1, "1", answers_seen=1),
        ChatTally("telegram", 2, "2"),
        ChatTally("discord", 3, "3", answers_seen=1, duplicates_seen=1),
    ]
    result = _result([answered, unanswered], chats, stored)
    assert result.lost("telegram") == 3  # no reply, an answer not shown, a job left queued
    assert result.duplicated("discord") == 1 and result.duplicated("telegram") == 0
    failed = _result([], [ChatTally("http", 4, "u")], {("http", "u"): StoredChat(other_jobs=Counter(failed=1))})
    assert failed.failed_jobs("http") == 1 and failed.lost("http") == 0


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("⏳ You already have 5 requests waiting. Please try again in ~3 s.", "refused"),
        ("⏳ The bot is busy. Please try again in ~12 s.", "refused"),
        ("⏳ You reached your limit of 30 messages per hour. Try again in 14 min.", "refused"),
        ("⏳ The bot is busy.", "bad_refusal"),  # no retry time
        ("⏳ Please try again in ~3 s.", "bad_refusal"),  # no reason
        ("⚠️ Something went wrong on the bot's side; it has been logged. Please try again.", "failed"),
        ("The river Nile flows north.", "answered"),
    ],
)
def test_a_chat_reply_is_classified_and_a_refusal_needs_a_reason_and_a_retry_time(text: str, outcome: str) -> None:
    assert classify_chat_reply(text)[0] == outcome


def test_a_load_run_updates_only_its_section_of_the_latest_results(tmp_path: Path) -> None:
    latest = tmp_path / "LATEST.md"
    other = "# ovbot benchmark results\n\n### Platform table\n\n| a | b |\n|---|---:|\n| x | 1 |\n"
    latest.write_text(other, encoding="utf-8")
    report = "# ovbot benchmark results\n\nDate: 2026-12-01 12:00 UTC. Command: `python -m bench --only load`.\n\n"
    update_section(latest, report + f"{TITLE}\n\nfirst run\n", TITLE)
    update_section(latest, report + f"{TITLE}\n\nsecond run\n\n## Notes\n\n- a note\n", TITLE)
    text = latest.read_text(encoding="utf-8")
    assert text.startswith(other)  # the other sections as they were
    load = section_of(text, TITLE)
    assert load is not None and "second run" in load and "first run" not in load and "a note" not in load
    assert load.endswith("(A run of its own. Date: 2026-12-01 12:00 UTC. Command: `python -m bench --only load`.)")
