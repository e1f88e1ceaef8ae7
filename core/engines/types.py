"""Plain data exchanged with engines. Frozen dataclasses: they cross process and
network boundaries (pickled to the engine worker, JSON to a remote server)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ovbot.core.errors import BadParameter
from ovbot.core.text import NOT_UNICODE, is_unicode

Role = Literal["system", "user", "assistant"]
DeltaKind = Literal["reasoning", "content"]
FinishReason = Literal["stop", "length", "cancelled"]
HealthState = Literal["starting", "ready", "restarting", "down", "stopped"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Per-request generation options. ``None`` means "the engine's configured default"."""

    max_new_tokens: int | None = None
    temperature: float = 0.6  # DeepSeek-R1 distills are tuned for 0.5-0.7
    top_p: float = 0.95
    #: constrain the answer (the part after the reasoning) to this JSON schema
    json_schema: Mapping[str, Any] | None = None
    #: let a reasoning model think before answering; False closes the think block in
    #: the prompt so the model answers at once
    think: bool = True
    #: cap on reasoning tokens when a JSON schema follows the reasoning (None: no cap)
    max_reasoning_chars: int | None = None
    #: keep generating past end-of-sequence (benchmarks need fixed-length outputs)
    ignore_eos: bool = False
    seed: int | None = None
    #: wall-clock limit for the whole request; None -> engine default
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text; reasoning (``<think>`` text) is kept apart from the
    answer so callers can hide it and never store it."""

    kind: DeltaKind
    text: str


@dataclass(frozen=True, slots=True)
class LLMMetrics:
    prompt_tokens: int
    generated_tokens: int
    #: seconds from submission to the first generated token (None: nothing generated)
    ttft_s: float | None
    duration_s: float
    finish_reason: FinishReason

    @property
    def decode_tokens_per_s(self) -> float:
        if self.ttft_s is None or self.generated_tokens <= 1:
            return 0.0
        decode_time = self.duration_s - self.ttft_s
        return (self.generated_tokens - 1) / decode_time if decode_time > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LLMResult:
    content: str
    reasoning: str
    metrics: LLMMetrics
    #: the parsed answer when a JSON schema was requested
    data: Any = None


@dataclass(frozen=True, slots=True)
class EngineHealth:
    state: HealthState
    restarts: int = 0
    detail: str = ""
    loaded: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ready(self) -> bool:
        return self.state == "ready"


# ---------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an image engine accepts. Out-of-range requests are rejected, never clamped:
    a user who asked for 80 steps should learn the limit, not silently get 50."""

    sizes: tuple[tuple[int, int], ...] = ((512, 512), (512, 768), (768, 512))
    default_size: tuple[int, int] = (512, 512)
    default_steps: int = 20
    min_steps: int = 1
    max_steps: int = 50
    default_cfg: float = 7.5
    min_cfg: float = 1.0
    max_cfg: float = 20.0
    max_prompt_chars: int = 1000

    def sizes_text(self) -> str:
        return ", ".join(f"{w}x{h}" for w, h in self.sizes)


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One image to generate. Unset fields take the engine's defaults in ``resolve``."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The parameters a user chose (no timeout): job payloads, picture metadata."""
        return {name: getattr(self, name) for name in IMAGE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageRequest":
        return cls(**{name: data[name] for name in IMAGE_FIELDS if name in data})

    def resolve(self, limits: ImageLimits) -> "ImageRequest":
        """Fill defaults and check every field against ``limits`` (BadParameter names
        the field and the allowed range). The result has no ``None`` left but timeout."""
        prompt = self.prompt.strip()
        if not prompt:
            raise BadParameter("prompt", "must not be empty")
        for name, text in (("prompt", prompt), ("negative_prompt", self.negative_prompt)):
            if not is_unicode(text):
                raise BadParameter(name, NOT_UNICODE)
        if len(prompt) > limits.max_prompt_chars:
            raise BadParameter(
                "prompt", f"is {len(prompt)} characters; the limit is {limits.max_prompt_chars}"
            )
        if len(self.negative_prompt) > limits.max_prompt_chars:
            raise BadParameter(
                "negative_prompt",
                f"is {len(self.negative_prompt)} characters; the limit is {limits.max_prompt_chars}",
            )
        width, height = limits.default_size
        if self.width is not None or self.height is not None:
            width = self.width if self.width is not None else width
            height = self.height if self.height is not None else height
            if (width, height) not in limits.sizes:
                raise BadParameter(
                    "size", f"{width}x{height} is not allowed; choose one of {limits.sizes_text()}"
                )
        steps = limits.default_steps if self.steps is None else self.steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise BadParameter("steps", "must be a whole number")
        if not limits.min_steps <= steps <= limits.max_steps:
            raise BadParameter(
                "steps", f"must be between {limits.min_steps} and {limits.max_steps} (got {steps})"
            )
        cfg = limits.default_cfg if self.cfg is None else float(self.cfg)
        if not limits.min_cfg <= cfg <= limits.max_cfg:
            raise BadParameter(
                "cfg", f"must be between {limits.min_cfg:g} and {limits.max_cfg:g} (got {cfg:g})"
            )
        seed = self.seed if self.seed is not None else random.randrange(2**31)
        if not 0 <= seed < 2**32:
            raise BadParameter("seed", "must be between 0 and 4294967295")
        return replace(
            self, prompt=prompt, width=width, height=height, steps=steps, cfg=cfg, seed=seed
        )


#: the fields of an ImageRequest that describe the picture (what users set and see)
IMAGE_FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "cfg", "seed")


@dataclass(frozen=True, slots=True)
class ImageProgress:
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class ImageResult:
    png: bytes
    #: the resolved request: exactly the parameters that produced ``png`` (seed included)
    request: ImageRequest
    duration_s: float
