"""The HTTP API end to end: real uvicorn on 127.0.0.1, the real App (tiny OpenVINO
models in the engine worker, SQLite in tmp_path, the durable queue), httpx as client.

The tiny models write gibberish (often the chat service's fallback reply): these tests
check the protocol — statuses, bodies, event order, files — never the wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from PIL import Image

from ovbot.adapters.http import create_app
from ovbot.adapters.http.auth import key_id
from ovbot.core.app import App
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, LimitOverride
from tests.fixtures_app import bot_settings
from tests.sentinels import API_KEY, OTHER_API_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = API_KEY
OTHER_KEY = OTHER_API_KEY
MAX_MESSAGE_CHARS = 2000


def tiny_settings(tiny_models: Any, data_dir: Path, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        max_new_tokens=64,
        http_host="127.0.0.1",
        http_port=port,
        api_keys=[KEY, OTHER_KEY],
        max_message_chars=MAX_MESSAGE_CHARS,
        admins=[f"http:{key_id(KEY)}:boss"],
        reasoning_short_chars=400,
        reasoning_full_chars=1500,
    )
    values.update(overrides)
    return bot_settings(tiny_models, data_dir, **values)


@dataclass
class Served:
    app: App
    base_url: str
    client: httpx.AsyncClient  # authenticated with KEY


@contextlib.asynccontextmanager
async def serving(make_app: Callable[[int], App]) -> AsyncIterator[Served]:
    """Start the App, serve create_app(app) with uvicorn on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as serve binds
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = make_app(port)
    await app.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(app.bot, app.settings, app.metrics, keepalive_s=0.5),
            lifespan="off",
            log_config=None,
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        base_url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
            yield Served(app, base_url, client)
    finally:
        server.should_exit = True
        await task
        await app.shutdown()
        sock.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data_dir = tmp_path_factory.mktemp("http-api")
    async with serving(lambda port: App(tiny_settings(tiny_models, data_dir, port), stop_grace_s=5)) as running:
        yield running


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def finished_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal body
        response = await client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        return body["state"] in ("done", "failed", "cancelled")

    await wait_until(done)
    return body


async def read_sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) pairs; checks every event's type matches its data."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == kind
            events.append((kind, data))
    return events


def assert_png(content: bytes, size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    assert image.format == "PNG"
    assert image.size == size
    return image


def assert_error(response: httpx.Response, status: int, kind: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind, error
    assert error["message"], error
    if field is not None:
        assert error.get("field") == field, error
    return error


# ---------------------------------------------------------------- operations


async def test_health_ready_docs(served: Served) -> None:
    anonymous = httpx.AsyncClient(base_url=served.base_url)
    async with anonymous:
        health = await anonymous.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok", "adapters": {}}
        ready = await anonymous.get("/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True
        assert set(body["checks"]) == {"engine_llm", "engine_image", "database", "queue"}
        assert all(check["ok"] for check in body["checks"].values())
        assert body["queue"]["chat_queued"] == 0
        docs = await anonymous.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        # everything the page loads comes from this server: the docs work offline
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs.text)
        assets += re.findall(r"""url: ?['"]([^'"]+)['"]""", docs.text)
        assert assets and all(url.startswith("/") for url in assets), assets
        for url in assets:
            assert (await anonymous.get(url)).status_code == 200, url
        assert (await anonymous.get("/redoc")).status_code == 404
        schema = (await anonymous.get("/openapi.json")).json()
        assert {"/chat", "/images", "/jobs/{job_id}", "/reset"} <= set(schema["paths"])


async def test_metrics_need_the_key_and_show_queue_depth(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as anonymous:
        assert_error(await anonymous.get("/metrics"), 401, "unauthorized")
    await served.client.get("/health")
    metrics = await served.client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'ovbot_queue_jobs{kind="chat",state="queued"}' in metrics.text
    assert 'ovbot_http_requests_total{method="GET",route="/health",status="200"}' in metrics.text


# ---------------------------------------------------------------- chat


async def test_text_only_chat(served: Served) -> None:
    response = await served.client.post("/chat", json={"user_id": "alice", "message": "hello there"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"job_id", "text"}
    assert isinstance(body["text"], str) and body["text"]

    job = (await served.client.get(f"/jobs/{body['job_id']}")).json()
    assert job["kind"] == "chat" and job["state"] == "done"
    assert job["result"]["text"] == body["text"]
    assert job["position"] is None and job["error"] is None

    metrics = (await served.client.get("/metrics")).text
    assert 'ovbot_jobs_total{kind="chat",outcome="done"}' in metrics
    assert "ovbot_llm_generated_tokens_total" in metrics


async def test_chat_with_reasoning_shows_it(served: Served) -> None:
    response = await served.client.post(
        "/chat", json={"user_id": "alice", "message": "think first", "show_reasoning": True, "conversation_id": "r1"}
    )
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["reasoning"], str)


async def test_chat_with_image_links_a_png(served: Served) -> None:
    response = await served.client.post(
        "/chat",
        json={
            "user_id": "bob",
            "message": "a lighthouse at night",
            "image": {"steps": 2, "seed": 42, "width": 64, "height": 64, "cfg": 5, "negative_prompt": "blur"},
        },
    )
    assert response.status_code == 200, response.text
    image = response.json()["image"]
    assert image["status"] in ("queued", "running", "done")
    assert image["url"] == f"{served.base_url}/images/{image['job_id']}.png"

    job = await finished_job(served.client, image["job_id"])
    assert job["state"] == "done", job
    assert job["result"]["params"]["seed"] == 42

    png = await served.client.get(image["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    picture = assert_png(png.content)
    assert "seed=42" in picture.text["parameters"]
    assert picture.text["negative_prompt"] == "blur"


async def test_sse_stream_is_ordered_and_ends_with_done(served: Served) -> None:
    async with served.client.stream(
        "POST", "/chat?stream=true", json={"user_id": "carol", "message": "stream please"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        job_id = response.headers["x-job-id"]
        events = await read_sse(response)

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "queued"
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert "text" in kinds
    assert kinds.index("status") < kinds.index("text")
    assert [data["seq"] for _, data in events] == sorted(data["seq"] for _, data in events)
    streamed = "".join(data["text"] for kind, data in events if kind == "text")
    assert streamed == events[-1][1]["data"]["text"]

    # a late subscriber gets the same events replayed; Last-Event-ID skips what it saw
    async with served.client.stream("GET", f"/jobs/{job_id}/events") as replay:
        assert [kind for kind, _ in await read_sse(replay)] == kinds
    last_seen = events[1][1]["seq"]
    async with served.client.stream(
        "GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(last_seen)}
    ) as resumed:
        assert [kind for kind, _ in await read_sse(resumed)] == kinds[2:]


async def test_reset_starts_a_new_conversation(served: Served) -> None:
    response = await served.client.post("/reset", json={"user_id": "dave", "conversation_id": "c1", "forget": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"conversation_id": "c1", "forgot": True}


# ---------------------------------------------------------------- images and jobs


async def test_image_job_poll_then_png(served: Served) -> None:
    body = {"user_id": "erin", "prompt": "a red cube", "steps": 3, "seed": 7}
    response = await served.client.post("/images", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["url"] == f"{served.base_url}/images/{accepted['job_id']}.png"

    job = await finished_job(served.client, accepted["job_id"])
    assert job["state"] == "done", job
    assert job["result"]["params"]["steps"] == 3
    assert job["result"]["url"] == accepted["url"]

    by_job = await served.client.get(accepted["url"])
    assert by_job.status_code == 200
    assert_png(by_job.content)
    by_image_id = await served.client.get(f"/images/{job['result']['image_id']}.png")
    assert by_image_id.content == by_job.content

    # another key's client cannot see the job or its picture
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert_error(await served.client.get(f"/jobs/{accepted['job_id']}", headers=other), 404, "not_found")
    assert_error(await served.client.get(accepted["url"], headers=other), 404, "not_found")


async def test_unknown_job_and_image_are_404(served: Served) -> None:
    assert_error(await served.client.get("/jobs/0123456789abcdef"), 404, "not_found")
    assert_error(await served.client.get("/jobs/0123456789abcdef/events"), 404, "not_found")
    assert_error(await served.client.get("/images/0123456789abcdef.png"), 404, "not_found")
    assert_error(await served.client.delete("/jobs/0123456789abcdef?user_id=x"), 404, "not_found")
    assert_error(await served.client.get("/no/such/endpoint"), 404, "not_found")


async def test_cancel_queued_and_running_jobs_only_by_their_owner(served: Served) -> None:
    submitted = []
    for prompt, steps in (("slow", 500), ("waiting", 1)):
        response = await served.client.post("/images", json={"user_id": "frank", "prompt": prompt, "steps": steps})
        assert response.status_code == 202, response.text
        submitted.append(response.json()["job_id"])
    running, queued = submitted
    waiting = (await served.client.get(f"/jobs/{queued}")).json()
    assert waiting["state"] == "queued" and waiting["position"] == 1, waiting
    assert waiting["eta_s"] is not None

    # same key, another user: forbidden; another key: the job does not exist for it
    assert_error(await served.client.delete(f"/jobs/{queued}?user_id=mallory"), 403, "forbidden")
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert_error(await served.client.delete(f"/jobs/{queued}?user_id=frank", headers=other), 404, "not_found")

    cancelled = await served.client.delete(f"/jobs/{queued}?user_id=frank")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    async with served.client.stream("GET", f"/jobs/{queued}/events") as events:
        assert (await read_sse(events))[-1][0] == "cancelled"
    assert_error(await served.client.get(f"/images/{queued}.png"), 404, "not_found")

    # the running one reports its progress, then stops when cancelled
    async def progressing() -> bool:
        job = (await served.client.get(f"/jobs/{running}")).json()
        return job["state"] == "running" and job["progress"] is not None and job["progress"]["step"] >= 1

    await wait_until(progressing)
    job = (await served.client.get(f"/jobs/{running}")).json()
    assert job["position"] == 0 and 1 <= job["progress"]["step"] <= job["progress"]["total"] == 500
    stopped = await served.client.delete(f"/jobs/{running}?user_id=frank")
    assert stopped.status_code == 200 and stopped.json()["state"] == "cancelled", stopped.text
    assert stopped.json()["progress"] is None


# ---------------------------------------------------------------- bad input and abuse


async def test_bad_inputs_get_clear_4xx_and_the_server_keeps_serving(served: Served) -> None:
    client = served.client
    cases: list[tuple[str, dict[str, Any], int, str, str | None]] = [
        ("/chat", {"user_id": "gina", "message": ""}, 422, "validation", "message"),
        ("/chat", {"user_id": "gina", "message": "   "}, 400, "invalid_input", "message"),
        ("/chat", {"user_id": "gina", "message": "x" * (MAX_MESSAGE_CHARS + 1)}, 400, "invalid_input", "message"),
        ("/chat", {"user_id": "gina", "message": "x" * 150_000}, 422, "validation", "message"),
        ("/chat", {"user_id": "gina"}, 422, "validation", "message"),
        ("/chat", {"user_id": "gina", "message": "hi", "stpes": 3}, 422, "validation", "stpes"),
        ("/chat", {"user_id": "gi na", "message": "hi"}, 422, "validation", "user_id"),
        ("/chat", {"user_id": "gina", "message": "hi", "image": {"width": 128}}, 422, "bad_parameter", "size"),
        ("/chat", {"user_id": "gina", "message": "hi", "image": {"steps": 501}}, 422, "bad_parameter", "steps"),
        ("/images", {"user_id": "gina", "prompt": "cat", "width": 100, "height": 64}, 422, "bad_parameter", "size"),
        ("/images", {"user_id": "gina", "prompt": "cat", "steps": 0}, 422, "bad_parameter", "steps"),
        ("/images", {"user_id": "gina", "prompt": "cat", "steps": "many"}, 422, "validation", "steps"),
        ("/images", {"user_id": "gina", "prompt": "cat", "cfg": 1000}, 422, "bad_parameter", "cfg"),
        ("/reset", {"user_id": "gina", "forget": "perhaps"}, 422, "validation", "forget"),
    ]
    for path, body, status, kind, field in cases:
        error = assert_error(await client.post(path, json=body), status, kind, field)
        assert "x" * 100 not in error["message"], "the input must not be echoed"
    missing = assert_error(await client.post("/chat", json={"user_id": "gina"}), 422, "validation")
    assert missing["message"] == "message: field required"

    as_json = {"Content-Type": "application/json"}
    malformed = await client.post("/chat", content=b'{"user_id": "gina",', headers=as_json)
    assert_error(malformed, 400, "malformed_json")
    assert_error(await client.post("/chat", content=b"hello"), 400, "malformed_json")
    huge = await client.post("/chat", content=b"x" * 600_000, headers=as_json)
    assert_error(huge, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b" " * 100_000

    assert_error(await client.post("/chat", content=chunks(), headers=as_json), 413, "payload_too_large")
    assert_error(await client.put("/chat", json={}), 405, "method_not_allowed")

    # nothing was queued or charged for any of these, and a good request still works
    assert (await client.get("/ready")).json()["queue"]["chat_queued"] == 0
    good = await client.post("/chat", json={"user_id": "gina", "message": "hello"})
    assert good.status_code == 200, good.text


async def test_unexpected_error_is_a_generic_500_logged_with_the_request_id(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("internal detail that must stay on the server")

    monkeypatch.setattr(served.app.service, "reset", broken)
    response = await served.client.post("/reset", json={"user_id": "max"})
    error = assert_error(response, 500, "internal")
    assert "internal detail" not in response.text
    assert error["request_id"] == response.headers["x-request-id"]
    logged = [r for r in caplog.records if r.name == "ovbot.http" and r.exc_info]
    assert logged and error["request_id"] in logged[0].getMessage()

    monkeypatch.undo()
    assert (await served.client.post("/reset", json={"user_id": "max"})).status_code == 200


async def test_api_key_required_and_never_echoed(served: Served) -> None:
    body = {"user_id": "hank", "message": "hi"}
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as anonymous:
        missing = await anonymous.post("/chat", json=body)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong_key = "wrong-key-but-long-enough-1234"
        wrong = await anonymous.post("/chat", json=body, headers={"Authorization": f"Bearer {wrong_key}"})
        assert_error(wrong, 401, "unauthorized")
        assert wrong_key not in wrong.text
        basic = await anonymous.post("/chat", json=body, headers={"Authorization": "Basic aGFuazpodW5rCg=="})
        assert_error(basic, 401, "unauthorized")
        # a bad key is refused before the body is even looked at
        unread = await anonymous.post("/chat", content=b"{", headers={"Authorization": "Bearer nope"})
        assert_error(unread, 401, "unauthorized")
    good = await served.client.post("/chat", json=body)
    assert good.status_code == 200, good.text


async def test_users_are_namespaced_by_key(served: Served) -> None:
    response = await served.client.post("/images", json={"user_id": "ivy", "prompt": "a tree", "steps": 1})
    job = await served.app.store.get_job(response.json()["job_id"])
    assert job is not None
    assert job.user.key == f"http:{key_id(KEY)}:ivy"
    assert job.chat.chat_id == f"{key_id(KEY)}:ivy"
    assert KEY not in job.user.key and len(key_id(KEY)) == 12
    await finished_job(served.client, job.id)


async def test_rate_limit_is_429_with_retry_after(served: Served) -> None:
    user_key = f"http:{key_id(KEY)}:jack"
    await served.app.store.set_limit_override(LimitOverride(user_key, chat_per_window=1, images_per_day=0))
    first = await served.client.post("/chat", json={"user_id": "jack", "message": "one"})
    assert first.status_code == 200, first.text
    second = await served.client.post("/chat", json={"user_id": "jack", "message": "two"})
    assert_error(second, 429, "rate_limited")
    assert int(second.headers["retry-after"]) >= 1
    # images are turned off for this user: waiting would not help
    assert_error(await served.client.post("/images", json={"user_id": "jack", "prompt": "x"}), 403, "forbidden")
    metrics = (await served.client.get("/metrics")).text
    assert 'ovbot_errors_total{kind="rate_limited",source="http"}' in metrics


async def test_queue_full_is_429_with_retry_after(served: Served) -> None:
    limit = served.app.settings.max_queued_per_user
    accepted: list[str] = []
    for n in range(limit + 1):  # the first runs (500 steps), then `limit` wait
        response = await served.client.post("/images", json={"user_id": "kate", "prompt": f"p{n}", "steps": 500})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["job_id"])
    refused = await served.client.post("/images", json={"user_id": "kate", "prompt": "one more"})
    assert_error(refused, 429, "queue_full")
    assert int(refused.headers["retry-after"]) >= 1
    for job_id in reversed(accepted):
        assert (await served.client.delete(f"/jobs/{job_id}?user_id=kate")).json()["state"] == "cancelled"


# ---------------------------------------------------------------- lifecycle


async def test_ready_fails_when_engines_close_and_waiters_get_503_at_stop(
    tiny_models: Any, tmp_path: Path
) -> None:
    async with serving(lambda port: App(tiny_settings(tiny_models, tmp_path, port, api_keys=[]))) as running:
        client, app = running.client, running.app
        assert (await client.get("/ready")).status_code == 200

        # a chat waiting on a job the queue releases at stop: 503 naming the job
        waiter = asyncio.create_task(client.post("/chat", json={"user_id": "liz", "message": "long"}))

        async def chat_running() -> bool:
            return app.queue.depth()["chat_running"] == 1

        await wait_until(chat_running)
        await app.stop(grace_s=0)
        released = await waiter
        error = assert_error(released, 503, "shutting_down")
        assert released.headers["retry-after"] == "30"
        job = (await client.get(f"/jobs/{error['job_id']}")).json()
        assert job["state"] == "queued"  # durable: it runs after the next start
        stopped = await client.get("/ready")
        assert stopped.status_code == 503 and stopped.json()["checks"]["queue"]["ok"] is False
        assert_error(await client.post("/chat", json={"user_id": "liz", "message": "hi"}), 503, "queue_closed")

        await app.start()
        assert (await finished_job(client, error["job_id"]))["state"] == "done"
        assert (await client.get("/ready")).status_code == 200

        await app.engines.close()
        down = await client.get("/ready")
        assert down.status_code == 503
        checks = down.json()["checks"]
        assert checks["engine_llm"]["ok"] is False and checks["database"]["ok"] is True
        assert (await client.get("/health")).status_code == 200


async def test_usage_and_admin_limits_at_run_time(served: Served) -> None:
    client = served.client
    usage = await client.get("/usage", params={"user_id": "limited"})
    assert usage.status_code == 200, usage.text
    assert usage.json()["chat"]["used"] == 0

    target = f"http:{key_id(KEY)}:limited"
    denied = await client.put(f"/admin/limits/{target}", json={"user_id": "limited", "chat_per_window": 9})
    assert_error(denied, 403, "forbidden")
    assert_error(await client.get(f"/admin/limits/{target}", params={"user_id": "limited"}), 403, "forbidden")
    bad = await client.put(f"/admin/limits/{target}", json={"user_id": "boss", "chat_per_window": -1})
    assert bad.status_code == 422, bad.text

    changed = await client.put(f"/admin/limits/{target}", json={"user_id": "boss", "chat_per_window": 0})
    assert changed.status_code == 200, changed.text
    shown = await client.get(f"/admin/limits/{target}", params={"user_id": "boss"})
    assert shown.json()["override"]["chat_per_window"] == 0
    refused = await client.post("/chat", json={"user_id": "limited", "message": "hello"})
    assert_error(refused, 403, "forbidden")

    reset = await client.delete(f"/admin/limits/{target}", params={"user_id": "boss"})
    assert reset.status_code == 200 and reset.json()["override"] is None
    again = await client.post("/chat", json={"user_id": "limited", "message": "hello"})
    assert again.status_code == 200, again.text


async def test_persona_is_set_cleared_and_bounded(served: Served) -> None:
    client = served.client
    ok = await client.post("/persona", json={"user_id": "poet", "persona": "Answer like a pirate."})
    assert ok.status_code == 200 and ok.json()["persona"] == "Answer like a pirate."
    assert await served.app.store.get_persona(ChatRef("http", f"{key_id(KEY)}:poet")) == "Answer like a pirate."
    too_long = await client.post("/persona", json={"user_id": "poet", "persona": "x" * 5000})
    assert_error(too_long, 400, "invalid_input", "persona")
    cleared = await client.post("/persona", json={"user_id": "poet", "persona": None})
    assert cleared.status_code == 200
    assert await served.app.store.get_persona(ChatRef("http", f"{key_id(KEY)}:poet")) is None
    reply = await client.post("/chat", json={"user_id": "poet", "message": "ahoy"})
    assert reply.status_code == 200, reply.text


async def test_admins_and_blocks_over_http(served: Served) -> None:
    client = served.client
    target = f"http:{key_id(KEY)}:pest"
    assert_error(await client.put(f"/admin/blocked/{target}", params={"user_id": "pest"}), 403, "forbidden")
    blocked = await client.put(f"/admin/blocked/{target}", params={"user_id": "boss"})
    assert blocked.status_code == 200 and blocked.json() == {"blocked": target}
    assert target in (await client.get("/admin/blocked", params={"user_id": "boss"})).json()["blocked"]
    refused = assert_error(await client.post("/chat", json={"user_id": "pest", "message": "hi"}), 403, "forbidden")
    assert refused["message"] == "You have been blocked from using this bot."
    assert (await client.delete(f"/admin/blocked/{target}", params={"user_id": "boss"})).status_code == 200
    assert (await client.post("/chat", json={"user_id": "pest", "message": "hi"})).status_code == 200

    helper = f"http:{key_id(KEY)}:helper"
    assert (await client.put(f"/admin/admins/{helper}", params={"user_id": "boss"})).status_code == 200
    assert helper in (await client.get("/admin/admins", params={"user_id": "helper"})).json()["admins"]
    assert (await client.delete(f"/admin/admins/{helper}", params={"user_id": "boss"})).status_code == 200
    assert_error(await client.get("/admin/admins", params={"user_id": "helper"}), 403, "forbidden")


async def test_conversations_belong_to_their_user(served: Served) -> None:
    """A's turns never land in B's conversation, whatever conversation id A sends."""
    client = served.client
    await client.post("/persona", json={"user_id": "bea", "persona": "Speak like a sailor."})
    sneaky = await client.post("/persona", json={"user_id": "abe", "conversation_id": "bea", "persona": "hijacked"})
    assert sneaky.status_code == 200
    assert await served.app.store.get_persona(ChatRef("http", f"{key_id(KEY)}:bea")) == "Speak like a sailor."
    reply = await client.post("/chat", json={"user_id": "abe", "conversation_id": "bea", "message": "secret plan"})
    assert reply.status_code == 200, reply.text
    bea_conversation = await served.app.store.active_conversation(ChatRef("http", f"{key_id(KEY)}:bea"))
    assert await served.app.store.recent_turns(bea_conversation, 10) == []
    forget = await client.post("/reset", json={"user_id": "abe", "conversation_id": "bea", "forget": True})
    assert forget.status_code == 200
    assert await served.app.store.get_persona(ChatRef("http", f"{key_id(KEY)}:bea")) == "Speak like a sailor."


async def test_reasoning_mode_per_conversation_and_queue(served: Served) -> None:
    client = served.client
    bad = await client.post("/think", json={"user_id": "tess", "mode": "sometimes"})
    assert_error(bad, 422, "validation", "mode")
    set_off = await client.post("/think", json={"user_id": "tess", "mode": "off"})
    assert set_off.status_code == 200 and set_off.json()["mode"] == "off"
    reply = await client.post("/chat", json={"user_id": "tess", "message": "quick"})
    job = await served.app.store.get_job(reply.json()["job_id"])
    assert job is not None and job.payload["reasoning"] == "off"
    once = await client.post("/chat", json={"user_id": "tess", "message": "slow", "reasoning": "full"})
    job = await served.app.store.get_job(once.json()["job_id"])
    assert job is not None and job.payload["reasoning"] == "full"

    running = await client.post("/images", json={"user_id": "tess", "prompt": "slow", "steps": 500})
    waiting = await client.post("/images", json={"user_id": "tess", "prompt": "next", "steps": 1})
    mine = (await client.get("/queue", params={"user_id": "tess"})).json()
    assert [view["job_id"] for view in mine] == [running.json()["job_id"], waiting.json()["job_id"]]
    assert mine[1]["position"] == 1
    for accepted in (waiting, running):
        await client.delete(f"/jobs/{accepted.json()['job_id']}", params={"user_id": "tess"})


async def test_strict_types_bounded_limits_and_clean_user_keys(served: Served) -> None:
    client = served.client
    for body, field in (
        ({"user_id": "sam", "prompt": "cat", "steps": "5"}, "steps"),
        ({"user_id": "sam", "prompt": "cat", "steps": True}, "steps"),
        ({"user_id": "sam", "prompt": "cat", "seed": 1.5}, "seed"),
    ):
        assert_error(await client.post("/images", json=body), 422, "validation", field)
    assert_error(await client.post("/reset", json={"user_id": "sam", "forget": "yes"}), 422, "validation", "forget")
    assert (await client.post("/images", json={"user_id": "sam", "prompt": "cat", "cfg": 5, "steps": 1})).status_code == 202

    target = f"http:{key_id(KEY)}:sam"
    huge = await client.put(f"/admin/limits/{target}", json={"user_id": "boss", "chat_per_window": 2**70})
    error = assert_error(huge, 400, "invalid_input", "chat_per_window")
    assert "1,000,000" in error["message"]
    for bad_key in ("http:abc%00def", "http:a%1bb", "nocolon"):
        response = await client.get(f"/admin/limits/{bad_key}", params={"user_id": "boss"})
        assert response.status_code in (400, 422), (bad_key, response.text)
    pattern = await client.get("/admin/limits/NOPE:x", params={"user_id": "boss"})
    assert "platform:user_id" in assert_error(pattern, 422, "validation", "user_key")["message"]
    bad_id = assert_error(await client.post("/chat", json={"user_id": "a b", "message": "hi"}), 422, "validation")
    assert "letters, digits" in bad_id["message"]
