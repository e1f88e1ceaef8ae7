"""Images in their own process, at the lowest CPU priority.

Chat and images share the same few cores. Between two denoising steps an image waits
while chat runs (``image_runner``), but the step already running could not be stopped:
a chat arriving mid-step shared the cores with it and its first token came ~2.7x later
than on an idle machine. In a process of its own the image can be given a lower
scheduling priority (nice 19): the OS then hands the cores to chat the moment chat has
work, and the image still gets every cycle chat leaves idle. Measured on the real-shape
models (2 cores, 220-token prompt): chat TTFT 0.63 s idle, 1.56 s next to an image at
the same priority, 0.86 s next to an image at nice 19.

The worker starts this process and relays its messages to the bot unchanged. Whether
chat is busy travels in a shared ``multiprocessing.Event``; cancellations come over the
pipe. If this process dies the worker exits too, and the bot restarts both.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ovbot.core.engines.local.worker import device_properties, ignore_stop_signals, log_like_the_bot, stop_child
from ovbot.core.engines.local.protocol import (
    Cancel,
    Fatal,
    ImageDone,
    Ready,
    RequestFailed,
    Shutdown,
    SubmitImage,
    WorkerConfig,
)

log = logging.getLogger("ovbot.engine.image")

#: nice value of the image process: images run on whatever CPU chat leaves idle
IMAGE_NICE = 19
_START_TIMEOUT_S = 600.0


def _lower_priority() -> None:
    if not hasattr(os, "nice"):  # Windows: no nice; images then compete with chat as before
        log.info("cannot lower the image process's priority on this OS")
        return
    try:
        os.nice(IMAGE_NICE)
    except OSError as exc:
        log.warning("could not lower the image process's priority: %s", exc)


def image_process_main(conn: Connection, config: WorkerConfig, chat_busy: Any, paused: Any) -> None:
    """Process target: load the image pipeline, report Ready (or Fatal), then serve."""
    ignore_stop_signals()
    from ovbot.core.engines.local.image_runner import ImagePipelines, ImageRunner

    log_like_the_bot(config.log_level)
    _lower_priority()
    send_lock = threading.Lock()

    def send(message: object) -> None:
        with send_lock:
            conn.send(message)

    try:
        import openvino_genai as og

        assert config.image_dir is not None
        pipelines = ImagePipelines(
            og, config.image_dir, config.image_device, config.image_limits, device_properties(config)
        )
        runner = ImageRunner(pipelines, send, chat_busy, config.image_max_pause_s, config.image_model_name, paused)
    except Exception as exc:
        log.error("image process failed to load the model: %s", traceback.format_exc())
        send(Fatal(f"could not load the image model: {exc}"))
        return
    send(Ready(("image",)))
    thread = threading.Thread(target=runner.run, name="ovbot-image", daemon=True)
    thread.start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the worker is gone
        if isinstance(message, Shutdown):
            break
        if isinstance(message, SubmitImage):
            runner.inbox.put(message)
        elif isinstance(message, Cancel):
            runner.cancel(message)
    runner.cancel_all()
    runner.inbox.put(None)
    thread.join(10)


class ImageProcess:
    """The worker's handle on the image process: submit, cancel, relay, stats."""

    def __init__(self, config: WorkerConfig, send: Callable[[object], None], chat_busy: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._send = send
        self._paused = context.Value("d", 0.0)
        self._conn, child_conn = context.Pipe(duplex=True)
        self._lock = threading.Lock()
        self._outstanding: list[int] = []  # submitted, not finished; the first one runs
        self._stopping = False
        # multiprocessing refuses children of a daemonic process (the worker is one, so it
        # dies with the bot) because it could not clean them up; this worker does: the
        # child is daemonic, is stopped on every exit path, and exits when its pipe closes
        current = multiprocessing.current_process()
        was_daemon = current.daemon
        current._config["daemon"] = False  # type: ignore[attr-defined]
        try:
            self.process = context.Process(
                target=image_process_main,
                args=(child_conn, config, chat_busy, self._paused),
                name="ovbot-image-process",
                daemon=True,
            )
            self.process.start()
        finally:
            current._config["daemon"] = was_daemon  # type: ignore[attr-defined]
        child_conn.close()
        self._reader = threading.Thread(target=self._relay, name="ovbot-image-relay", daemon=True)

    def wait_ready(self) -> None:
        """Block until the model is loaded; raises with the reason if it could not be."""
        try:
            if not self._conn.poll(_START_TIMEOUT_S):
                raise RuntimeError("the image process did not load its model in time")
            message = self._conn.recv()
        except (EOFError, OSError):
            message = Fatal("the image process exited while loading its model")
        except RuntimeError as exc:
            message = Fatal(str(exc))
        if isinstance(message, Fatal):
            self._stopping = True
            self.process.kill()
            raise RuntimeError(message.message)
        self._reader.start()

    # ---------------------------------------------------------------- worker side
    @property
    def current(self) -> int | None:
        with self._lock:
            return self._outstanding[0] if self._outstanding else None

    @property
    def queued(self) -> int:
        with self._lock:
            return max(0, len(self._outstanding) - 1)

    @property
    def paused_s(self) -> float:
        return float(self._paused.value)

    def submit(self, message: SubmitImage) -> None:
        with self._lock:
            self._outstanding.append(message.request_id)
        if not self._pipe_send(message):
            self._settle(message.request_id)
            self._send(RequestFailed(message.request_id, "engine_unavailable", "The image process is not running."))

    def cancel(self, message: Cancel) -> None:
        self._pipe_send(message)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        stop_child(self.process, lambda: self._pipe_send(Shutdown()), timeout)
        self._conn.close()

    def _pipe_send(self, message: object) -> bool:
        try:
            self._conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def _settle(self, request_id: int) -> None:
        with self._lock:
            if request_id in self._outstanding:
                self._outstanding.remove(request_id)

    def _relay(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, (ImageDone, RequestFailed)):
                self._settle(message.request_id)
            self._send(message)
        if not self._stopping:
            # images in flight are lost with it: exit, the bot fails them and restarts us
            log.error("the image process exited unexpectedly (exit code %s); restarting the engines",
                      self.process.exitcode)
            os._exit(3)
