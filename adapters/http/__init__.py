"""The HTTP API adapter (FastAPI): ``create_app(bot, ...)`` translates HTTP into calls
of the core facade; ``HttpAdapter`` serves it with uvicorn."""

from ovbot.adapters.http.api import create_app

__all__ = ["create_app"]
