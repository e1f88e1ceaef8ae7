"""Image jobs: validating what a user asked for, choosing the picture a chat reply
leads to, and running one image on the engine into the store."""

from __future__ import annotations

import uuid
from dataclasses import replace

from ovbot.core.domain import ImageParams, Job
from ovbot.core.engines.base import ImageEngine
from ovbot.core.jobs.base import EventSink
from ovbot.core.store.base import Store

GENERATING_STATUS = "generating image"
#: namespace of the ids of image jobs started by chat replies (see ``follow_up_job_id``)
_FOLLOW_UP_NAMESPACE = uuid.UUID("5b0c6f0e-6a58-4f4e-9d0f-8f1f6c1f2a7e")


def resolve_params(params: ImageParams, engine: ImageEngine) -> ImageParams:
    """Check ``params`` against the engine's limits (BadParameter) and fill every
    default, the seed included: the queued job then reproduces the same picture even
    when it runs again after a restart."""
    return params.resolve(engine.limits)


def explicit_params(requested: ImageParams, message: str) -> ImageParams:
    """Parameters a user gave with a chat message; without a prompt of their own the
    message itself describes the picture."""
    return requested if requested.prompt.strip() else replace(requested, prompt=message)


def follow_up_params(
    requested: ImageParams | None, message: str, image_prompt: str | None
) -> ImageParams | None:
    """The picture a chat turn leads to: the user's explicit parameters, else the
    model's image prompt, else none."""
    if requested is not None:
        return explicit_params(requested, message)
    if image_prompt:
        return ImageParams(prompt=image_prompt)
    return None


def follow_up_job_id(chat_job_id: str) -> str:
    """Derived from the chat job, so a chat job that runs twice (at-least-once queue)
    finds the image job its first run queued instead of queueing a second picture."""
    return uuid.uuid5(_FOLLOW_UP_NAMESPACE, chat_job_id).hex


class ImageJobRunner:
    """Runs one queued image job: progress events per step, the PNG into the store."""

    def __init__(self, engine: ImageEngine, store: Store) -> None:
        self._engine = engine
        self._store = store

    async def run(self, job: Job, sink: EventSink) -> dict[str, object]:
        params = ImageParams.from_dict(job.payload["image"])
        sink.emit("status", GENERATING_STATUS)
        image_job = await self._engine.generate(params)
        try:
            async for progress in image_job:
                sink.emit("image_progress", step=progress.step, total=progress.total)
            result = await image_job.result()
        finally:
            if not image_job.done:  # the job was cancelled: stop denoising
                await image_job.cancel()
        used = result.request.to_dict()
        record = await self._store.save_image(job.id, job.user.key, result.png, used)
        sink.emit("image_ready", image_id=record.id, params=used)
        return {"image_id": record.id, "params": used}
