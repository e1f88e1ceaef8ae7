"""The HTTP API: translates requests into core calls and core results into JSON.

No decisions about users, limits or jobs are made here — the chat service and the
queue make them and raise typed errors, which ``errors.py`` turns into responses. This
module only knows the HTTP side: identities derived from API keys, URLs of images and
the shape of each body.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations
at run time, and ``Caller`` is local to ``create_app``.
"""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from ovbot.adapters.http.auth import Identity, KeyChecker
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
)
from ovbot.adapters.http.sse import follow, sse_stream, with_data
from ovbot.core.app import App
from ovbot.core.domain import ImageParams, Job, JobKind, JobState, ReplyEvent
from ovbot.core.errors import NotFound

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
        429: "rate limit or queue full; see Retry-After",
        503: "the engines are not available",
    }.items()
}

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def default_base_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def create_app(app: App, *, base_url: str | None = None, keepalive_s: float = 15.0) -> FastAPI:
    """The FastAPI application for ``app`` (initialized by the caller, who also starts
    and stops it: the HTTP server is one adapter among several sharing one App).

    ``base_url`` is where clients reach this server, for image URLs; default
    ``OVBOT_PUBLIC_BASE_URL`` or ``http://<host>:<port>`` from settings.
    """
    settings = app.settings
    keys = KeyChecker(settings.api_keys)
    public = base_url or settings.public_base_url or default_base_url(settings.http_host, settings.http_port)
    public = public.rstrip("/")
    bearer = HTTPBearer(auto_error=False, description="One of OVBOT_API_KEYS (needed when keys are configured)")

    api = FastAPI(
        title="ovbot",
        version="0.1.0",
        description="Chat and images from a private, local model. Errors are "
        '`{"error": {"kind", "message", "field"?}}`; 429s carry Retry-After.',
    )
    install_error_handlers(api, app.metrics)
    api.add_middleware(RequestMiddleware, metrics=app.metrics, max_body_bytes=MAX_BODY_BYTES)

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

    def translate(event: ReplyEvent) -> ReplyEvent:
        """Give image events the URL an HTTP client can fetch."""
        if event.type == "image_queued" and "job_id" in event.data:
            return with_data(event, url=image_url(str(event.data["job_id"])))
        if event.type == "image_ready" and "image_id" in event.data:
            return with_data(event, url=image_url(str(event.data["image_id"])))
        return event

    def events_response(job_id: str, after_seq: int | None = None) -> StreamingResponse:
        stream = sse_stream(
            app.queue.subscribe(job_id),
            app.stopped,
            translate=translate,
            after_seq=after_seq,
            keepalive_s=keepalive_s,
        )
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={**SSE_HEADERS, "X-Job-Id": job_id}
        )

    async def owned_job(who: Identity, job_id: str) -> Job:
        job = await app.store.get_job(job_id)
        if job is None or not who.owns(job.user.key):
            raise NotFound(f"There is no job {job_id}.")
        return job

    async def image_ref(job_id: str) -> ImageRef:
        job = await app.store.get_job(job_id)
        state = job.state.value if job else JobState.QUEUED.value
        return ImageRef(job_id=job_id, status=state, url=image_url(job_id))

    async def present_result(job: Job) -> dict[str, Any] | None:
        if job.result is None:
            return None
        result = dict(job.result)
        if job.kind == JobKind.IMAGE and "image_id" in result:
            result["url"] = image_url(job.id)
        image_job_id = result.pop("image_job_id", None)
        if image_job_id:
            result["image"] = (await image_ref(str(image_job_id))).model_dump()
        return result

    async def job_view(job: Job) -> JobView:
        live = None if job.state.terminal else app.queue.position(job.id)
        return JobView(
            job_id=job.id,
            kind=job.kind.value,
            state=job.state.value,
            position=live.position if live else None,
            eta_s=live.eta_s if live else None,
            progress=app.progress(job.id),
            result=await present_result(job),
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    async def finished_job(job_id: str) -> Job:
        """Wait for the job's terminal event, then read what it stored (the durable
        record, which is also what ``GET /jobs`` shows)."""
        async for _ in follow(app.queue.subscribe(job_id), app.stopped):
            pass
        job = await app.store.get_job(job_id)
        if job is None:
            raise NotFound(f"There is no job {job_id}.")
        if not job.state.terminal:  # the App stopped first: the job runs after the restart
            raise ApiError(
                "shutting_down",
                f"The bot is restarting; your request will run when it is back. Poll /jobs/{job_id}.",
                job_id=job_id,
                retry_after_s=30,
            )
        return job

    # ---------------------------------------------------------------- chat and images
    @api.post(
        "/chat", response_model=ChatResponse, response_model_exclude_none=True, responses=_ERRORS, tags=["chat"]
    )
    async def chat(
        body: ChatRequest,
        who: Caller,
        stream: Annotated[bool, Query(description="stream the reply as Server-Sent Events")] = False,
    ) -> Any:
        """Send a message; the reply comes when the job is done, or as SSE with ``?stream=true``."""
        image = ImageParams(prompt="", **body.image.model_dump()) if body.image else None
        job = await app.service.submit_chat(
            who.user(body.user_id),
            who.chat(body.user_id, body.conversation_id),
            body.message,
            image,
            body.show_reasoning,
        )
        if stream:
            return events_response(job.id)
        job = await finished_job(job.id)
        if job.state != JobState.DONE:
            raise ApiError.from_job_error(job.id, job.error)
        result = await present_result(job) or {}
        return ChatResponse(
            job_id=job.id,
            text=str(result.get("text", "")),
            reasoning=result.get("reasoning"),
            image=result.get("image"),
        )

    @api.post("/images", status_code=202, response_model=ImageRef, responses=_ERRORS, tags=["images"])
    async def images(body: ImageRequestBody, who: Caller) -> ImageRef:
        """Queue one image; poll ``GET /jobs/{job_id}`` or fetch ``url`` once it is done."""
        params = ImageParams(**body.model_dump(exclude={"user_id"}))
        job = await app.service.submit_image(who.user(body.user_id), who.chat(body.user_id, None), params)
        return ImageRef(job_id=job.id, status=job.state.value, url=image_url(job.id))

    @api.get("/images/{image_id}.png", response_class=FileResponse, responses=_ERRORS, tags=["images"])
    async def image_file(image_id: JobId, who: Caller) -> FileResponse:
        """The PNG (its parameters are in its text chunks); by image id or image job id."""
        job = await app.store.get_job(image_id)
        if job is not None and job.kind == JobKind.IMAGE and who.owns(job.user.key):
            if not job.state.terminal:
                raise NotFound(f"The image is not ready yet ({job.state.value}); poll /jobs/{image_id}.")
            image_id = str((job.result or {}).get("image_id", image_id))
        record = await app.store.get_image(image_id)
        if record is None or not who.owns(record.user_key):
            raise NotFound(f"There is no image {image_id}.")
        return FileResponse(record.path, media_type="image/png")

    @api.post("/reset", response_model=ResetResponse, responses=_ERRORS, tags=["chat"])
    async def reset(body: ResetRequest, who: Caller) -> ResetResponse:
        """Start a new conversation; ``forget`` also deletes the old one's messages."""
        chat = who.chat(body.user_id, body.conversation_id)
        await app.service.reset(who.user(body.user_id), chat, body.forget)
        return ResetResponse(conversation_id=body.conversation_id or body.user_id, forgot=body.forget)

    @api.post("/persona", responses=_ERRORS, tags=["chat"])
    async def persona(body: PersonaRequest, who: Caller) -> dict[str, Any]:
        """Give the conversation a persona; it applies from the next message on."""
        chat = who.chat(body.user_id, body.conversation_id)
        await app.service.set_persona(who.user(body.user_id), chat, body.persona)
        return {"conversation_id": body.conversation_id or body.user_id, "persona": body.persona or None}

    # ---------------------------------------------------------------- jobs
    @api.get("/jobs/{job_id}", response_model=JobView, responses=_ERRORS, tags=["jobs"])
    async def get_job(job_id: JobId, who: Caller) -> JobView:
        """State, queue position and ETA, image progress, then the result or the error."""
        return await job_view(await owned_job(who, job_id))

    @api.get("/jobs/{job_id}/events", responses=_ERRORS, tags=["jobs"], response_class=StreamingResponse)
    async def job_events(
        job_id: JobId,
        who: Caller,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """The job's events as SSE, from the first (or after ``Last-Event-ID``) to the end."""
        await owned_job(who, job_id)
        return events_response(job_id, after_seq=last_event_id)

    @api.delete("/jobs/{job_id}", response_model=JobView, responses=_ERRORS, tags=["jobs"])
    async def cancel_job(
        job_id: JobId,
        user_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)],
        who: Caller,
    ) -> JobView:
        """Cancel a queued or running job of ``user_id``."""
        await owned_job(who, job_id)  # another key's job does not exist for this caller
        job = await app.service.cancel(job_id, who.user(user_id), False)
        return await job_view(job)

    # ---------------------------------------------------------------- limits
    RequesterId = Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)]
    TargetKey = Annotated[str, Path(min_length=3, max_length=200, pattern=r"^[a-z]+:[^\s/]+$")]

    @api.get("/usage", tags=["limits"], responses=_ERRORS)
    async def usage(user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """The user's own limits: used, remaining and when each resets."""
        return await app.limits.usage(who.user(user_id))

    @api.get("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def show_limits(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """An admin's view of any user's limits (``user_key`` like ``telegram:123``)."""
        return await app.limits.show(who.user(user_id), user_key)

    @api.put("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def set_limits(user_key: TargetKey, body: LimitsUpdate, who: Caller) -> dict[str, Any]:
        """Override a user's limits at run time (persisted; survives restarts)."""
        return await app.limits.set(
            who.user(body.user_id),
            user_key,
            chat_per_window=body.chat_per_window,
            images_per_day=body.images_per_day,
        )

    @api.delete("/admin/limits/{user_key}", tags=["limits"], responses=_ERRORS)
    async def reset_limits(user_key: TargetKey, user_id: RequesterId, who: Caller) -> dict[str, Any]:
        """Drop a user's overrides: back to the configured defaults."""
        return await app.limits.reset(who.user(user_id), user_key)

    # ---------------------------------------------------------------- operations
    @api.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @api.get("/ready", tags=["operations"], responses={503: {"description": "not ready; see checks"}})
    async def ready() -> JSONResponse:
        """Readiness: engines loaded, database writable, queue running."""
        state = await app.readiness()
        body = {
            "ready": state.ok,
            "checks": {name: {"ok": check.ok, "detail": check.detail} for name, check in state.checks.items()},
            "queue": state.depth,
        }
        return JSONResponse(body, status_code=200 if state.ok else 503)

    @api.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(who: Caller) -> Response:
        """Prometheus metrics (needs a key when keys are configured)."""
        text, content_type = app.metrics.render()
        return Response(text, media_type=content_type)

    return api


__all__ = ["create_app", "default_base_url"]
