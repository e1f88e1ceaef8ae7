"""Image and shared-CPU benchmarks: the image table (ovbot's engine vs diffusers on the
same weights, fp16 and INT8), chat TTFT idle vs while an image runs, and the bot event
loop's lag while 8 chats and one image run."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import NA, SYSTEM, Target, Workload, fmt, median, percentile, ratio, table, user_message, verdict
from bench.harness import BotHarness, gather_chats, worker_config
from bench.models import IMAGE_VARIANTS, BenchModels

PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light, detailed"


@dataclass
class ImageConfig:
    size: tuple[int, int] = (512, 512)
    short_steps: int = 1
    long_steps: int = 3
    repeats: int = 2
    diffusers_repeats: int = 1
    cfg: float = 7.5
    threads: int = 2
    probe_tokens: int = 8
    probes: int = 3
    lag_chats: int = 8
    lag_tokens: int = 128
    lag_image_steps: int = 3
    contrast_tokens: int = 32
    kv_cache_gb: int = 2


@dataclass
class ImageTiming:
    """Per-step time from two image lengths (independent of how a scheduler counts
    callbacks): (T(long) - T(short)) / (long - short)."""

    name: str
    load_s: float
    short_s: list[float]
    long_s: list[float]
    short_steps: int
    long_steps: int
    notes: list[str] = field(default_factory=list)

    @property
    def per_step_s(self) -> float:
        return (median(self.long_s) - median(self.short_s)) / (self.long_steps - self.short_steps)

    @property
    def per_image_s(self) -> float:
        return median(self.long_s)

    def extrapolate(self, steps: int) -> float:
        return median(self.short_s) + (steps - self.short_steps) * self.per_step_s


def _payload(cfg: ImageConfig, steps: int, seed: int) -> dict[str, Any]:
    width, height = cfg.size
    return {"prompt": PROMPT, "width": width, "height": height, "steps": steps, "cfg": cfg.cfg, "seed": seed}


async def ovbot_image_timing(name: str, image_dir: Path, cfg: ImageConfig, log: Callable[[str], None]) -> ImageTiming:
    async with BotHarness(worker_config(None, image_dir, image_size=cfg.size, kv_cache_gb=cfg.kv_cache_gb)) as harness:
        await harness.image(_payload(cfg, cfg.short_steps, 99))  # warm-up
        short, long = [], []
        for r in range(cfg.repeats):
            short.append((await harness.image(_payload(cfg, cfg.short_steps, r)))[0])
            long.append((await harness.image(_payload(cfg, cfg.long_steps, r)))[0])
        timing = ImageTiming(name, harness.load_s, short, long, cfg.short_steps, cfg.long_steps)
    log(f"  image {name}: {timing.per_step_s:.2f} s/step, {timing.per_image_s:.1f} s/image")
    return timing


def diffusers_timing(checkpoint: Path, cfg: ImageConfig, log: Callable[[str], None]) -> ImageTiming:
    """diffusers StableDiffusionPipeline (torch fp32, CPU) in a child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    width, height = cfg.size
    command = [
        sys.executable, "-m", "bench.diffusers_peer", str(checkpoint), "--width", str(width), "--height", str(height),
        "--short", str(cfg.short_steps), "--long", str(cfg.long_steps), "--repeats", str(cfg.diffusers_repeats),
        "--cfg", str(cfg.cfg), "--threads", str(cfg.threads),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("diffusers baseline failed:\n" + "\n".join(done.stderr.splitlines()[-15:]))
    data = json.loads(done.stdout.strip().splitlines()[-1])
    timing = ImageTiming("diffusers", data["load_s"], data["short_s"], data["long_s"], cfg.short_steps, cfg.long_steps)
    log(f"  image diffusers: {timing.per_step_s:.2f} s/step, {timing.per_image_s:.1f} s/image")
    return timing


def image_table(timings: list[ImageTiming], baseline: ImageTiming | None, cfg: ImageConfig, tiny: bool) -> tuple[str, list[Target]]:
    rows = []
    targets: list[Target] = []
    speedups = {t.name: baseline.per_step_s / t.per_step_s for t in timings if baseline and t.per_step_s > 0}
    best_name = max(speedups, key=lambda name: speedups[name]) if speedups else None
    for timing in timings:
        speedup = speedups.get(timing.name)
        marks = []
        if timing.name == "sd-fp16":
            marks.append(f">= 2.4x: {verdict(None if speedup is None else speedup >= 2.4)}")
            targets.append(Target("image (fp16) vs diffusers, per step", ">= 2.4x", fmt(speedup, 2, "x"),
                                  None if speedup is None else speedup >= 2.4))
        if timing.name == best_name and speedup is not None:
            marks.append(f"best variant >= 3x: {verdict(speedup >= 3.0)}")
            targets.append(Target(f"image (best variant, {timing.name}) vs diffusers, per step", ">= 3x",
                                  fmt(speedup, 2, "x"), speedup >= 3.0))
        rows.append([
            f"ovbot engine, {timing.name} ({IMAGE_VARIANTS.get(timing.name, ('', timing.name))[1]})",
            fmt(timing.load_s, 1), fmt(timing.per_step_s, 2), fmt(timing.per_image_s, 1),
            fmt(timing.extrapolate(20), 0), fmt(speedup, 2, "x"), "; ".join(marks) or "-",
        ])
    if baseline is not None:
        rows.append([
            "diffusers StableDiffusionPipeline, torch fp32 CPU", fmt(baseline.load_s, 1), fmt(baseline.per_step_s, 2),
            fmt(baseline.per_image_s, 1), fmt(baseline.extrapolate(20), 0), "1.00x", "-",
        ])
    else:
        rows.append(["diffusers StableDiffusionPipeline, torch fp32 CPU", NA, NA, NA, NA, NA, "skipped"])
    width, height = cfg.size
    intro = (
        f"{width}x{height}, CFG {cfg.cfg:g}, PNDM scheduler, {cfg.threads} threads for torch. Seconds per step = "
        f"(T({cfg.long_steps} steps) - T({cfg.short_steps} step)) / {cfg.long_steps - cfg.short_steps} (UNet with CFG, "
        f"independent of how callbacks are counted); seconds per image = a {cfg.long_steps}-step image end to end "
        f"(text encoder + steps + VAE decode; ovbot's through the job queue, PNG included). Medians of {cfg.repeats} "
        f"(ovbot) / {cfg.diffusers_repeats} (diffusers) runs after a warm-up image."
    )
    title = "### Image table (real-shape SD1.5)" if not tiny else "### Image table (tiny model, smoke mode)"
    return "\n\n".join([title, intro, table(
        ["engine", "load s", "s/step", f"s/image ({cfg.long_steps} steps)", "s/image (20 steps, est.)",
         "speed-up per step vs diffusers", "target"], rows,
    )]), targets


async def image_section(models: BenchModels, cfg: ImageConfig, log: Callable[[str], None], notes: list[str]) -> tuple[str, list[Target]]:
    timings = []
    for name, path in models.image.items():
        timings.append(await ovbot_image_timing(name, path, cfg, log))
    baseline = None
    if models.sd_checkpoint is not None:
        try:
            baseline = diffusers_timing(models.sd_checkpoint, cfg, log)
        except Exception as exc:  # optional peer
            notes.append(f"diffusers baseline failed: {str(exc).splitlines()[-1] if str(exc) else exc}")
            log(str(exc))
    else:
        notes.append("diffusers baseline skipped (no Hugging Face SD checkpoint: smoke mode)")
    return image_table(timings, baseline, cfg, models.tiny)


# --------------------------------------------------------------------------- loop lag + chat during image


class LagProbe:
    """Sleep 5 ms in a loop on the event loop; the overshoot of each sleep is the lag
    every adapter on this loop would feel."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lags.append(time.perf_counter() - before - 0.005)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return [lag * 1000 for lag in self.lags]


async def _probe_chat(harness: BotHarness, index: int, tokens: int) -> float:
    started = time.perf_counter()
    first, end, _ = await harness.chat([("system", SYSTEM), ("user", user_message(index))], tokens, started)
    return first if first is not None else end


async def shared_cpu_section(models: BenchModels, cfg: ImageConfig, log: Callable[[str], None]) -> tuple[str, list[Target]]:
    image_dir = models.main_image
    config = worker_config(models.main_llm, image_dir, image_size=cfg.size, kv_cache_gb=cfg.kv_cache_gb)
    lag_rows = []
    targets: list[Target] = []
    async with BotHarness(config) as harness:
        await _probe_chat(harness, 31000, 4)  # warm-up: system prompt cached, kernels compiled
        await harness.image(_payload(cfg, cfg.short_steps, 98))
        # ---- chat TTFT idle
        idle = [await _probe_chat(harness, 32000 + k, cfg.probe_tokens) for k in range(cfg.probes)]
        # ---- chat TTFT while an image job runs: each probe lands inside a denoising step
        step_seen = asyncio.Event()
        image_steps = cfg.probes + 3
        image_task = asyncio.create_task(
            harness.image(_payload(cfg, image_steps, 7), on_step=lambda step, total: step_seen.set())
        )
        during = []
        step_s = None
        for k in range(cfg.probes):
            step_seen.clear()
            await step_seen.wait()
            if step_s is None:  # time one undisturbed step to aim the probes at its middle
                began = time.perf_counter()
                step_seen.clear()
                await step_seen.wait()
                step_s = time.perf_counter() - began
            await asyncio.sleep(step_s * 0.4)
            if image_task.done():
                break
            during.append(await _probe_chat(harness, 33000 + k, cfg.probe_tokens))
        await image_task
        log(f"  chat TTFT idle {median(idle):.2f} s, during image {median(during) if during else float('nan'):.2f} s")
        # ---- loop lag
        probe = LagProbe()
        probe.start()
        await asyncio.sleep(2.0)
        lag_rows.append(_lag_row("idle (models loaded, nothing running)", await probe.stop(), None))
        probe = LagProbe()
        probe.start()
        workload = Workload(models.main_llm)
        await asyncio.gather(
            gather_chats(harness, workload.chats(cfg.lag_chats, 40000), cfg.lag_tokens),
            harness.image(_payload(cfg, cfg.lag_image_steps, 5)),
        )
        lags = await probe.stop()
        lag_rows.append(_lag_row(f"{cfg.lag_chats} chats + 1 image through ovbot (queue + worker process)", lags, True))
        targets.append(Target("loop lag p99 (8 chats + 1 image)", "<= 10 ms", f"{percentile(lags, 0.99):.2f} ms", percentile(lags, 0.99) <= 10.0))
        log(f"  loop lag p99 {percentile(lags, 0.99):.2f} ms")
    gc.collect()
    contrast = await raw_cb_thread_lag(models, cfg.lag_chats, cfg.contrast_tokens, cfg.kv_cache_gb)
    lag_rows.append(_lag_row(
        f"contrast: raw ContinuousBatchingPipeline stepped from a thread of the bot process, {cfg.lag_chats} chats",
        contrast, None,
    ))
    ttft_idle, ttft_during = median(idle), median(during) if during else None
    ok = None if ttft_during is None else ttft_during <= 1.5 * ttft_idle
    targets.append(Target("chat TTFT during an image job vs idle", "<= 1.5x", ratio(ttft_during, ttft_idle), ok))
    ttft_rows = [
        ["idle", fmt(ttft_idle, 2), fmt(max(idle), 2), "1.00x", "-"],
        ["while an image job runs", fmt(ttft_during, 2), fmt(max(during) if during else None, 2),
         ratio(ttft_during, ttft_idle), verdict(ok)],
    ]
    width, height = cfg.size
    ttft_intro = (
        f"ovbot with both models loaded (chat has priority: the image waits between denoising steps "
        f"while chats run). One chat at a time ({cfg.probe_tokens} new tokens, ~200-token prompt, system "
        f"prompt cached), submitted ~40% into a {width}x{height} UNet step; TTFT = submit to first text "
        f"event, median (and max) of {len(during)} probes."
    )
    lag_intro = (
        "Lag of the bot's asyncio loop (a 5 ms sleep's overshoot), measured in the bench process "
        "that runs the job queue, the SQLite store and LocalEngines' client, while the worker process "
        f"runs {cfg.lag_chats} chats ({cfg.lag_tokens} new tokens) and one {width}x{height} "
        f"{cfg.lag_image_steps}-step image."
    )
    text = "\n\n".join([
        "### Chat TTFT while an image is generated",
        ttft_intro,
        table(["chat", "TTFT p50 s", "TTFT max s", "vs idle", "target <= 1.5x"], ttft_rows),
        "### Event-loop table",
        lag_intro,
        table(["load", "samples", "lag p50 ms", "lag p99 ms", "lag max ms", "target p99 <= 10 ms"], lag_rows),
    ])
    return text, targets


def _lag_row(label: str, lags_ms: list[float], judged: bool | None) -> list[Any]:
    if not lags_ms:
        return [label, 0, NA, NA, NA, "-"]
    p99 = percentile(lags_ms, 0.99)
    return [
        label, len(lags_ms), f"{statistics.median(lags_ms):.2f}", f"{p99:.2f}", f"{max(lags_ms):.2f}",
        verdict(p99 <= 10.0) if judged else "-",
    ]


async def raw_cb_thread_lag(models: BenchModels, chats: int, new_tokens: int, kv_cache_gb: int) -> list[float]:
    """What ovbot's worker process avoids: ``step()`` holds the GIL, so stepping the
    pipeline from a thread of the bot's process stalls its event loop."""
    from bench.llm import RawCB, load_raw_cb

    pipe = await asyncio.to_thread(load_raw_cb, models.main_llm, max(chats, 2), kv_cache_gb)
    raw = RawCB(pipe)
    workload = Workload(models.main_llm)
    await asyncio.to_thread(raw.run, workload.chats(2, offset=90000), 4)
    probe = LagProbe()
    probe.start()
    done = threading.Event()
    await asyncio.to_thread(lambda: (raw.run(workload.chats(chats, 81000), new_tokens), done.set()))
    lags = await probe.stop()
    del raw, pipe
    gc.collect()
    return lags
