"""Settings and a running App on the tiny models, shared by the tests that drive the
core facade (directly, through the in-memory adapter, or over HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ovbot.core.app import App
from ovbot.core.config import Settings

#: the admin every facade test runs with
ADMIN_KEY = "memory:root"


def bot_settings(tiny_models: Any, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        _env_file=None,
        llm_model_dir=tiny_models.llm,
        image_model_dir=tiny_models.image,
        image_sizes=["64x64"],
        image_default_size="64x64",
        image_default_steps=2,
        image_max_steps=500,
        max_new_tokens=48,
        kv_cache_gb=1,
        data_dir=data_dir,
        admins=[ADMIN_KEY],
        reasoning_short_chars=40,
        reasoning_full_chars=80,
    )
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_app(settings: Settings, grace_s: float = 5.0) -> AsyncIterator[App]:
    app = App(settings, stop_grace_s=grace_s)
    await app.initialize()
    await app.start()
    try:
        yield app
    finally:
        await app.shutdown()


