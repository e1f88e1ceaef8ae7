"""Shared pytest fixtures. Fixtures live in ``tests/fixtures_*.py`` and are imported here."""

from tests.fixtures_models import tiny_models  # noqa: F401
