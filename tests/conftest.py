"""Shared pytest fixtures. Fixtures live in ``tests/fixtures_*.py`` and are imported here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ovbot.core.logging_setup import QUIET_LOGGERS, SafeFormatter
from tests.fixtures_models import tiny_models  # noqa: F401
from tests.sentinel_check import (  # noqa: F401  (hooks: the suite-wide sentinel check)
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_terminal_summary,
    pytest_unconfigure,
)


@pytest.fixture(autouse=True)
def ovbot_logging_is_undone() -> Iterator[None]:
    """A test that configures ovbot's logging in-process (the CLI, the adapters' log
    tests) installs its stderr handler on the root logger and pins chatty libraries'
    levels; left so, later tests would write to a closed capture stream or lose records."""
    root = logging.getLogger()
    level = root.level
    pinned = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, SafeFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    for name, pinned_level in pinned.items():
        logging.getLogger(name).setLevel(pinned_level)
