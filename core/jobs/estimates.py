"""How long a job is expected to run, learned on this machine: the queue's ETAs.

Chat turns vary with the conversation, not with anything known up front, so chat keeps
an exponential moving average of measured run times. An image's run time, though, is
almost exactly its steps times the time of one step at its size; averaging whole images
(60 s by default) told a user 42 s for a 5-step 64x64 picture that took under a second.
So images are predicted as ``steps * seconds_per_step(width, height)``, each size's
seconds per step learned from the images that ran at that size. A size not measured yet
is scaled by its pixel count from what was measured at other sizes (UNet cost grows with
the latent's area), and before any image has run from a prior: 2.1 s per step at 512x512,
measured with the real-shape SD1.5 on 2 CPU cores (bench/LATEST.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ovbot.core.domain import Job, JobKind

#: first guesses for job durations by kind, until real ones are measured (and for image
#: jobs whose payload does not say their steps and size)
DEFAULT_DURATIONS_S: dict[JobKind, float] = {JobKind.CHAT: 15.0, JobKind.IMAGE: 60.0}
#: seconds per denoising step per pixel before anything was measured (2.1 s at 512x512)
PRIOR_STEP_S_PER_PIXEL = 2.1 / (512 * 512)
EMA_WEIGHT = 0.3


class JobDurations:
    """Expected run time of a job (``expected``), refined by measured ones (``learn``)."""

    def __init__(self, defaults: Mapping[JobKind, float] | None = None) -> None:
        self._by_kind: dict[JobKind, float] = {**DEFAULT_DURATIONS_S, **(defaults or {})}
        self._step_s: dict[tuple[int, int], float] = {}
        self._step_s_per_pixel = PRIOR_STEP_S_PER_PIXEL
        self._pixel_measured = False

    def expected(self, job: Job) -> float:
        shape = image_shape(job)
        if shape is None:
            return self._by_kind[job.kind]
        steps, width, height = shape
        per_step = self._step_s.get((width, height))
        if per_step is None:
            per_step = self._step_s_per_pixel * width * height
        return steps * per_step

    def learn(self, job: Job, seconds: float) -> None:
        """Fold one measured run (a job that ended done) into the estimates."""
        seconds = max(seconds, 0.0)
        shape = image_shape(job)
        if shape is None:
            previous = self._by_kind[job.kind]
            self._by_kind[job.kind] = previous + EMA_WEIGHT * (seconds - previous)
            return
        steps, width, height = shape
        per_step = seconds / steps
        # the first measurement of a size replaces the guess outright: a prior from
        # another machine or size may be off by orders of magnitude
        previous = self._step_s.get((width, height))
        self._step_s[(width, height)] = per_step if previous is None else _ema(previous, per_step)
        per_pixel = per_step / (width * height)
        self._step_s_per_pixel = _ema(self._step_s_per_pixel, per_pixel) if self._pixel_measured else per_pixel
        self._pixel_measured = True


def image_shape(job: Job) -> tuple[int, int, int] | None:
    """(steps, width, height) of an image job whose payload carries resolved
    parameters (the chat service fills every default at submit), else None."""
    if job.kind is not JobKind.IMAGE:
        return None
    params: Any = job.payload.get("image") if isinstance(job.payload, dict) else None
    if not isinstance(params, dict):
        return None
    steps, width, height = params.get("steps"), params.get("width"), params.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (steps, width, height)):
        return None
    return steps, width, height


def _ema(previous: float, sample: float) -> float:
    return previous + EMA_WEIGHT * (sample - previous)
