"""The image process's runner thread: one Text2ImagePipeline, one image at a time.

Sharing two CPU cores with chat: chat has priority. Between two denoising steps the
step callback checks whether chat requests are running and, if so, waits until they are
done — but never longer than ``max_pause_s`` since the image last made progress, so a
busy chat cannot starve images forever. A chat reply therefore waits at most for the
one UNet step that is already running, and an image under constant chat load still
advances at least one step every ``max_pause_s``. The step already running shares the
cores with chat at the lowest priority (see ``image_process``).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ovbot.core.engines.local.protocol import (
    Cancel,
    ImageDone,
    ImageStep,
    RequestFailed,
    SubmitImage,
)
from ovbot.core.engines.types import ImageLimits, ImageRequest

log = logging.getLogger("ovbot.engine.image")


class ImagePipelines:
    """A pipeline compiled for the default size (static shapes are faster and steadier in
    memory) plus, on first use, a dynamic-shape one for the other whitelisted sizes."""

    def __init__(self, og: Any, model_dir: str, device: str, limits: ImageLimits, properties: dict) -> None:
        self._og = og
        self._model_dir = model_dir
        self._device = device
        self._properties = properties
        width, height = limits.default_size
        self._default_key = (width, height)
        self._static = og.Text2ImagePipeline(model_dir)
        # guidance > 1 fixes the UNet batch at 2 (classifier-free guidance on)
        self._static.reshape(1, height, width, max(limits.default_cfg, 1.01))
        self._static.compile(device, **properties)
        self._dynamic: Any = None

    def for_request(self, request: ImageRequest) -> Any:
        if (request.width, request.height) == self._default_key and (request.cfg or 0) > 1:
            return self._static
        if self._dynamic is None:
            log.info("compiling a dynamic-shape image pipeline for %sx%s", request.width, request.height)
            self._dynamic = self._og.Text2ImagePipeline(self._model_dir, self._device, **self._properties)
        return self._dynamic


def encode_png(pixels: Any, request: ImageRequest, model_name: str) -> bytes:
    """PNG with the generation parameters as text chunks, so a saved image can be
    reproduced (seed, steps, CFG, size, model)."""
    from PIL import Image, PngImagePlugin

    image = Image.fromarray(pixels)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", request.prompt)
    if request.negative_prompt:
        info.add_text("negative_prompt", request.negative_prompt)
    info.add_text(
        "parameters",
        f"steps={request.steps}, cfg={request.cfg:g}, seed={request.seed}, "
        f"size={request.width}x{request.height}, model={model_name}",
    )
    info.add_text("Software", "ovbot")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class _Interrupted(Exception):
    pass


class ImageRunner:
    def __init__(
        self,
        pipelines: ImagePipelines,
        send: Callable[[object], None],
        chat_busy: threading.Event,
        max_pause_s: float,
        model_name: str,
        paused: Any,
    ) -> None:
        self._pipelines = pipelines
        self._send = send
        self._chat_busy = chat_busy
        self._max_pause_s = max_pause_s
        self._model_name = model_name
        self.inbox: queue.Queue[SubmitImage | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self.current: int | None = None
        #: seconds spent waiting for chat, shared with the worker (a multiprocessing.Value)
        self._paused = paused

    @property
    def paused_s(self) -> float:
        return float(self._paused.value)

    def cancel_all(self) -> None:
        """Stop the running image at its next step (shutdown)."""
        with self._lock:
            if self.current is not None:
                self._cancelled.add(self.current)

    @property
    def queued(self) -> int:
        return self.inbox.qsize()

    def cancel(self, message: Cancel) -> None:
        with self._lock:
            self._cancelled.add(message.request_id)

    def _is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return request_id in self._cancelled

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            if self._is_cancelled(item.request_id):
                self._forget(item.request_id)
                continue
            self.current = item.request_id
            try:
                self._generate(item)
            finally:
                self.current = None
                self._forget(item.request_id)

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.discard(request_id)

    def _generate(self, item: SubmitImage) -> None:
        request = item.request
        started = time.monotonic()

        total = int(request.steps or 0)
        reported = 0

        def on_step(step: int, _num_steps: int, _latent: Any) -> bool:
            nonlocal reported
            # PNDM calls back steps + 1 times (it repeats its first timestep):
            # report each requested step once, the last one included
            done = min(step + 1, total)
            if done > reported:
                reported = done
                self._send(ImageStep(item.request_id, done, total))
            if self._is_cancelled(item.request_id):
                return True
            self._yield_to_chat(item.request_id)
            return self._is_cancelled(item.request_id)

        self._send(ImageStep(item.request_id, 0, total))
        try:
            pipeline = self._pipelines.for_request(request)
            tensor = pipeline.generate(
                request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg,
                rng_seed=request.seed,
                num_images_per_prompt=1,
                callback=on_step,
            )
            if self._is_cancelled(item.request_id):
                raise _Interrupted
            png = encode_png(tensor.data[0], request, self._model_name)
        except _Interrupted:
            self._send(RequestFailed(item.request_id, "cancelled", "The image was cancelled."))
            return
        except Exception as exc:
            if self._is_cancelled(item.request_id):
                self._send(RequestFailed(item.request_id, "cancelled", "The image was cancelled."))
                return
            log.exception("image %s failed", item.request_id)
            self._send(RequestFailed(item.request_id, "engine_unavailable", f"Image generation failed: {exc}"))
            return
        self._send(ImageDone(item.request_id, png, time.monotonic() - started))

    def _yield_to_chat(self, request_id: int) -> None:
        """Wait while chat runs, up to the anti-starvation bound, waking for cancel."""
        paused_from = time.monotonic()
        deadline = paused_from + self._max_pause_s
        while self._chat_busy.is_set() and not self._is_cancelled(request_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(0.02, remaining))
        self._paused.value += time.monotonic() - paused_from
