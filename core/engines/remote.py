"""Engines backed by an OpenAI-compatible server: the scale-out path.

The bot process keeps no model; OpenVINO Model Server (OVMS) or any server speaking the
same dialect does the work. This module only translates: requests become
``POST /v3/chat/completions`` (server-sent events) and ``POST /v3/images/generations``,
answers are fed into the same ``LLMStream``/``ImageJob`` objects the local engine uses, so
ordering, deadlines, cancellation and structured-output checks behave identically.

Things a remote server cannot do the way the local engine does (documented, not hidden):

* ``think=False``: the local engine closes the think block in the prompt. The remote
  server owns the chat template, so the messages are sent unchanged and any reasoning
  the model still produces is separated from the answer as usual.
* ``max_reasoning_chars`` is not enforced remotely.
* Images have no per-step progress over this API: ``progress(0, steps)`` at submission and
  ``progress(steps, steps)`` when the picture arrives.

Reasoning reaches us in one of three shapes, depending on the model and on whether the
server runs a reasoning parser:

* ``delta.reasoning_content`` (or ``delta.reasoning``) separate from ``delta.content``;
* inline ``<think>...</think>`` at the start of the content (no parser);
* only ``...</think>`` (DeepSeek-R1 templates open the think block in the prompt).

``ReasoningMode`` says how to read the content: ``"auto"`` (default) holds the content
back until it shows which shape it has, so a model that never reasons delivers its answer
in one piece at the end; ``"prompt"`` assumes the template opened the block and streams
reasoning at once; ``"inline"`` trusts only explicit tags.

Errors map onto the core's typed errors; the API key only ever travels in the
``Authorization`` header and never appears in a log record or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import SecretStr

from ovbot.core.engines.streams import CLOSE_THINK, OPEN_THINK, ImageJob, LLMStream
from ovbot.core.engines.types import (
    ChatMessage,
    EngineHealth,
    FinishReason,
    GenerationOptions,
    HealthState,
    ImageLimits,
    ImageRequest,
    ImageResult,
    LLMMetrics,
)
from ovbot.core.errors import (
    BadParameter,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    SettingsError,
)

if TYPE_CHECKING:
    from ovbot.core.config import Settings

log = logging.getLogger(__name__)

ReasoningMode = Literal["auto", "prompt", "inline"]

CHAT_PATH = "/v3/chat/completions"
IMAGES_PATH = "/v3/images/generations"
#: OpenAI model list first (it names the served models), then OVMS's config status
PROBE_PATHS = ("/v3/models", "/v1/config")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_REASON_CHARS = 300
_PROBE_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 10.0


class _BadAnswer(Exception):
    """The server answered with something we cannot read (not JSON, no image...)."""


# ------------------------------------------------------------------ shared connection


class _Connection:
    """The HTTP client and what is known about the server, shared by both engines: they
    talk to one server, so a failed connect means both are down."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | None,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        url = httpx.URL(_strip_api_suffix(base_url))
        self.base_url = url
        #: what messages name: scheme, host and port only (never user info or a key)
        self.label = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._transport = transport
        self.client: httpx.AsyncClient | None = None
        self.state: HealthState = "starting"
        self.detail = "not started"
        #: model ids the server lists (None: the server does not say)
        self.served: frozenset[str] | None = None
        self.inflight: set[_Inflight] = set()

    # ------------------------------------------------------------- lifecycle
    def open(self) -> None:
        if self.client is not None:
            return
        headers = {"Accept": "application/json"}
        if self._api_key is not None and self._api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.http_timeout(self.timeout_s),
            transport=self._transport,
        )

    async def close(self) -> None:
        """Abort what is still running (its consumers learn why), then drop the client."""
        running = list(self.inflight)
        for request in running:
            request.abort(EngineUnavailable("The remote engine was shut down."))
        await asyncio.gather(*(r.task for r in running if r.task), return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        self.state, self.detail = "stopped", "closed"

    def require_client(self) -> httpx.AsyncClient:
        if self.client is None:
            state = "shut down" if self.state == "stopped" else "not started"
            raise EngineUnavailable(f"The remote engine is {state}.")
        return self.client

    def http_timeout(self, timeout_s: float) -> httpx.Timeout:
        """Reads may legitimately be silent for the whole request (an image arrives in
        one piece), so only connecting gets a short limit of its own."""
        return httpx.Timeout(timeout_s, connect=min(_CONNECT_TIMEOUT_S, timeout_s))

    # ------------------------------------------------------------- health
    def mark_up(self) -> None:
        if self.state != "ready":
            log.info("remote engine at %s is reachable", self.label)
        self.state, self.detail = "ready", self.label

    def mark_down(self, detail: str) -> None:
        if (self.state, self.detail) != ("down", detail):
            log.warning("remote engine at %s is down: %s", self.label, detail)
        self.state, self.detail = "down", detail

    def health_for(self, model: str) -> EngineHealth:
        if self.state != "ready":
            return EngineHealth(self.state, detail=self.detail)
        if self.served is not None and model not in self.served:
            return EngineHealth(
                "down", detail=f"the remote engine at {self.label} does not serve {model!r}"
            )
        return EngineHealth("ready", detail=self.detail, loaded=(model,))

    async def probe(self) -> None:
        """Find out whether the server answers, and which models it serves if it says.
        Any HTTP answer but a rejected key counts as reachable: older servers lack the
        listing endpoints, and a 404 still proves someone is listening."""
        client = self.require_client()
        for path in PROBE_PATHS:
            try:
                response = await client.get(path, timeout=self.http_timeout(_PROBE_TIMEOUT_S))
            except httpx.HTTPError as exc:
                self.mark_down(_unreachable_detail(self.label, exc))
                return
            if response.status_code in (401, 403):
                self.mark_down("the remote engine rejected the API key")
                return
            if response.is_success:
                self.served = _served_models(path, response)
                self.mark_up()
                return
        self.served = None
        self.mark_up()

    # ------------------------------------------------------------- requests
    async def send(self, path: str, body: Mapping[str, Any], timeout_s: float) -> httpx.Response:
        """POST ``body`` and wait for the response head (not the body); HTTP and
        transport failures come back as typed errors here, before any output."""
        client = self.require_client()
        request = client.build_request(
            "POST", path, json=body, timeout=self.http_timeout(timeout_s)
        )
        try:
            response = await asyncio.wait_for(client.send(request, stream=True), timeout_s)
        except asyncio.TimeoutError:
            raise EngineTimeout("The remote engine did not start answering in time.") from None
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from exc
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            raise self.status_error(path, response.status_code, raw)
        self.mark_up()
        return response

    def transport_error(self, exc: httpx.HTTPError) -> EngineError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            self.mark_down(_unreachable_detail(self.label, exc))
            return EngineUnavailable(f"The remote engine at {self.label} is unreachable.")
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeout("The remote engine did not answer in time.")
        log.warning("connection to remote engine at %s broke: %r", self.label, exc)
        return EngineUnavailable(
            f"The connection to the remote engine at {self.label} was interrupted."
        )

    def status_error(self, path: str, status: int, raw: bytes) -> EngineError:
        reason = self.scrub(_server_reason(raw))
        log.warning("remote engine answered %s %s: %s", path, status, reason)
        if status in (401, 403):
            self.mark_down("the remote engine rejected the API key")
            return EngineUnavailable("The remote engine rejected the API key.")
        self.mark_up()  # it answered, so it is reachable
        if status in (400, 422):
            return BadParameter("request", f"the remote engine rejected it: {reason}")
        if status == 404:
            return EngineUnavailable(
                f"The remote engine at {self.label} does not serve this model ({reason})."
            )
        if status in (429, 503):
            return EngineUnavailable(
                f"The remote engine at {self.label} is busy; try again in a moment."
            )
        return EngineUnavailable(
            f"The remote engine at {self.label} failed (HTTP {status}); try again later."
        )

    def scrub(self, text: str) -> str:
        """Server text goes into messages and logs; a server that echoes headers must
        not leak the key through it."""
        key = self._api_key.get_secret_value() if self._api_key is not None else ""
        return text.replace(key, "[REDACTED]") if key else text

    def spawn(self, request: _Inflight, work: Coroutine[Any, Any, None]) -> None:
        request.task = asyncio.create_task(work)
        self.inflight.add(request)
        request.task.add_done_callback(lambda _task: self.inflight.discard(request))


class _Inflight:
    """One running request, so its stream can cancel it and ``close()`` can abort it."""

    def __init__(self, fail: Callable[[EngineError], None] | None = None) -> None:
        self.task: asyncio.Task[None] | None = None
        self.fail = fail

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()  # the task closes its HTTP response on the way out

    def abort(self, error: EngineError) -> None:
        if self.fail is not None:
            self.fail(error)
        self.cancel()


# ------------------------------------------------------------------ LLM


class RemoteLLMEngine:
    """Chat completions streamed from the remote server."""

    def __init__(
        self,
        connection: _Connection,
        *,
        model: str,
        max_new_tokens: int | None,
        reasoning: ReasoningMode,
    ) -> None:
        self._conn = connection
        self.model = model
        self._max_new_tokens = max_new_tokens
        self._reasoning: ReasoningMode = reasoning

    def health(self) -> EngineHealth:
        return self._conn.health_for(self.model)

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions = GenerationOptions()
    ) -> LLMStream:
        """Send the request and wait for the response head, so a refused request raises
        here; the text then streams in a background task."""
        timeout_s = options.timeout_s if options.timeout_s is not None else self._conn.timeout_s
        started = time.monotonic()
        body = chat_body(self.model, messages, options, self._max_new_tokens)
        response = await self._conn.send(CHAT_PATH, body, timeout_s)
        try:
            inflight = _Inflight()
            stream = LLMStream(
                request_id=uuid.uuid4().hex[:12],
                on_cancel=inflight.cancel,
                starts_in_reasoning=False,  # _ReasoningFramer adds the opening tag if needed
                expects_json=options.json_schema is not None,
                timeout_s=max(started + timeout_s - time.monotonic(), 0.0),
            )
            inflight.fail = stream.fail
            turn = _ChatTurn(stream, _ReasoningFramer(stream.feed, self._reasoning), started)
            self._conn.spawn(inflight, self._pump(response, turn))
        except BaseException:
            await response.aclose()  # nobody else will read or close it
            raise
        return stream

    async def _pump(self, response: httpx.Response, turn: _ChatTurn) -> None:
        try:
            async for line in response.aiter_lines():
                event = parse_sse_line(line)
                if event is _DONE:
                    turn.saw_done = True
                    break
                if event is not None:
                    turn.handle(event)
            turn.end(self._conn.label)
        except asyncio.CancelledError:
            raise
        except httpx.HTTPError as exc:
            turn.stream.fail(self._conn.transport_error(exc))
        except _BadAnswer as exc:
            reason = self._conn.scrub(str(exc))
            log.warning("unreadable answer from %s: %s", self._conn.label, reason)
            turn.stream.fail(
                EngineUnavailable(f"The remote engine at {self._conn.label} sent a broken answer.")
            )
        except Exception:
            log.exception("reading the answer from %s failed", self._conn.label)
            turn.stream.fail(EngineUnavailable("Reading the remote engine's answer failed."))
        finally:
            await response.aclose()


def chat_body(
    model: str,
    messages: Sequence[ChatMessage],
    options: GenerationOptions,
    default_max_tokens: int | None,
) -> dict[str, Any]:
    """The request body. ``max_tokens`` rather than ``max_completion_tokens`` because
    every OVMS release and other OpenAI-compatible servers accept it; non-standard fields
    are only sent when used, since strict servers reject unknown ones."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    max_tokens = options.max_new_tokens or default_max_tokens
    if max_tokens:
        body["max_tokens"] = max_tokens
    if options.seed is not None:
        body["seed"] = options.seed
    if options.ignore_eos:
        body["ignore_eos"] = True
    if options.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": dict(options.json_schema), "strict": True},
        }
    return body


_DONE = object()


def parse_sse_line(line: str) -> Any:
    """One line of the event stream: a decoded chunk, ``_DONE``, or None for anything
    that carries no data (blank separators, comments, ``event:`` lines)."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload:
        return None
    if payload == "[DONE]":
        return _DONE
    try:
        chunk = json.loads(payload)
    except ValueError as exc:
        raise _BadAnswer(f"event is not JSON: {payload[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise _BadAnswer("event is not a JSON object")
    return chunk


class _ChatTurn:
    """The state of one streamed completion: routes text to the stream and keeps what
    the metrics need (first-token time, usage, finish reason)."""

    def __init__(self, stream: LLMStream, framer: _ReasoningFramer, started: float) -> None:
        self.stream = stream
        self._framer = framer
        self._started = started
        self._first_token_at: float | None = None
        self._text_chunks = 0
        self._usage: Mapping[str, Any] = {}
        self.finish_reason: str | None = None
        self.saw_done = False

    def handle(self, chunk: Mapping[str, Any]) -> None:
        if chunk.get("error"):
            raise _BadAnswer(f"error event: {_reason_from(chunk)}")
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._note_text()
                self._framer.reasoning(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._note_text()
                self._framer.content(content)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def end(self, label: str) -> None:
        """Finish the stream, unless the server went quiet before saying it was done."""
        if self.finish_reason is None and not self.saw_done:
            self.stream.fail(
                EngineUnavailable(
                    f"The answer from the remote engine at {label} was interrupted "
                    "before it finished."
                )
            )
            return
        self._framer.finish()
        self.stream.finish(self._metrics())

    def _note_text(self) -> None:
        self._text_chunks += 1
        if self._first_token_at is None:
            self._first_token_at = time.monotonic()

    def _metrics(self) -> LLMMetrics:
        finish: FinishReason = "length" if self.finish_reason == "length" else "stop"
        generated = _as_int(self._usage.get("completion_tokens"), self._text_chunks)
        return LLMMetrics(
            prompt_tokens=_as_int(self._usage.get("prompt_tokens"), 0),
            generated_tokens=generated,
            ttft_s=None if self._first_token_at is None else self._first_token_at - self._started,
            duration_s=time.monotonic() - self._started,
            finish_reason=finish,
        )


class _ReasoningFramer:
    """Rewrites the server's ways of marking reasoning into the one the stream's
    splitter reads: a leading ``<think>...</think>`` block (see the module docstring)."""

    def __init__(self, feed: Callable[[str], None], mode: ReasoningMode) -> None:
        self._feed = feed
        self._mode = mode
        self._state: Literal["undecided", "reasoning_field", "open"] = "undecided"
        self._held = ""

    def reasoning(self, text: str) -> None:
        if self._state == "undecided" and not self._held.strip():
            self._held = ""
            self._state = "reasoning_field"
            self._feed(OPEN_THINK)
        if self._state == "reasoning_field":
            self._feed(text.replace(CLOSE_THINK, ""))  # a stray tag would end it early
        else:
            log.debug("dropped %d reasoning chars that arrived after the answer", len(text))

    def content(self, text: str) -> None:
        if self._state == "open":
            self._feed(text)
        elif self._state == "reasoning_field":
            self._state = "open"
            self._feed(CLOSE_THINK + text)
        else:
            self._held += text
            self._decide(final=False)

    def finish(self) -> None:
        if self._state == "undecided":
            self._decide(final=True)

    def _decide(self, final: bool) -> None:
        head = self._held.lstrip()
        if self._mode == "inline" or head.startswith(OPEN_THINK):
            self._release(self._held)  # the splitter handles a leading tag itself
        elif OPEN_THINK.startswith(head) and not final:
            return  # nothing yet, or the beginning of "<think>"
        elif self._mode == "prompt" or CLOSE_THINK in self._held:
            self._release(OPEN_THINK + self._held)
        elif final:
            self._release(self._held)

    def _release(self, text: str) -> None:
        self._state = "open"
        self._held = ""
        if text:
            self._feed(text)


# ------------------------------------------------------------------ images


class RemoteImageEngine:
    """Text-to-image through ``/v3/images/generations`` with OVMS's extra fields."""

    def __init__(self, connection: _Connection, *, model: str, limits: ImageLimits) -> None:
        self._conn = connection
        self.model = model
        self.limits = limits

    def health(self) -> EngineHealth:
        return self._conn.health_for(self.model)

    async def generate(self, request: ImageRequest) -> ImageJob:
        """Validate first (no HTTP for a bad request). The server answers only when the
        picture is done, so HTTP errors arrive through the job, except that a server
        known to be down is probed again here and refused at once if still down."""
        resolved = request.resolve(self.limits)
        self._conn.require_client()
        if self._conn.state == "down":
            await self._conn.probe()
            if self._conn.state == "down":
                raise EngineUnavailable(f"The remote engine is unavailable: {self._conn.detail}.")
        timeout_s = resolved.timeout_s if resolved.timeout_s is not None else self._conn.timeout_s
        inflight = _Inflight()
        job = ImageJob(request=resolved, on_cancel=inflight.cancel, timeout_s=timeout_s)
        inflight.fail = job.fail
        assert resolved.steps is not None
        job.progress(0, resolved.steps)
        self._conn.spawn(inflight, self._run(job, timeout_s, time.monotonic()))
        return job

    async def _run(self, job: ImageJob, timeout_s: float, started: float) -> None:
        request = job.request
        try:
            body = image_body(self.model, request)
            response = await self._conn.send(IMAGES_PATH, body, timeout_s)
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            png = await asyncio.to_thread(_png_from_answer, raw, (request.width, request.height))
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            job.fail(exc)
        except httpx.HTTPError as exc:
            job.fail(self._conn.transport_error(exc))
        except _BadAnswer as exc:
            log.warning("unreadable image answer from %s: %s", self._conn.label, exc)
            job.fail(
                EngineUnavailable(f"The remote engine at {self._conn.label} sent a broken image.")
            )
        except Exception:
            log.exception("image request to %s failed", self._conn.label)
            job.fail(EngineUnavailable("The image request to the remote engine failed."))
        else:
            assert request.steps is not None
            job.progress(request.steps, request.steps)
            job.finish(ImageResult(png, request, time.monotonic() - started))


def image_body(model: str, request: ImageRequest) -> dict[str, Any]:
    """The request body for a resolved request. OVMS rejects unknown fields and wants
    ``guidance_scale`` as a JSON float (``7.0``, not ``7``)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "size": f"{request.width}x{request.height}",
        "n": 1,
        "response_format": "b64_json",
        "num_inference_steps": request.steps,
        "guidance_scale": float(request.cfg if request.cfg is not None else 0.0),
        "rng_seed": request.seed,
    }
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    return body


def _png_from_answer(raw: bytes, expected: tuple[int | None, int | None]) -> bytes:
    """PNG bytes from the JSON answer, converting other formats: callers store and send
    PNG. Runs in a thread because decoding a picture is CPU work."""
    try:
        answer = json.loads(raw)
        encoded = answer["data"][0]["b64_json"]
        data = base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise _BadAnswer(f"no base64 image in the answer ({exc.__class__.__name__})") from exc
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != expected:
                log.warning("remote image is %s, %s was requested", image.size, expected)
            if image.format == "PNG" and data.startswith(_PNG_SIGNATURE):
                return data
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise _BadAnswer("the image does not decode") from exc


# ------------------------------------------------------------------ both engines


class RemoteEngines:
    """Both engines over one ``httpx.AsyncClient``, with one lifecycle.

    ``start()`` probes the server but does not fail when it is down: the bot can start
    before the server, health reports "down" and each request tries again.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | str | None = None,
        llm_model: str,
        image_model: str,
        timeout_s: float = 600.0,
        image_limits: ImageLimits = ImageLimits(),
        max_new_tokens: int | None = None,
        reasoning: ReasoningMode = "auto",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        self._conn = _Connection(
            base_url=base_url, api_key=api_key, timeout_s=timeout_s, transport=transport
        )
        self.llm = RemoteLLMEngine(
            self._conn, model=llm_model, max_new_tokens=max_new_tokens, reasoning=reasoning
        )
        self.image = RemoteImageEngine(self._conn, model=image_model, limits=image_limits)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> RemoteEngines:
        if not settings.remote_base_url:
            raise SettingsError("Invalid settings:\n  OVBOT_REMOTE_BASE_URL: is not set")
        return cls(
            base_url=settings.remote_base_url,
            api_key=settings.remote_api_key,
            llm_model=settings.remote_llm_model,
            image_model=settings.remote_image_model,
            timeout_s=settings.remote_timeout_s,
            image_limits=settings.image_limits(),
            max_new_tokens=settings.max_new_tokens,
            reasoning=settings.remote_reasoning,
            transport=transport,
        )

    @property
    def label(self) -> str:
        """Where the server is (scheme, host, port): safe to show and log."""
        return self._conn.label

    async def start(self) -> None:
        self._conn.open()
        await self._conn.probe()

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> RemoteEngines:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RemoteEngines({self._conn.label}, state={self._conn.state})"


# ------------------------------------------------------------------ helpers


def _strip_api_suffix(base_url: str) -> str:
    """Accept ``http://host:8000`` as well as the OpenAI-client style ``.../v3``."""
    base = base_url.rstrip("/")
    return base[: -len("/v3")] if base.endswith("/v3") else base


def _unreachable_detail(label: str, exc: httpx.HTTPError) -> str:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "refused or failed"
    return f"the remote engine at {label} is unreachable (connection {kind})"


def _served_models(path: str, response: httpx.Response) -> frozenset[str] | None:
    """Model ids from an OpenAI model list; other probes only prove reachability."""
    if path != "/v3/models":
        return None
    try:
        entries = response.json().get("data")
        return frozenset(str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e)
    except (ValueError, AttributeError, TypeError):
        return None


def _server_reason(raw: bytes) -> str:
    """The server's own explanation, short: OpenAI's ``{"error": {"message"}}``, OVMS's
    ``{"error": "..."}`` or plain text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    reason = _reason_from(parsed) if isinstance(parsed, dict) else text
    reason = " ".join(reason.split()) or "no reason given"
    return reason if len(reason) <= _MAX_REASON_CHARS else reason[:_MAX_REASON_CHARS] + "..."


def _reason_from(payload: Mapping[str, Any]) -> str:
    error = payload.get("error", payload)
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or json.dumps(error)
    return str(error)


def _as_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


__all__ = [
    "CHAT_PATH",
    "IMAGES_PATH",
    "PROBE_PATHS",
    "ReasoningMode",
    "RemoteEngines",
    "RemoteImageEngine",
    "RemoteLLMEngine",
    "chat_body",
    "image_body",
    "parse_sse_line",
]
