"""The App warms the engines up before it reports ready: the answer grammar is compiled
by a one-token request, so the first user does not wait for it (and, on the local engine,
no running chat stalls while it compiles). A warm-up that fails is not fatal."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from ovbot.core.app import App
from ovbot.core.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_local_engine_is_warmed_up_before_ready(
    tiny_models: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        _env_file=None, llm_model_dir=tiny_models.llm, image_model_dir=tiny_models.image, kv_cache_gb=1,
        image_sizes=["64x64"], image_default_size="64x64", data_dir=tmp_path,
    )
    caplog.set_level(logging.INFO, logger="ovbot.app")
    async with App(settings) as app:
        stats = await app.engines.stats()
        assert stats["chat_steps"] >= 1  # the warm-up request ran in the worker
        assert stats["chat_active"] == 0  # and left no slot behind
        assert any("engines warmed up" in record.getMessage() for record in caplog.records)


async def test_failed_warm_up_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        _env_file=None, engine="remote", remote_base_url=f"http://127.0.0.1:{free_port()}/v3", data_dir=tmp_path,
    )
    caplog.set_level(logging.INFO, logger="ovbot.app")
    async with App(settings) as app:
        assert app.initialized
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("warm-up failed" in message and "EngineUnavailable" in message for message in warnings), warnings
        assert (await app.readiness()).checks["engine_llm"].ok is False  # readiness still tells the truth
