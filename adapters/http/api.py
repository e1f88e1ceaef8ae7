"""The HTTP API: translates requests into calls of the core facade (``Bot``) and its
results into JSON.

No decisions about users, limits or jobs are made here — the facade makes them and
raises typed errors, which ``errors.py`` turns into responses. This module only knows
the HTTP side: identities derived from API keys, URLs of images and the shape of each
body.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations
at run time, and ``Caller`` is local to ``create_app``.
"""

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from ovbot.adapters.http.auth import Identity, KeyChecker
from ovbot.adapters.http.docs import install_offline_docs
from ovbot.adapters.http.errors import ApiError, install_error_handlers
from ovbot.adapters.http.middleware import RequestMiddleware
from ovbot.adapters.http.schemas import (
    ID_PATTERN,
    ChatRequest,
    ChatResponse,
    ErrorBody,
    ImageRef,
    ImageRequestBody,
    JobView,
    LimitsUpdate,
    PersonaRequest,
    ResetRequest,
    ResetResponse,
    ThinkRequest,
    USER_KEY_PATTERN,
)
from ovbot.adapters.http.sse import sse_stream
from ovbot.adapters.http.stream_slots import SlotStreamingResponse, StreamSlots
from ovbot.core.bot import Bot, TurnHandle, TurnOptions
from ovbot.core.config import Settings
from ovbot.core.domain import ImageParams, JobKind
from ovbot.core.metrics import Metrics
from ovbot.core.turns import JobStatus, ReplyDone, TurnCancelled, TurnFailed, TurnInterrupted, UsageReport

#: requests larger than this are refused before they are read (messages are <= 100k chars)
MAX_BODY_BYTES = 512 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "invalid input or malformed JSON",
        401: "missing or wrong API key",
        403: "not your job",
        404: "no such job or image (or not yours)",
        422: "a field is missing, unknown or out of range",
        429: "rate limit, queue full or too many open streams; see Retry-After",
        503: "the engines are not available, or too many connections (see Retry-After)",
    }.items()
}

#: documented so clients (and schema checks) know ``?stream=true`` answers with SSE
_SSE: dict[str, Any] = {
    "description": "Server-Sent Events, one JSON object per event",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "type": "object",
                "required": ["event", "data", "id"],
                "properties": {
                    "event": {"type": "string"},
                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                },
            }
        }
    },
}
_SSE_OR_JSON: dict[str, Any] = {**_SSE, "description": "the reply, or with ?stream=true its events as SSE"}

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def default_base_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def create_app(
    bot: Bot,
    settings: Settings,
    metrics: Metrics,
    *,
    base_url: str | None = None,
    keepalive_s: float = 15.0,
) -> FastAPI:
    """The FastAPI application serving ``bot`` (started and stopped by the caller: the
    HTTP server is one adapter among several sharing one bot).

    ``base_url`` is where clients reach this server, for image URLs; default
    ``OVBOT_PUBLIC_BASE_URL`` or ``http://<host>:<port>`` from settings.
    """
    keys = KeyChecker(settings.api_keys)
    streams = StreamSlots(settings.http_max_streams_per_key)
    public = base_url or settings.public_base_url or default_base_url(settings.http_host, settings.http_port)
    public = public.rstrip("/")
    bearer = HTTPBearer(auto_error=False, description="One of OVBOT_API_KEYS (needed when keys are configured)")

    api = FastAPI(
        title="ovbot",
        version="0.1.0",
        description="Chat and images from a private, local model. Errors are "
        '`{"error": {"kind", "message", "field"?}}`; 429s carry Retry-After.',
        docs_url=None,
        redoc_url=None,
    )
    install_offline_docs(api)
    install_error_handlers(api, metrics)
    api.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=MAX_BODY_BYTES)

    async def identity(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Identity:
        who = keys.identify(credentials.credentials if credentials else None)
        request.state.key_id = who.key_id  # for the access log line
        return who

    Caller = Annotated[Identity, Depends(identity)]

    # ---------------------------------------------------------------- translation
    def image_url(image_or_job_id: str) -> str:
        return f"{public}/images/{image_or_job_id}.png"

    async def events_response(
        who: Identity, open_turn: Callable[[], Awaitable[TurnHandle]], after_seq: int | None = None
    ) -> StreamingResponse:
        """The turn as SSE, holding one of the key's stream slots; the slot is taken
        before the turn is opened, so a refused stream queues (and charges) nothing."""
        slot = streams.acquire(who.key_id)
        try:
            handle = await open_turn()
        except BaseException:
            slot.release()
            raise
        stream = sse_stream(handle.__aiter__(), image_url, after_seq=after_seq, keepalive_s=keepalive_s)
        return SlotStreamingResponse(
            slot, stream, media_type="text/event-stream", headers={**SSE_HEADERS, "X-Job-Id": handle.job_id}
        )

    async def image_ref(who: Identity, job_id: str) -> ImageRef:
        status = await bot.status(job_id, who.tenant())
        return ImageRef(job_id=job_id, status=status.state.value, url=image_url(job_id))

    async def present_result(who: Identity, status: JobStatus) -> dict[str, Any] | None:
        if status.kind is JobKind.IMAGE:
            if status.image_id is None:
                return None
            return {"image_id": status.image_id, "params": status.image_params, "url": image_url(status.job_id)}
        if status.text is None:
            return None
        result: dict[str, Any] = {"text": status.text}
        if status.reasoning is not None:
            result["reasoning"] = status.reasoning
        if status.note:
            result["image_note"] = status.note
        if status.image_job_id:
            result["image"] = (await image_ref(who, status.image_job_id)).model_dump()
        return result

    async def job_view(who: Identity, status: JobStatus) -> JobView:
        progress = None
        if status.progress_step is not None:
            progress = {"step": status.progress_step, "total": status.progress_total}
        error = None
        if status.error_kind is not None:
            error = {"kind": status.error_kind, "message": status.error_message}
        return JobView(
            job_id=status.job_id,
            kind=status.kind.value,
            state=status.state.value,
            position=status.position,
            eta_s=status.eta_s,
            progress=progress,
            result=await present_result(who, status),
            error=error,
            created_at=status.created_at,
            started_at=status.started_at,
            finished_at=status.finished_at,
        )

    async def reply_of(handle: TurnHandle) -> ReplyDone:
        """Wait until the reply's text is complete (a picture may still be coming)."""
        async with contextlib.aclosing(handle.__aiter__()) as events:
            async for event in events:
                if isinstance(event, ReplyDone):
                    return event
                if isinstance(event, TurnFailed):
                    raise ApiError(event.error_kind, event.message, job_id=handle.job_id)
                if isinstance(event, TurnCancelled):
                    raise ApiError("cancelled", "The request was cancelled.", job_id=handle.job_id)
                if isinstance(event, TurnInterrupted):
                    raise ApiError(
                        "shutting_down",
                        f"{event.message} Poll /jobs/{handle.job_id}.",
                        job_id=handle.job_id,
                        retry_after_s=30,
                    )
        raise ApiError("internal", "The reply ended without an answer.", job_id=handle.job_id)

    # ---------------------------------------------------------------- chat and images
    @api.post(
        "/chat",
        response_model=ChatResponse,
        response_model_exclude_none=True,
        responses={**_ERRORS, 200: _SSE_OR_JSON},
        tags=["chat"],
    )
    async def chat(
        body: ChatRequest,
        who: Caller,
        stream: Annotated[bool, Query(description="stream the reply as Server-Sent Events")] = False,
    ) -> Any:
        """Send a message; the reply comes when its text is done (a picture it asked for
        may still be coming: see ``image``), or as SSE with ``?stream=true``."""
        image = ImageParams(prompt="", **body.image.model_dump()) if body.image else None

        def submit() -> Awaitable[TurnHandle]:
            return bot.submit_turn(
                who.user(body.user_id),
                who.chat(body.user_id, body.conversation_id),
                body.message,
                TurnOptions(image=image, show_reasoning=body.show_reasoning, reasoning=body.reasoning),
            )

        if stream:
            return await events_response(who, submit)
        handle = await submit()
        reply = await reply_of(handle)
        return ChatResponse(
            job_id=handle.job_id,
            text=reply.text,
            reasoning=reply.reasoning if body.show_reasoning else None,
            image=await image_ref(who, reply.image_job_id) if reply.image_job_id else None,
        )

    @api.post("/images", status_code=202, response_model=ImageRef, responses=_ERRORS, tags=["images"])
    async def images(body: ImageRequestBody, who: Caller) -> ImageRef:
        """Queue one image; poll ``GET /jobs/{job_id}`` or fetch ``url`` once it is done."""
        params = ImageParams(**body.model_dump(exclude={"user_id"}))
        handle = await bot.imagine(who.user(body.user_id), who.chat(body.user_id, None), params)
        return ImageRef(job_id=handle.job_id, status="queued", url=image_url(handle.job_id))

    @api.get("/images/{image_id}.png", response_class=FileResponse, responses=_ERRORS, tags=["images"])
    async def image_file(image_id: JobId, who: Caller) -> FileResponse:
        """The PNG (its parameters are in its text chunks); by image id or image job id."""
        image = await bot.image(image_id, who.tenant())
        return FileResponse(image.path, media_type="image/png")

    @api.post("/reset", response_model=ResetResponse, responses=_ERRORS, tags=["chat"])
    async def reset(body: ResetRequest, who: Caller) -> ResetResponse:
        """Start a new conversation; ``forget`` also deletes the old one's messages."""
        chat = who.chat(body.user_id, body.conversation_id)
        await bot.reset(who.user(body.user_id), chat, body.forget)
        return ResetResponse(conversation_id=body.conversation_id or body.user_id, forgot=body.forget)

    @api.post("/persona", responses=_ERRORS, tags=["chat"])
    async def persona(body: PersonaRequest, who: Caller) -> dict[str, Any]:
        """Give the conversation a persona; it applies from the next message on."""
        chat = who.chat(body.user_id, body.conversation_id)
        await bot.set_persona(who.user(body.user_id), chat, body.persona)
        return {"conversation_id": body.conversation_id or body.user_id, "persona": body.persona or None}

    @api.post("/think", responses=_ERRORS, tags=["chat"])
    async def think(body: ThinkRequest, who: Caller) -> dict[str, Any]:
        """Choose how much the model reasons before answering in this conversation
        (``null``: the bot's default)."""
        chat = who.chat(body.user_id, body.conversation_id)
        mode = await bot.set_reasoning(who.user(body.user_id), chat, body.mode)
        return {"conversation_id": body.conversation_id or body.user_id, "mode": mode}

    # ---------------------------------------------------------------- jobs
    @api.get("/jobs/{job_id}", response_model=JobView, responses=_ERRORS, tags=["jobs"])
    async def get_job(job_id: JobId, who: Caller) -> JobView:
        """State, queue position and ETA, image progress, then the result or the error."""
        return await job_view(who, await bot.status(job_id, who.tenant()))

    @api.get(
        "/jobs/{job_id}/events", responses={**_ERRORS, 200: _SSE}, tags=["jobs"], response_class=StreamingResponse
    )
    async def job_events(
        job_id: JobId,
        who: Caller,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """The turn's events as SSE (the chat reply, then its picture), from the first
        (or after ``Last-Event-ID``) to the end."""
        return await events_response(who, lambda: bot.resume(job_id, who.tenant()), after_seq=last_event_id)

    @api.delete("/jobs/{job_id}", response_model=JobView, responses=_ERRORS, tags=["jobs"])
    async def cancel_job(
        job_id: JobId,
        user_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)],
        who: Caller,
    ) -> JobView:
        """Cancel a queued or running job of ``user_id`` (and the picture it started)."""
        await bot.status(job_id, who.tenant())  # another key's job does not exist for this caller
        return await job_view(who, await bot.cancel(job_id, who.user(user_id)))

    @api.get("/queue", tags=["jobs"], responses=_ERRORS)
    async def my_queue(user_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)], who: Caller) -> list[JobView]:
        """The user's running and waiting jobs, with position and ETA."""
        return [await job_view(who, s) for s in await bot.queue(who.user(user_id), who.chat(user_id, None))]

    # ---------------------------------------------------------------- limits
    RequesterId = Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)]
    TargetKey = Annotated[str, Path(min_length=3, max_length=200, pattern=USER_KEY_PATTERN)]

    @api.get("/usage", tags=["limits"], responses=_ERRORS)
    async def usage(user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """The user's own limits: used, remaining and when each resets."""
        return usage_body(await bot.usage(who.user(user_id), who.chat(user_id, None)))

    @api.get("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def show_limits(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """An admin's view of any user's limits (``user_key`` like ``telegram:123``)."""
        return usage_body(await bot.limits_show(who.user(user_id), user_key))

    @api.put("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def set_limits(user_key: TargetKey, body: LimitsUpdate, who: Caller) -> dict[str, Any]:
        """Override a user's limits at run time (persisted; survives restarts)."""
        report = await bot.limits_set(
            who.user(body.user_id),
            user_key,
            chat_per_window=body.chat_per_window,
            images_per_day=body.images_per_day,
        )
        return usage_body(report)

    @api.delete("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def reset_limits(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """Drop a user's overrides: back to the configured defaults."""
        return usage_body(await bot.limits_reset(who.user(user_id), user_key))

    @api.get("/admin/admins", tags=["admin"], responses=_ERRORS)
    async def list_admins(user_id: RequesterId, who: Caller) -> dict[str, list[str]]:
        """Every admin: the configured ones and those added at run time."""
        return {"admins": await bot.admins_list(who.user(user_id))}

    @api.put("/admin/admins/{user_key}", tags=["admin"], responses=_ERRORS)
    async def add_admin(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, str]:
        """Make a user an admin (persisted)."""
        return {"admin": await bot.admins_add(who.user(user_id), user_key)}

    @api.delete("/admin/admins/{user_key}", tags=["admin"], responses=_ERRORS)
    async def remove_admin(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, str]:
        """Take admin rights away (not from those named in OVBOT_ADMINS)."""
        return {"removed": await bot.admins_remove(who.user(user_id), user_key)}

    @api.get("/admin/blocked", tags=["admin"], responses=_ERRORS)
    async def list_blocked(user_id: RequesterId, who: Caller) -> dict[str, list[str]]:
        return {"blocked": await bot.blocked_list(who.user(user_id))}

    @api.put("/admin/blocked/{user_key}", tags=["admin"], responses=_ERRORS)
    async def block(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, str]:
        """Block a user on every platform (persisted); admins cannot be blocked."""
        return {"blocked": await bot.block(who.user(user_id), user_key)}

    @api.delete("/admin/blocked/{user_key}", tags=["admin"], responses=_ERRORS)
    async def unblock(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, str]:
        return {"unblocked": await bot.unblock(who.user(user_id), user_key)}

    # ---------------------------------------------------------------- operations
    @api.get("/health", tags=["operations"])
    async def health() -> dict[str, Any]:
        """Liveness: the process serves requests; each adapter's own state."""
        adapters = {name: {"ok": check.ok, "detail": check.detail} for name, check in bot.adapter_health().items()}
        return {"status": "ok", "adapters": adapters}

    @api.get("/ready", tags=["operations"], responses={503: {"description": "not ready; see checks"}})
    async def ready() -> JSONResponse:
        """Readiness: engines loaded, database writable, queue running, adapters up."""
        state = await bot.readiness()
        body = {
            "ready": state.ok,
            "checks": {name: {"ok": check.ok, "detail": check.detail} for name, check in state.checks.items()},
            "queue": state.depth,
        }
        return JSONResponse(body, status_code=200 if state.ok else 503)

    @api.get("/metrics", tags=["operations"], response_class=Response, responses={401: _ERRORS[401]})
    async def metrics_text(who: Caller) -> Response:
        """Prometheus metrics (needs a key when keys are configured)."""
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    return api


def usage_body(report: UsageReport) -> dict[str, Any]:
    """The usage report as the API has always shown it."""
    body: dict[str, Any] = {
        "user": report.user_key,
        "admin": report.admin,
        "chat": dataclasses.asdict(report.chat),
        "image": dataclasses.asdict(report.image),
    }
    if report.default_chat_per_window is not None:  # an admin's view
        overridden = report.override_chat_per_window is not None or report.override_images_per_day is not None
        body["override"] = (
            {"chat_per_window": report.override_chat_per_window, "images_per_day": report.override_images_per_day}
            if overridden
            else None
        )
        body["defaults"] = {
            "chat_per_window": report.default_chat_per_window,
            "chat_window_s": report.chat.window_s,
            "images_per_day": report.default_images_per_day,
        }
    return body


__all__ = ["create_app", "default_base_url"]
