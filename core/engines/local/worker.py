"""Entry point of the engine worker process.

The worker owns the chat pipeline; its main thread runs the chat loop (``step()`` holds
this process's GIL, harming nobody else) and one thread receives commands. Images run in
a child process at the lowest CPU priority (``image_process``) whose messages the worker
relays. Everything the parent needs comes back as protocol messages over the pipe; a
lock serialises sends from the threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ovbot.core.engines.local.protocol import (
    Cancel,
    Fatal,
    Ready,
    RequestFailed,
    Shutdown,
    Stats,
    StatsQuery,
    SubmitChat,
    SubmitImage,
    WorkerConfig,
)
from ovbot.core.logging_setup import configure_logging

log = logging.getLogger("ovbot.engine.worker")


def ignore_stop_signals() -> None:
    """In a child process: leave SIGINT/SIGTERM to the bot. Ctrl-C and systemd's stop
    reach every process of the group; a child that died of them would fail the running
    job before the bot could finish or re-queue it (and print a KeyboardInterrupt
    traceback into ``ovbot chat``). The bot stops its children itself, over the pipe,
    or kills them if they do not answer."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def log_like_the_bot(level: str) -> None:
    """In a child process: log through ovbot's own formatter, at the bot's level. A
    model path or an OpenVINO error (they end up in load and inference tracebacks) can
    hold a newline, a control character or a token-shaped string; a plain handler would
    print a forged record or the token into the same stderr the bot logs to."""
    configure_logging(level)


def stop_child(process: Any, ask_to_stop: Callable[[], object], timeout: float) -> None:
    """Ask a child process to stop, give it ``timeout`` seconds, then kill it."""
    ask_to_stop()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join(5)


def device_properties(config: WorkerConfig) -> dict[str, Any]:
    if config.compile_cache_dir:
        return {"CACHE_DIR": config.compile_cache_dir}
    return {}


#: Dynamic quantization group size on CPU when the setting is "auto". OpenVINO's CPU
#: default is 32; 128 served 8 chats 1.25x faster (TTFT p95 2.6 vs 3.5 s) on the
#: real-shape INT4 model, while a lone chat stayed within the noise (32 decoded it 1.045x
#: (0.83-1.32) as fast, 10 alternated pairs): bench/LATEST.md, lever table. Its cost:
#: prefill logits 8.0% off an f32, unquantized reference against 6.5% at 32 (bf16 alone:
#: 3.4%), measured on that model's random weights (docs/performance.md).
CPU_DYNAMIC_QUANTIZATION_GROUP_SIZE = 128


def llm_properties(config: WorkerConfig) -> dict[str, Any]:
    """The chat pipeline's compile properties: only what the settings name (plus the
    CPU group size above), so every value left empty stays the device's own default."""
    import openvino as ov

    tuning = config.llm_tuning
    properties = device_properties(config)
    group_size = tuning.dynamic_quantization_group_size
    if group_size is None and config.llm_device == "CPU":
        group_size = CPU_DYNAMIC_QUANTIZATION_GROUP_SIZE
    if tuning.kv_cache_precision:
        properties["KV_CACHE_PRECISION"] = getattr(ov.Type, tuning.kv_cache_precision)
    if tuning.inference_precision:
        properties["INFERENCE_PRECISION_HINT"] = getattr(ov.Type, tuning.inference_precision)
    if tuning.performance_hint:
        properties["PERFORMANCE_HINT"] = tuning.performance_hint
    if tuning.threads:
        properties["INFERENCE_NUM_THREADS"] = tuning.threads
    if tuning.cpu_pinning is not None:
        properties["ENABLE_CPU_PINNING"] = tuning.cpu_pinning
    if group_size is not None:
        properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group_size
    return properties


def llm_scheduler(og: Any, config: WorkerConfig) -> Any:
    scheduler = og.SchedulerConfig()
    scheduler.cache_size = config.kv_cache_gb
    scheduler.max_num_seqs = config.max_num_seqs
    scheduler.enable_prefix_caching = True
    scheduler.dynamic_split_fuse = config.llm_tuning.dynamic_split_fuse
    scheduler.max_num_batched_tokens = config.llm_tuning.max_num_batched_tokens
    return scheduler


def load_llm(og: Any, config: WorkerConfig) -> Any:
    """The one ContinuousBatchingPipeline every chat shares (the bench loads it here too,
    so its figures are ovbot's)."""
    return og.ContinuousBatchingPipeline(
        config.llm_dir, llm_scheduler(og, config), config.llm_device, llm_properties(config)
    )


class Worker:
    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self._conn = conn
        self._config = config
        self._send_lock = threading.Lock()
        #: set while chat runs; shared with the image process, which yields to it
        self._chat_busy = multiprocessing.get_context("spawn").Event()
        self._llm_loop: Any = None
        self._images: Any = None

    def send(self, message: object) -> None:
        with self._send_lock:
            self._conn.send(message)

    def load(self) -> tuple[str, ...]:
        import openvino_genai as og

        from ovbot.core.engines.local.image_process import ImageProcess
        from ovbot.core.engines.local.llm_loop import LLMLoop

        loaded: list[str] = []
        if self._config.image_dir:  # loads in its own process while the LLM loads here
            self._images = ImageProcess(self._config, self.send, self._chat_busy)
        if self._config.llm_dir:
            tuning = self._config.llm_tuning
            self._llm_loop = LLMLoop(
                og, load_llm(og, self._config), self.send, self._chat_busy,
                max_prompt_tokens=None if tuning.dynamic_split_fuse else tuning.max_num_batched_tokens,
            )
            loaded.append("llm")
        if self._images is not None:
            self._images.wait_ready()
            loaded.append("image")
        return tuple(loaded)

    def serve(self) -> None:
        receiver = threading.Thread(target=self._receive, name="ovbot-receiver", daemon=True)
        receiver.start()
        try:
            if self._llm_loop is not None:
                self._llm_loop.run()
            else:
                receiver.join()
        finally:
            if self._images is not None:
                self._images.stop()

    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = Shutdown()  # the parent is gone: stop
            if isinstance(message, Shutdown):
                if self._llm_loop is not None:
                    self._llm_loop.inbox.put(None)
                return
            self._route(message)

    def _route(self, message: object) -> None:
        if isinstance(message, SubmitChat):
            if self._llm_loop is None:
                self.send(RequestFailed(message.request_id, "engine_unavailable", "No chat model is loaded."))
            else:
                self._llm_loop.inbox.put(message)
        elif isinstance(message, SubmitImage):
            if self._images is None:
                self.send(
                    RequestFailed(message.request_id, "engine_unavailable", "No image model is loaded.")
                )
            else:
                self._images.submit(message)
        elif isinstance(message, Cancel):
            if message.kind == "image" and self._images is not None:
                self._images.cancel(message)
            elif message.kind == "chat" and self._llm_loop is not None:
                self._llm_loop.inbox.put(message)
        elif isinstance(message, StatsQuery):
            self.send(Stats(message.query_id, self._stats()))

    def _stats(self) -> dict[str, Any]:
        chat = self._llm_loop
        images = self._images
        return {
            "pid": os.getpid(),
            "chat_active": chat.active_count if chat else 0,
            "chat_busy": self._chat_busy.is_set(),
            "chat_steps": chat.steps_total if chat else 0,
            "chat_peak_batch": chat.peak_batch if chat else 0,
            "image_pid": images.process.pid if images else None,
            "image_running": images.current is not None if images else False,
            "image_queued": images.queued if images else 0,
            "image_paused_s": round(images.paused_s, 3) if images else 0.0,
        }


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Process target: load, report Ready (or Fatal with the reason), serve until told
    to stop or the parent disappears."""
    ignore_stop_signals()
    log_like_the_bot(config.log_level)
    worker = Worker(conn, config)
    try:
        loaded = worker.load()
    except Exception as exc:
        log.error("engine worker failed to load models: %s", traceback.format_exc())
        worker.send(Fatal(f"could not load the models: {exc}"))
        return
    worker.send(Ready(loaded))
    worker.serve()
