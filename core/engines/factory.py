"""Builds the configured engines from settings: the one place that knows which
implementation serves a deployment (local worker process or remote server).

Local devices are checked here, before any worker starts: OpenVINO asked for a GPU or
NPU whose driver/runtime is not installed fails deep inside the worker with a long C++
traceback, while ``Core().available_devices`` tells in a fraction of a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ovbot.core.config import Settings
from ovbot.core.engines.base import Engines
from ovbot.core.engines.local import LLMTuning, LocalEngines, WorkerConfig
from ovbot.core.errors import SettingsError

#: what each device family needs installed, for the one-line error
_RUNTIME_HINT = {
    "GPU": "the Intel GPU driver with its OpenCL/Level Zero runtime (intel-opencl-icd, "
    "intel-level-zero-gpu on Linux)",
    "NPU": "the Intel NPU driver (intel-driver-compiler-npu, intel-level-zero-npu on Linux)",
}


def worker_config(settings: Settings, llm_dir: Path | None, image_dir: Path | None) -> WorkerConfig:
    return WorkerConfig(
        llm_dir=str(llm_dir) if llm_dir else None,
        image_dir=str(image_dir) if image_dir else None,
        llm_device=settings.llm_device,
        image_device=settings.image_device,
        kv_cache_gb=settings.kv_cache_gb,
        max_num_seqs=settings.max_batch_sequences,
        llm_tuning=llm_tuning(settings),
        default_max_new_tokens=settings.max_new_tokens,
        image_limits=settings.image_limits(),
        image_max_pause_s=settings.image_max_pause_s,
        compile_cache_dir=str(settings.compile_cache_dir) if settings.compile_cache_dir else None,
        image_model_name=image_dir.name if image_dir else "",
        log_level=child_log_level(),
    )


def llm_tuning(settings: Settings) -> LLMTuning:
    """The ``OVBOT_LLM_*`` tuning settings as the worker takes them ("auto" = leave it
    to the device)."""

    def named(value: str) -> str:
        return "" if value == "auto" else value

    group = settings.llm_dynamic_quantization_group_size
    return LLMTuning(
        max_num_batched_tokens=settings.llm_max_batched_tokens,
        dynamic_split_fuse=settings.llm_split_fuse,
        kv_cache_precision=named(settings.llm_kv_cache_precision),
        inference_precision=named(settings.llm_inference_precision),
        performance_hint=named(settings.llm_performance_hint),
        threads=settings.llm_threads,
        cpu_pinning=None if settings.llm_cpu_pinning == "auto" else settings.llm_cpu_pinning == "true",
        dynamic_quantization_group_size=None if group == "auto" else group,
    )


def child_log_level() -> str:
    """The level this process really logs at (``OVBOT_LOG_LEVEL`` or ``--log-level``),
    as one of the names the engine processes accept. They get no secret values to
    redact: they never hold one (they get model directories and prompts, never a
    token), and the token-shaped patterns still apply to whatever an error carries."""
    level = logging.getLogger().getEffectiveLevel()
    for name in ("DEBUG", "INFO", "WARNING", "ERROR"):
        if level <= logging.getLevelName(name):
            return name
    return "ERROR"


def openvino_devices() -> list[str]:
    """The devices OpenVINO can use on this computer (``CPU``, ``GPU.0``, ``NPU``...)."""
    import openvino

    return list(openvino.Core().available_devices)


def check_devices(settings: Settings, available: Callable[[], Sequence[str]] = openvino_devices) -> None:
    """Raise SettingsError, one line per setting, when a configured local device is not
    available. CPU alone never asks OpenVINO (always there, and it keeps start-up fast)."""
    wanted = {"OVBOT_LLM_DEVICE": settings.llm_device, "OVBOT_IMAGE_DEVICE": settings.image_device}
    if all(device == "CPU" for device in wanted.values()):
        return
    devices = list(available())
    problems = [
        _missing_device_line(name, device, devices)
        for name, device in wanted.items()
        if _missing(device, devices)
    ]
    if problems:
        raise SettingsError("\n".join(problems))


def _missing(device: str, available: Sequence[str]) -> list[str]:
    """The devices named by ``device`` that are not in ``available``: AUTO picks among
    what exists (only its explicit list counts, and one present is enough); HETERO needs
    every device it names."""
    family, _, listed = device.partition(":")
    names = [d for d in listed.split(",") if d] if listed else []
    if family == "AUTO":
        return [] if not names or any(_present(d, available) for d in names) else names
    if family == "HETERO":
        return [d for d in names if not _present(d, available)]
    return [] if _present(device, available) else [device]


def _present(device: str, available: Sequence[str]) -> bool:
    """``GPU`` matches ``GPU.0``/``GPU.1``; a single GPU is listed as ``GPU`` but also
    answers to ``GPU.0``."""
    if device in available or any(d.startswith(device + ".") for d in available):
        return True
    return device.endswith(".0") and device.removesuffix(".0") in available


def _missing_device_line(setting: str, device: str, available: Sequence[str]) -> str:
    missing = _missing(device, available)
    families = sorted({name.split(".")[0] for name in missing})
    needs = " and ".join(_RUNTIME_HINT.get(f, f"the {f} plugin and its driver") for f in families)
    return (
        f"{setting}={device}: OpenVINO finds no {', '.join(missing)} on this computer (available: "
        f"{', '.join(available) or 'none'}). Install {needs}, or set {setting}=CPU to run on the CPU."
    )


def build_engines(settings: Settings, llm_dir: Path | None = None, image_dir: Path | None = None) -> Engines:
    """Local engines need the model directories (resolved by the model cache first);
    the remote engine needs none. Raises SettingsError when a configured device is not
    available, before any process starts."""
    if settings.engine == "remote":
        from ovbot.core.engines.remote import RemoteEngines

        return RemoteEngines.from_settings(settings)
    check_devices(settings)
    return LocalEngines(
        worker_config(settings, llm_dir, image_dir),
        start_timeout_s=settings.worker_start_timeout_s,
        max_restarts=settings.worker_max_restarts,
        llm_timeout_s=settings.llm_timeout_s,
        image_timeout_s=settings.image_timeout_s,
    )
