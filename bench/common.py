"""Shared parts of the benchmarks: the chat workload, statistics, markdown tables,
targets and the machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.engine_bench import SYSTEM, percentile, user_message

__all__ = ["SYSTEM", "percentile", "user_message"]

MET = "met"
MISSED = "MISSED"
NA = "n/a"


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Chat:
    """One chat request: text for ovbot's engine (which applies the template itself) and
    the identical token ids for the raw pipelines and llama.cpp."""

    system: str
    user: str
    ids: tuple[int, ...]


class Workload:
    """Prompts built with the model's own tokenizer and chat template, so every engine
    gets the same token ids."""

    def __init__(self, llm_dir: Path, system: str = SYSTEM) -> None:
        import openvino_genai as og

        self.tokenizer = og.Tokenizer(str(llm_dir))
        self.system = system
        self.system_tokens = self.count(system)

    def count(self, text: str) -> int:
        return int(self.tokenizer.encode(text, add_special_tokens=False).input_ids.get_shape()[-1])

    def prompt_ids(self, messages: Sequence[tuple[str, str]]) -> tuple[int, ...]:
        history = [{"role": role, "content": content} for role, content in messages]
        prompt = self.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        encoded = self.tokenizer.encode(prompt, add_special_tokens=False).input_ids
        return tuple(int(i) for i in encoded.data[0])

    def chat(self, index: int, system: str | None = None) -> Chat:
        system = self.system if system is None else system
        user = user_message(index)
        return Chat(system, user, self.prompt_ids([("system", system), ("user", user)]))

    def chats(self, count: int, offset: int) -> list[Chat]:
        return [self.chat(offset + i) for i in range(count)]


@dataclass
class ChatRun:
    """One run of ``concurrency`` chats submitted at the same moment."""

    engine: str
    concurrency: int
    tokens: int
    wall_s: float
    ttfts: list[float]
    prompt_tokens: list[int] = field(default_factory=list)
    #: per request: (ttft, end) seconds from the run's start
    ends: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Single-stream decode rate: tokens after the first over the time after it."""
        if self.concurrency != 1 or not self.ttfts:
            return 0.0
        decode = self.wall_s - self.ttfts[0]
        return (self.tokens - 1) / decode if decode > 0 and self.tokens > 1 else 0.0


def median_run(runs: Sequence[ChatRun]) -> ChatRun:
    """The run with the median aggregate throughput (an actual run, not a blend)."""
    ordered = sorted(runs, key=lambda run: run.tokens_per_s)
    return ordered[(len(ordered) - 1) // 2]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass(frozen=True)
class Spread:
    """Median and min-max of one figure over repeats: one run on a shared 2-core machine
    cannot tell a met target from a missed one, its spread over repeats can."""

    median: float
    low: float
    high: float
    count: int

    def text(self, digits: int = 2, suffix: str = "x") -> str:
        """``3.65x (3.21-3.90), n=5``"""
        return f"{self.median:.{digits}f}{suffix} ({self.low:.{digits}f}-{self.high:.{digits}f}), n={self.count}"


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def spread_text(found: Spread | None, digits: int = 2, suffix: str = "x") -> str:
    return NA if found is None else found.text(digits, suffix)


def pairwise_ratio(
    repeats: Sequence[Mapping[str, ChatRun]],
    top: str,
    bottom: str,
    metric: Callable[[ChatRun], float] = lambda run: run.tokens_per_s,
) -> Spread | None:
    """``top``/``bottom`` taken within each interleaved repeat, then summarised: both
    engines of a repeat ran back to back, so the machine's drift cancels in their ratio,
    while a ratio of two medians may pair a fast run of one with a slow run of the other.
    Repeats where either engine did not run (or measured nothing) are left out."""
    values = []
    for runs in repeats:
        upper, lower = runs.get(top), runs.get(bottom)
        if upper is None or lower is None or metric(lower) <= 0:
            continue
        values.append(metric(upper) / metric(lower))
    return spread(values)


# --------------------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one character per column ("l" or "r")."""
    align = align or "l" + "r" * (len(header) - 1)
    separator = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(separator) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return NA
    return f"{value:.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return NA
    return f"{a / b:.2f}x"


def verdict(ok: bool | None) -> str:
    return NA if ok is None else (MET if ok else MISSED)


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    ok: bool | None
    note: str = ""


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, str]:
    ram = _ram_gib()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": f"{ram:.1f} GiB" if ram else "unknown",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "OpenVINO": _version("openvino"),
        "OpenVINO GenAI": _version("openvino-genai"),
        "llama-cpp-python": _version("llama-cpp-python"),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
    }


def dir_size_mb(path: Path, pattern: str = "*.bin") -> float:
    return sum(p.stat().st_size for p in Path(path).rglob(pattern)) / 1e6


# --------------------------------------------------------------------------- noise


class NoiseMeter:
    """How much of the CPU processes outside this benchmark used during a section: the
    machine may be shared, and a figure taken while something else ran is worth less."""

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            import psutil
        except ImportError:
            return None
        try:
            fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
            values = [int(v) for v in fields]
            busy = (sum(values[:8]) - values[3] - values[4]) / ticks  # all but idle and iowait
            me = psutil.Process()
            times = me.cpu_times()
            own = times.user + times.system + times.children_user + times.children_system
            for child in me.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    own += child_times.user + child_times.system
                except psutil.Error:
                    pass
            return time.monotonic(), busy, own
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        self._start = self._sample()

    def other_share(self) -> float | None:
        """Share of all cores used by other processes since ``start`` (0..1)."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        elapsed = end[0] - self._start[0]
        if elapsed <= 0:
            return None
        other = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, other / (elapsed * (os.cpu_count() or 1)))
