"""Builds the configured engines from settings: the one place that knows which
implementation serves a deployment (local worker process or remote server)."""

from __future__ import annotations

from pathlib import Path

from ovbot.core.config import Settings
from ovbot.core.engines.base import Engines
from ovbot.core.engines.local import LocalEngines, WorkerConfig


def worker_config(settings: Settings, llm_dir: Path | None, image_dir: Path | None) -> WorkerConfig:
    return WorkerConfig(
        llm_dir=str(llm_dir) if llm_dir else None,
        image_dir=str(image_dir) if image_dir else None,
        llm_device=settings.llm_device,
        image_device=settings.image_device,
        kv_cache_gb=settings.kv_cache_gb,
        max_num_seqs=settings.max_batch_sequences,
        default_max_new_tokens=settings.max_new_tokens,
        image_limits=settings.image_limits(),
        image_max_pause_s=settings.image_max_pause_s,
        compile_cache_dir=str(settings.compile_cache_dir) if settings.compile_cache_dir else None,
        image_model_name=image_dir.name if image_dir else "",
    )


def build_engines(settings: Settings, llm_dir: Path | None = None, image_dir: Path | None = None) -> Engines:
    """Local engines need the model directories (resolved by the model cache first);
    the remote engine needs none."""
    if settings.engine == "remote":
        from ovbot.core.engines.remote import RemoteEngines

        return RemoteEngines.from_settings(settings)
    return LocalEngines(
        worker_config(settings, llm_dir, image_dir),
        start_timeout_s=settings.worker_start_timeout_s,
        max_restarts=settings.worker_max_restarts,
        llm_timeout_s=settings.llm_timeout_s,
        image_timeout_s=settings.image_timeout_s,
    )
