"""A small OpenAI-compatible server in the OpenVINO Model Server dialect, for engine tests.

It runs inside the test's own event loop (``aiohttp`` on ``127.0.0.1``, a free port) and
serves ``/v3/chat/completions`` (server-sent events only), ``/v3/images/generations``
(a real PNG of the requested size, made with Pillow), ``/v3/models`` and ``/v1/config``.
Every request lands in ``calls`` for assertions; failures are injected per path;
anything else gets a loud JSON 404 and is listed in ``unhandled``.

It is as strict as OVMS where that matters to a client: unknown image fields are
rejected, ``guidance_scale`` must be a JSON float, an unknown model is a 404, and a
configured API key is required as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image

log = logging.getLogger(__name__)

CutMode = Literal["abort", "eof"]

#: the fields OVMS accepts on images/generations; anything else is a 400
IMAGE_FIELDS = frozenset(
    {
        "model", "prompt", "prompt_2", "prompt_3", "image",
        "negative_prompt", "negative_prompt_2", "negative_prompt_3",
        "size", "height", "width", "n", "num_images_per_prompt", "response_format",
        "num_inference_steps", "rng_seed", "strength", "guidance_scale", "max_sequence_length",
    }
)  # fmt: skip
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass
class ChatScript:
    """What one chat completion streams back."""

    #: ``delta.content`` pieces, one event each
    content: Sequence[str] = ("Hello", ", world", "!")
    #: ``delta.reasoning_content`` pieces, sent before the content (a reasoning parser)
    reasoning: Sequence[str] = ()
    #: None: no chunk ever carries a finish reason
    finish_reason: str | None = "stop"
    prompt_tokens: int = 11
    #: None: the number of pieces sent
    completion_tokens: int | None = None
    #: pause before each piece (slow streams, for cancel and timeout tests)
    chunk_delay_s: float = 0.0
    #: pause before the response head is sent
    headers_delay_s: float = 0.0
    #: stop after this many pieces: "abort" drops the connection mid-body, "eof" ends
    #: the body cleanly but without finish reason, usage or [DONE]
    cut_after: int | None = None
    cut_mode: CutMode = "abort"
    send_done: bool = True


ScriptSource = ChatScript | Callable[[dict[str, Any]], ChatScript]


@dataclass
class RecordedCall:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None = None
    #: the whole answer was written
    completed: bool = False
    #: the client went away before the answer was complete
    disconnected: bool = False


@dataclass
class _Failure:
    status: int
    body: Any
    remaining: int | None


@dataclass
class FakeOpenAIServer:
    api_key: str | None = None
    llm_model: str = "fake-llm"
    image_model: str = "fake-image"
    #: serve ``/v3/models`` (older OVMS releases only have ``/v1/config``)
    list_models: bool = True
    #: models the listings name (None: the two above)
    listed_models: Sequence[str] | None = None
    chat: ScriptSource = field(default_factory=ChatScript)
    image_delay_s: float = 0.0
    #: "PNG" like OVMS; anything Pillow writes ("JPEG") to test conversion
    image_format: str = "PNG"
    #: 0: any free port
    port: int = 0

    calls: list[RecordedCall] = field(default_factory=list, init=False)
    unhandled: list[RecordedCall] = field(default_factory=list, init=False)
    active_chats: int = field(default=0, init=False)
    max_active_chats: int = field(default=0, init=False)
    _failures: dict[str, list[_Failure]] = field(default_factory=dict, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _port: int | None = field(default=None, init=False)
    _disconnected: asyncio.Event | None = field(default=None, init=False)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v3/chat/completions", self._chat)
        app.router.add_post("/v3/images/generations", self._images)
        if self.list_models:
            app.router.add_get("/v3/models", self._models)
        app.router.add_get("/v1/config", self._config)
        app.router.add_route("*", "/{tail:.*}", self._unhandled)
        # handler_cancellation: a client that hangs up cancels its handler, which is how
        # the fake notices a cancelled stream even while it is sleeping between chunks
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._disconnected = asyncio.Event()
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        assert self._port is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._port}"

    # ------------------------------------------------------------- test helpers
    def fail(self, path: str, status: int, body: Any = None, times: int | None = None) -> None:
        """Answer ``path`` with ``status`` (``times`` times, or always)."""
        if body is None:
            body = {"error": f"injected failure {status}"}
        self._failures.setdefault(path, []).append(_Failure(status, body, times))

    def clear_failures(self) -> None:
        self._failures.clear()

    def calls_to(self, path: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.path == path]

    async def wait_for_disconnect(self, timeout_s: float = 5.0) -> RecordedCall:
        """The first call whose client hung up before the answer was complete."""
        assert self._disconnected is not None
        await asyncio.wait_for(self._disconnected.wait(), timeout_s)
        return next(call for call in self.calls if call.disconnected)

    # ------------------------------------------------------------- plumbing
    async def _record(self, request: web.Request) -> RecordedCall:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        call = RecordedCall(request.method, request.path, dict(request.headers), body)
        self.calls.append(call)
        return call

    def _refusal(self, request: web.Request, call: RecordedCall) -> web.Response | None:
        """The answer for a wrong key or an injected failure, if any."""
        if self.api_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return self._json(call, 401, {"error": "Unauthorized: bad or missing API key"})
        for failure in self._failures.get(request.path, []):
            if failure.remaining is None or failure.remaining > 0:
                if failure.remaining is not None:
                    failure.remaining -= 1
                if isinstance(failure.body, str):
                    call.status = failure.status
                    return web.Response(status=failure.status, text=failure.body)
                return self._json(call, failure.status, failure.body)
        return None

    @staticmethod
    def _json(call: RecordedCall, status: int, payload: Any) -> web.Response:
        call.status = status
        call.completed = True
        return web.json_response(payload, status=status)

    def _hung_up(self, call: RecordedCall) -> None:
        call.disconnected = True
        if self._disconnected is not None:
            self._disconnected.set()

    # ------------------------------------------------------------- chat
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        call = await self._record(request)
        refusal = self._refusal(request, call)
        if refusal is not None:
            return refusal
        body = call.body
        problem = _chat_problem(body)
        if problem:
            return self._json(call, 400, {"error": problem})
        if body["model"] != self.llm_model:
            return self._json(
                call, 404, {"error": "Mediapipe graph definition with requested name is not found"}
            )
        script = self.chat(body) if callable(self.chat) else self.chat
        self.active_chats += 1
        self.max_active_chats = max(self.max_active_chats, self.active_chats)
        try:
            return await self._stream_chat(request, call, script)
        except (asyncio.CancelledError, ConnectionResetError):
            self._hung_up(call)
            raise
        finally:
            self.active_chats -= 1

    async def _stream_chat(
        self, request: web.Request, call: RecordedCall, script: ChatScript
    ) -> web.StreamResponse:
        await asyncio.sleep(script.headers_delay_s)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        call.status = 200
        await response.prepare(request)
        created = int(time.time())
        pieces = [("reasoning_content", text) for text in script.reasoning]
        pieces += [("content", text) for text in script.content]
        for sent, (key, text) in enumerate(pieces):
            if script.cut_after is not None and sent >= script.cut_after:
                return await _cut(request, response, script.cut_mode)
            await asyncio.sleep(script.chunk_delay_s)
            delta = {key: text} if sent else {"role": "assistant", key: text}
            await _send_event(response, _chunk(call.body, created, delta, None))
        if script.finish_reason is not None:
            await _send_event(response, _chunk(call.body, created, {}, script.finish_reason))
        if (call.body.get("stream_options") or {}).get("include_usage"):
            completion = script.completion_tokens
            if completion is None:
                completion = len(pieces)
            usage = {
                "prompt_tokens": script.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": script.prompt_tokens + completion,
            }
            final = {**_chunk(call.body, created, {}, None), "choices": [], "usage": usage}
            await _send_event(response, final)
        if script.send_done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        call.completed = True
        return response

    # ------------------------------------------------------------- images
    async def _images(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        refusal = self._refusal(request, call)
        if refusal is not None:
            return refusal
        problem = _image_problem(call.body)
        if problem:
            return self._json(call, 400, {"error": problem})
        if call.body.get("model") != self.image_model:
            return self._json(
                call, 404, {"error": "Mediapipe graph definition with requested name is not found"}
            )
        width, height = _parse_size(call.body.get("size", "512x512"))
        try:
            await asyncio.sleep(self.image_delay_s)
        except asyncio.CancelledError:
            self._hung_up(call)
            raise
        encoded = base64.b64encode(
            _picture(width, height, call.body.get("rng_seed", 0), self.image_format)
        ).decode("ascii")
        return self._json(call, 200, {"data": [{"b64_json": encoded}]})

    # ------------------------------------------------------------- listings
    def _listed(self) -> Sequence[str]:
        if self.listed_models is not None:
            return self.listed_models
        return (self.llm_model, self.image_model)

    async def _models(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        refusal = self._refusal(request, call)
        if refusal is not None:
            return refusal
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "OVMS"} for m in self._listed()
        ]
        return self._json(call, 200, {"object": "list", "data": data})

    async def _config(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        refusal = self._refusal(request, call)
        if refusal is not None:
            return refusal
        available = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}
        status = {m: {"model_version_status": [available]} for m in self._listed()}
        return self._json(call, 200, status)

    async def _unhandled(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        self.unhandled.append(call)
        log.warning("fake_openai: no route for %s %s", request.method, request.path)
        return self._json(
            call,
            404,
            {"error": f"fake_openai: no route for {request.method} {request.path}", "fake": True},
        )


# ------------------------------------------------------------------ helpers


def _chunk(
    body: dict[str, Any], created: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "usage": None,
    }


async def _send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


async def _cut(
    request: web.Request, response: web.StreamResponse, mode: CutMode
) -> web.StreamResponse:
    if mode == "eof":
        await response.write_eof()
    elif request.transport is not None:
        request.transport.close()  # mid chunked body: the client sees a broken stream
    return response


def _chat_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body is not a JSON object"
    if not isinstance(body.get("model"), str):
        return "model is missing"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Messages array cannot be empty"
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return "Every message must have both 'content' and 'role' fields"
    if body.get("stream") is not True:
        return "fake_openai only streams: set stream to true"
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            return f"response_format type {kind!r} is not supported"
        if kind == "json_schema" and not isinstance(
            (response_format.get("json_schema") or {}).get("schema"), dict
        ):
            return "response_format.json_schema.schema must be an object"
    return None


def _image_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body is not a JSON object"
    for key in body:
        if key not in IMAGE_FIELDS:
            return f"Unhandled parameter: {key}"
    if not isinstance(body.get("prompt"), str):
        return "prompt field is missing in JSON body"
    if "size" in body and (not isinstance(body["size"], str) or not _SIZE.match(body["size"])):
        return "size field is not in correct format - WxH"
    if body.get("response_format", "b64_json") != "b64_json":
        return "Unsupported response_format. Only b64_json is supported."
    if "guidance_scale" in body and not isinstance(body["guidance_scale"], float):
        return "guidance_scale field is not a float"
    for key in ("num_inference_steps", "rng_seed", "n"):
        value = body.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key} field is not a size_t"
    if body.get("n", 1) != 1:
        return "num_images_per_prompt is greater than maxNumImagesPerPrompt: 1"
    if "negative_prompt" in body and not isinstance(body["negative_prompt"], str):
        return "negative_prompt field is not a string"
    return None


def _parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


def _picture(width: int, height: int, seed: int, image_format: str) -> bytes:
    colour = (seed % 256, (seed // 256) % 256, 128)
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=image_format)
    return out.getvalue()


__all__ = ["ChatScript", "FakeOpenAIServer", "IMAGE_FIELDS", "RecordedCall"]
