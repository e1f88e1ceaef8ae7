"""The small typed contract between the chat service and any engine.

The chat service only sees these types, so a local OpenVINO worker, a remote
OpenAI-compatible server (OpenVINO Model Server) or a test double can be swapped
without touching it. Requests are submitted with ``await engine.stream(...)`` /
``await engine.generate(...)``: submission errors (engine down, bad parameter) surface
there, before any output, and the returned stream/job is then consumed asynchronously.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ovbot.core.engines.streams import ImageJob, LLMStream
from ovbot.core.engines.types import (
    ChatMessage,
    EngineHealth,
    GenerationOptions,
    ImageLimits,
    ImageRequest,
)

@runtime_checkable
class LLMEngine(Protocol):
    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions = GenerationOptions()
    ) -> LLMStream:
        """Submit one chat request; the stream yields text deltas as they are produced."""
        ...

    def health(self) -> EngineHealth: ...


@runtime_checkable
class ImageEngine(Protocol):
    #: sizes, step and CFG bounds this engine accepts (for help texts and validation)
    limits: ImageLimits

    async def generate(self, request: ImageRequest) -> ImageJob:
        """Submit one image request (validated against the engine's limits)."""
        ...

    def health(self) -> EngineHealth: ...


class Engines(Protocol):
    """Both engines with one lifecycle (a worker process, an HTTP client...)."""

    llm: LLMEngine
    image: ImageEngine

    async def start(self) -> None: ...

    async def close(self) -> None: ...


__all__ = [
    "ChatMessage",
    "EngineHealth",
    "Engines",
    "GenerationOptions",
    "ImageEngine",
    "ImageJob",
    "ImageLimits",
    "ImageRequest",
    "LLMEngine",
    "LLMStream",
]
