"""Shared pytest fixtures. Fixtures live in ``tests/fixtures_*.py`` and are imported here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ovbot.bots.logging_setup import SafeFormatter
from tests.fixtures_models import tiny_models  # noqa: F401


@pytest.fixture(autouse=True)
def ovbot_logging_is_undone() -> Iterator[None]:
    """A test that runs the CLI in-process installs ovbot's stderr handler on the root
    logger; left there it would write to a closed capture stream in later tests."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, SafeFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
