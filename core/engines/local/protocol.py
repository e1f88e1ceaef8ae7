"""Messages between the bot process and the engine worker process.

Small frozen dataclasses, pickled over a ``multiprocessing`` pipe. Ids are allocated by
the parent and are unique per worker incarnation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ovbot.core.engines.types import ImageLimits, ImageRequest


@dataclass(frozen=True, slots=True)
class LLMTuning:
    """How the chat pipeline is compiled and scheduled (``OVBOT_LLM_*`` settings).

    Empty strings and ``None`` leave a value to OpenVINO (the device's own default), so a
    GPU or NPU never receives a CPU-only property it would refuse; the one exception is
    the dynamic quantization group size on CPU (see ``worker.llm_properties``). The
    bench's lever table (``python -m bench --only levers``) measures each one."""

    #: scheduler: prompt tokens + decoding sequences processed in one step
    max_num_batched_tokens: int = 256
    #: scheduler: split long prompts into chunks that share steps with decoding chats
    dynamic_split_fuse: bool = True
    #: KV_CACHE_PRECISION: "u8", "f16", "f32" or "" (device default)
    kv_cache_precision: str = ""
    #: INFERENCE_PRECISION_HINT: "bf16", "f16", "f32" or "" (device default)
    inference_precision: str = ""
    #: PERFORMANCE_HINT: "LATENCY", "THROUGHPUT" or "" (device default)
    performance_hint: str = ""
    #: INFERENCE_NUM_THREADS; 0 = the device default (every core)
    threads: int = 0
    #: ENABLE_CPU_PINNING; None = device default
    cpu_pinning: bool | None = None
    #: DYNAMIC_QUANTIZATION_GROUP_SIZE; 0 = off; None = ovbot's choice for the device
    #: (CPU_DYNAMIC_QUANTIZATION_GROUP_SIZE on CPU, the device's own default elsewhere)
    dynamic_quantization_group_size: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything the worker needs to load its pipelines (picklable: no settings object)."""

    llm_dir: str | None
    image_dir: str | None
    llm_device: str = "CPU"
    image_device: str = "CPU"
    kv_cache_gb: int = 2
    max_num_seqs: int = 16
    llm_tuning: LLMTuning = field(default_factory=LLMTuning)
    default_max_new_tokens: int = 1024
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    image_max_pause_s: float = 20.0
    compile_cache_dir: str | None = None
    #: model name written into PNG metadata
    image_model_name: str = ""
    #: the level the bot logs at: its worker and image processes log at the same one
    log_level: str = "INFO"


# ---------------------------------------------------------------- parent -> worker
@dataclass(frozen=True, slots=True)
class SubmitChat:
    request_id: int
    messages: tuple[tuple[str, str], ...]
    max_new_tokens: int
    temperature: float
    top_p: float
    json_schema: str | None
    think: bool
    max_reasoning_chars: int | None
    ignore_eos: bool
    seed: int | None


@dataclass(frozen=True, slots=True)
class SubmitImage:
    request_id: int
    request: ImageRequest


@dataclass(frozen=True, slots=True)
class Cancel:
    request_id: int
    kind: str  # "chat" | "image"


@dataclass(frozen=True, slots=True)
class StatsQuery:
    query_id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


# ---------------------------------------------------------------- worker -> parent
@dataclass(frozen=True, slots=True)
class Ready:
    loaded: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fatal:
    message: str


@dataclass(frozen=True, slots=True)
class ChatStarted:
    request_id: int
    prompt_tokens: int
    starts_in_reasoning: bool


@dataclass(frozen=True, slots=True)
class ChatDeltas:
    """New text for several requests from one ``step()``: one message per step, not per
    request, keeps the pipe and the parent's reader thread cheap at high concurrency."""

    deltas: tuple[tuple[int, str], ...]
    first_token_times: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ChatDone:
    request_id: int
    generated_tokens: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class ImageStep:
    request_id: int
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class ImageDone:
    request_id: int
    png: bytes
    duration_s: float


@dataclass(frozen=True, slots=True)
class RequestFailed:
    request_id: int
    kind: str  # an OvbotError kind: bad_parameter, engine_unavailable, cancelled
    message: str
    field: str = ""


@dataclass(frozen=True, slots=True)
class Stats:
    query_id: int
    values: dict[str, Any]
