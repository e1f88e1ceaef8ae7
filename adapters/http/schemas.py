"""Request and response bodies of the HTTP API.

Requests forbid unknown fields (a typo like ``stpes`` is an error, not a silent
default) and cap every string, so no request can make the server hold or log an
unbounded value. The caps here are hard ceilings for the wire; the limits an operator
configures (message length, image sizes and steps) are checked by the core, which
answers with the exact limit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: ids a client chooses (its user ids, conversation labels): printable, no spaces
ID_PATTERN = r"^[A-Za-z0-9_.@:+\-]+$"
#: the largest OVBOT_MAX_MESSAGE_CHARS allows; the configured limit is the core's check
MAX_MESSAGE_CHARS = 100_000
MAX_PROMPT_CHARS = 10_000

ClientId = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
#: another user named by an admin: platform:user_id, printable, no spaces or slashes
USER_KEY_PATTERN = r"^[a-z]+:[^\s/\x00-\x1f\x7f]+$"
#: what each pattern means, for the validation message
PATTERN_HELP = {
    ID_PATTERN: "may only contain letters, digits and _ . @ : + -",
    USER_KEY_PATTERN: "must be platform:user_id, e.g. telegram:123 (no spaces or control characters)",
}


class _Request(BaseModel):
    """Strict: ``"steps": "5"``, ``"steps": true`` or ``"forget": "yes"`` are errors,
    not guesses (an int is still a valid float)."""

    model_config = ConfigDict(extra="forbid", str_max_length=MAX_MESSAGE_CHARS, strict=True)


class ChatImageOptions(_Request):
    """Ask the reply to come with a picture; the model writes the picture's prompt.
    Ranges are the engine's (configured), checked by the core with the exact limit."""

    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None


class ChatRequest(_Request):
    user_id: ClientId
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    #: a label for the conversation; defaults to one conversation per user
    conversation_id: ClientId | None = None
    image: ChatImageOptions | None = None
    show_reasoning: bool = False
    #: how much the model reasons first, for this message only (default: the conversation's)
    reasoning: Literal["off", "short", "full"] | None = None


class ImageRequestBody(ChatImageOptions):
    user_id: ClientId
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class ResetRequest(_Request):
    user_id: ClientId
    conversation_id: ClientId | None = None
    #: delete the old turns instead of only leaving them out of future prompts
    forget: bool = False


class PersonaRequest(_Request):
    """Set the conversation's persona (added to the system prompt); null or "" clears it."""

    user_id: ClientId
    conversation_id: ClientId | None = None
    persona: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)


class ThinkRequest(_Request):
    """Set the conversation's reasoning mode; null goes back to the bot's default."""

    user_id: ClientId
    conversation_id: ClientId | None = None
    mode: Literal["off", "short", "full"] | None


# ---------------------------------------------------------------- responses


class LimitsUpdate(_Request):
    """An admin (``user_id``, under this API key) changes one user's limits; a field left
    out keeps its current value."""

    user_id: ClientId
    chat_per_window: int | None = Field(default=None, ge=0)
    images_per_day: int | None = Field(default=None, ge=0)


class ImageRef(BaseModel):
    job_id: str
    status: str
    url: str


class ChatResponse(BaseModel):
    job_id: str
    text: str
    reasoning: str | None = None
    image: ImageRef | None = None


class JobView(BaseModel):
    job_id: str
    kind: Literal["chat", "image"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    #: 1 = next to run, 0 = running; null once finished
    position: int | None = None
    eta_s: float | None = None
    #: image steps so far, e.g. {"step": 3, "total": 20}
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class ResetResponse(BaseModel):
    conversation_id: str
    forgot: bool


class ErrorDetail(BaseModel):
    kind: str
    message: str
    field: str | None = None
    job_id: str | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
