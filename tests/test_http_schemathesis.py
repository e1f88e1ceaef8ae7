"""schemathesis against the HTTP API's own OpenAPI schema: generated requests (valid ones
and deliberately broken ones) to every operation of the real uvicorn server on the real
App, with an API key. Every answer must be a non-5xx response that conforms to the
schema the server publishes.

schemathesis' requests are blocking (``requests``); they run in a worker thread while
the event loop keeps serving them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ovbot.core.app import App
from ovbot.models.tiny import TinyModels
from tests.corpus_outcomes import ROOMY_SETTINGS
from tests.test_http_api import KEY, Served, serving, tiny_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: examples per generation mode, over all operations together: ~20 s on the tiny models
EXAMPLES_PER_MODE = 400
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance, response_headers_conformance]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    overrides: dict[str, Any] = dict(ROOMY_SETTINGS, image_max_steps=2)
    async with serving(lambda port: App(tiny_settings(tiny_models, data_dir, port, **overrides), stop_grace_s=5)) as running:
        yield running


@dataclass
class Tally:
    """What one schemathesis run tried and what broke (kept for the report's figures)."""

    examples: int = 0
    operations: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)


def run_schemathesis(schema_dict: dict[str, Any], base_url: str, mode: GenerationMode, tally: Tally) -> None:
    schema = schemathesis.openapi.from_dict(schema_dict)
    session = requests.Session()
    auth = {"Authorization": f"Bearer {KEY}"}

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def each(case: schemathesis.Case) -> None:
        tally.examples += 1
        tally.operations.add(case.operation.label)
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=auth, checks=CHECKS, timeout=60
        )
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1

    each()


def run_streamed_chat(schema_dict: dict[str, Any], base_url: str) -> int:
    """One ``/chat?stream=true`` checked against the documented event schema: generation
    may or may not pick ``stream=true`` with a body that gets a 200."""
    chat = schemathesis.openapi.from_dict(schema_dict)["/chat"]["POST"]
    case = chat.Case(body={"user_id": "streamer", "message": "hello"}, query={"stream": "true"}, media_type="application/json")
    response = case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS, timeout=60)
    assert response.headers["content-type"][0].startswith("text/event-stream")
    return response.text.count("\ndata: ") + response.text.startswith("data: ")


async def test_streamed_chat_events_match_the_documented_event_schema(served: Served) -> None:
    schema_dict = (await served.client.get("/openapi.json")).json()
    assert await asyncio.to_thread(run_streamed_chat, schema_dict, served.base_url) >= 2


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
async def test_generated_requests_get_no_5xx_and_match_the_schema(served: Served, mode: GenerationMode) -> None:
    schema_dict = (await served.client.get("/openapi.json")).json()
    tally = Tally()
    await asyncio.to_thread(run_schemathesis, schema_dict, served.base_url, mode, tally)
    print(f"schemathesis {mode}: {tally.examples} examples over {len(tally.operations)} operations; {tally.statuses}")
    assert tally.examples >= EXAMPLES_PER_MODE // 2
    assert len(tally.operations) >= 15, tally.operations
    assert not any(status >= 500 for status in tally.statuses)
    # the server still serves after the run
    assert (await served.client.get("/ready")).status_code == 200
