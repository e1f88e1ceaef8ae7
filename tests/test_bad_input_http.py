"""The bad-input corpus over HTTP (tests/bad_inputs.py): each case against the real
uvicorn server on the real App (tiny models, SQLite), one server for the module. Every
answer is a normal one or a clear JSON error; nothing is a 5xx, a traceback or an echo
of what was sent. After the corpus the server still serves and the store is sound.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from ovbot.adapters.http.auth import key_id
from ovbot.core.app import App
from ovbot.models.tiny import TinyModels
from tests.bad_inputs import HTTP_CASES, HttpCase, ids
from tests.corpus_outcomes import ROOMY_SETTINGS
from tests.store_checks import job_counts, queue_idle, store_problems
from tests.test_http_api import KEY, OTHER_KEY, Served, finished_job, serving, tiny_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: each case's HTTP status, for the figures
Outcomes = dict[str, int]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data_dir = tmp_path_factory.mktemp("bad-input-http")
    async with serving(lambda port: App(tiny_settings(tiny_models, data_dir, port, **ROOMY_SETTINGS), stop_grace_s=5)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def placeholders(served: Served) -> dict[str, str]:
    """Real ids the path-like cases point at: a finished job of this key's user
    ``owner`` and one of another API key."""
    own = await served.client.post("/images", json={"user_id": "owner", "prompt": "a cube", "steps": 1})
    other = await served.client.post(
        "/images",
        json={"user_id": "owner", "prompt": "a ball", "steps": 1},
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
    )
    assert own.status_code == other.status_code == 202, (own.text, other.text)
    await finished_job(served.client, own.json()["job_id"])
    return {"{own_job}": own.json()["job_id"], "{other_job}": other.json()["job_id"], "{boss}": f"{key_id(KEY)}:boss"}


@pytest.fixture(scope="module")
def outcomes() -> Outcomes:
    return {}


def assert_clear_error(case: HttpCase, response: httpx.Response) -> None:
    """A JSON error a person can act on: a kind, a short message, no internals."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["kind"], str) and error["kind"] not in ("internal", "http_error"), error
    message = error["message"]
    assert isinstance(message, str) and 5 <= len(message) <= 1000, error
    assert "Traceback" not in message and 'File "' not in message, error
    sent = (case.content() or b"").decode("utf-8", "replace") + case.path
    assert not echoed(message, sent), "the error echoes what was sent"
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if response.status_code == 429:
        assert int(response.headers["retry-after"]) >= 1


def echoed(message: str, sent: str, width: int = 80) -> bool:
    """Whether ``message`` quotes ``width`` characters in a row of ``sent`` (naming a
    short path or field is fine; repeating a long input is not)."""
    starts = range(0, len(sent) - width + 1, width // 2)
    return any(sent[start : start + width] in message for start in starts)


@pytest.mark.parametrize("case", HTTP_CASES, ids=ids(HTTP_CASES))
async def test_bad_http_input_gets_a_clear_answer(
    case: HttpCase, served: Served, placeholders: dict[str, str], outcomes: Outcomes
) -> None:
    path = case.path
    for name, value in placeholders.items():
        path = path.replace(name, value)
    headers = {"Authorization": f"Bearer {KEY}"} if case.authorized else {}
    if case.content() is not None:
        headers["Content-Type"] = "application/json"
    headers.update(case.headers)
    request = httpx.Request(  # built by hand: the client's own headers (its key) stay out
        case.method,
        served.base_url + path,
        params=case.params or None,
        content=case.content(),
        headers={name: value.encode("latin-1") for name, value in headers.items()},
    )
    response = await served.client.send(request)
    outcomes[case.id] = response.status_code
    assert response.status_code < 500, response.text[:500]
    assert response.status_code in case.allowed, response.text[:500]
    if response.status_code >= 400:
        assert_clear_error(case, response)
    elif response.headers.get("content-type", "").startswith("application/json"):
        assert isinstance(response.json(), (dict, list))


async def test_after_the_corpus_the_server_serves_and_the_store_is_consistent(
    served: Served, outcomes: Outcomes
) -> None:
    await queue_idle(served.app)
    assert (await served.client.get("/health")).status_code == 200
    ready = await served.client.get("/ready")
    assert ready.status_code == 200, ready.text
    good = await served.client.post("/chat", json={"user_id": "afterwards", "message": "hello"})
    assert good.status_code == 200 and good.json()["text"], good.text
    await queue_idle(served.app)
    assert store_problems(served.app.settings.database_path, served.app.settings.data_dir) == []

    errors = sum(1 for status in outcomes.values() if status >= 400)
    figures = {
        "cases": len(outcomes),
        "normal answers": len(outcomes) - errors,
        "errors": errors,
        "5xx": sum(1 for status in outcomes.values() if status >= 500),
        "jobs": job_counts(served.app.settings.database_path),
    }
    print("bad-input corpus, HTTP:", json.dumps(figures))
    assert figures["5xx"] == 0
