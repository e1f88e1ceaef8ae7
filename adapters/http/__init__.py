"""The HTTP API adapter (FastAPI): ``create_app(app)`` serves one core ``App``."""

from ovbot.adapters.http.api import create_app

__all__ = ["create_app"]
