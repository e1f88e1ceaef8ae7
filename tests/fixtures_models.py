"""Session fixtures that provide the tiny OpenVINO models.

Built once into a cache dir that outlives the session (the build takes ~15 s and is
byte-identical every time), so repeated test runs only check the marker files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ovbot.models.convert import ConvertExtraMissing
from ovbot.models.tiny import TinyModels, build_tiny_models

CACHE_ENV = "OVBOT_TEST_MODELS_DIR"


def models_cache_root() -> Path:
    """Where tiny models are cached: ``$OVBOT_TEST_MODELS_DIR`` or ``<repo>/.cache/test-models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[1] / ".cache" / "test-models"


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    """Tiny random LLM + SD1.5-style IR dirs; skips (with the reason) when they cannot be
    built because the convert extra is missing."""
    try:
        return build_tiny_models(models_cache_root())
    except ConvertExtraMissing as exc:
        pytest.skip(f"tiny models unavailable: {exc.user_message}")
