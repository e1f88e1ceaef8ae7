"""Typed errors raised by the core.

Adapters turn these into user-facing text in exactly one place each; the core never
formats platform messages. Every error carries a message that is safe to show a user
(no secrets, no stack traces) in ``user_message``.
"""

from __future__ import annotations


class OvbotError(Exception):
    """Base of every error the core raises on purpose."""

    #: short machine-readable kind, used for metrics and API error bodies
    kind: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class SettingsError(OvbotError):
    """One or more settings are invalid; the message lists each bad value."""

    kind = "settings"


class ModelUnavailable(OvbotError):
    """A model is missing, incomplete or could not be downloaded."""

    kind = "model_unavailable"


class EngineError(OvbotError):
    """Base of the errors an engine raises for one request."""

    kind = "engine"


class EngineUnavailable(EngineError):
    """The engine cannot serve requests now (not started, worker died, remote down)."""

    kind = "engine_unavailable"


class EngineInterrupted(EngineUnavailable):
    """The engine stopped while it worked on the request (its worker process died). The
    request itself was fine: the job queue runs it again once the engine is back."""


class BadParameter(EngineError):
    """A request parameter is outside what the engine accepts."""

    kind = "bad_parameter"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Cancelled(EngineError):
    """The request was cancelled by its owner before it finished."""

    kind = "cancelled"


class EngineTimeout(EngineError):
    """The request did not finish within its deadline."""

    kind = "timeout"


class InvalidStructuredOutput(EngineError):
    """The model's output does not parse as the requested JSON (often cut off by the
    token limit). ``raw_text`` keeps what the model produced so callers can fall back."""

    kind = "invalid_output"

    def __init__(self, message: str, raw_text: str, truncated: bool) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.truncated = truncated


class RateLimited(OvbotError):
    """The user used up a limit; ``retry_after_s`` says when the next request is allowed."""

    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: float, limit_name: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit_name = limit_name


class QueueFull(OvbotError):
    """Too much work is waiting (for this user or overall); try again in ~retry_after_s."""

    kind = "queue_full"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidInput(OvbotError):
    """A user's input is empty, too long or malformed (before any engine is involved)."""

    kind = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(OvbotError):
    kind = "not_found"


class Forbidden(OvbotError):
    """The requester may not do this (e.g. cancel someone else's job, admin commands)."""

    kind = "forbidden"
