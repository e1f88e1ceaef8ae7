"""The remote engine against a fake OpenAI-compatible server (OVMS dialect)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from PIL import Image

from ovbot.core.config import Settings
from ovbot.core.engines.base import ImageEngine, LLMEngine
from ovbot.core.engines.remote import (
    CHAT_PATH,
    IMAGES_PATH,
    RemoteEngines,
    chat_body,
    parse_sse_line,
)
from ovbot.core.engines.streams import LLMStream
from ovbot.core.engines.types import (
    ChatMessage,
    GenerationOptions,
    ImageLimits,
    ImageProgress,
    ImageRequest,
    TextDelta,
)
from ovbot.core.errors import (
    BadParameter,
    Cancelled,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    InvalidStructuredOutput,
)
from tests.fakes.fake_openai import ChatScript, FakeOpenAIServer
from tests.sentinels import REMOTE_API_KEY

KEY = REMOTE_API_KEY
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello?")]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_engines(base_url: str, **overrides: object) -> RemoteEngines:
    params: dict[str, object] = {
        "base_url": base_url,
        "api_key": KEY,
        "llm_model": "fake-llm",
        "image_model": "fake-image",
        "timeout_s": 10.0,
        "max_new_tokens": 256,
    }
    params.update(overrides)
    return RemoteEngines(**params)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=KEY) as server:
        yield server
        assert not server.unhandled, f"unexpected requests: {server.unhandled}"


@pytest.fixture
async def engines(fake: FakeOpenAIServer) -> AsyncIterator[RemoteEngines]:
    async with make_engines(fake.base_url) as both:
        yield both


async def collect(stream: LLMStream) -> list[TextDelta]:
    return [delta async for delta in stream]


def joined(deltas: list[TextDelta], kind: str) -> str:
    return "".join(d.text for d in deltas if d.kind == kind)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ streaming


async def test_stream_splits_inline_think_tags_cut_across_chunks(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(
        content=["<th", "ink>Let me ", "think.</th", "ink>\n\nHello", ", world", "!"],
        prompt_tokens=7,
        completion_tokens=42,
    )
    options = GenerationOptions(max_new_tokens=64, temperature=0.5, top_p=0.9, seed=1234)

    stream = await engines.llm.stream(HELLO, options)
    deltas = await collect(stream)
    result = await stream.result()

    kinds = [d.kind for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k == "content"), "reasoning after the answer"
    assert joined(deltas, "reasoning") == "Let me think."
    assert joined(deltas, "content") == "Hello, world!"
    assert (result.content, result.reasoning) == ("Hello, world!", "Let me think.")
    metrics = result.metrics
    assert (metrics.prompt_tokens, metrics.generated_tokens) == (7, 42)
    assert metrics.finish_reason == "stop"
    assert metrics.ttft_s is not None and 0 <= metrics.ttft_s <= metrics.duration_s

    [call] = fake.calls_to(CHAT_PATH)
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert call.body == {
        "model": "fake-llm",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 1234,
    }


async def test_think_block_opened_by_the_prompt_is_reasoning(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    # DeepSeek-R1 templates end the prompt with "<think>": only the closing tag arrives
    fake.chat = ChatScript(content=["Hmm, the user ", "greets me.</thi", "nk>\n\n", "Hi!"])

    result = await (await engines.llm.stream(HELLO)).result()

    assert result.reasoning == "Hmm, the user greets me."
    assert result.content == "Hi!"


async def test_reasoning_content_field_arrives_as_reasoning(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(reasoning=["Thinking ", "hard."], content=["\n\nDone", "."])

    stream = await engines.llm.stream(HELLO)
    deltas = await collect(stream)

    assert [d.kind for d in deltas][:2] == ["reasoning", "reasoning"]
    assert joined(deltas, "reasoning") == "Thinking hard."
    assert joined(deltas, "content") == "Done."
    assert (await stream.result()).metrics.generated_tokens == 4  # one per piece


async def test_answer_without_reasoning_is_all_content(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(content=["Plain ", "answer ", "< 3 tags."])

    result = await (await engines.llm.stream(HELLO)).result()

    assert (result.content, result.reasoning) == ("Plain answer < 3 tags.", "")


@pytest.mark.parametrize(
    ("mode", "reasoning", "content"),
    [("auto", "Hmm", "Hi"), ("prompt", "Hmm", "Hi"), ("inline", "", "Hmm</think>Hi")],
)
async def test_reasoning_modes(
    fake: FakeOpenAIServer, mode: str, reasoning: str, content: str
) -> None:
    fake.chat = ChatScript(content=["Hmm", "</think>", "Hi"])
    async with make_engines(fake.base_url, reasoning=mode) as both:
        result = await (await both.llm.stream(HELLO)).result()

    assert (result.reasoning, result.content) == (reasoning, content)


async def test_prompt_mode_streams_reasoning_before_the_closing_tag(
    fake: FakeOpenAIServer,
) -> None:
    fake.chat = ChatScript(content=["Thinking", " more", "</think>", "Answer"], chunk_delay_s=0.2)
    async with make_engines(fake.base_url, reasoning="prompt") as both:
        stream = await both.llm.stream(HELLO)
        first = await stream.__anext__()
        assert not fake.calls_to(CHAT_PATH)[0].completed  # the tag was not even sent yet
        rest = await collect(stream)

    assert first == TextDelta("reasoning", "Thinking")
    assert joined(rest, "content") == "Answer"


# ------------------------------------------------------------------ structured output


async def test_structured_output_sends_schema_and_parses_answer(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    fake.chat = ChatScript(content=['{"city": ', '"Gdańsk"}'])

    result = await (await engines.llm.stream(HELLO, GenerationOptions(json_schema=schema))).result()

    assert result.data == {"city": "Gdańsk"}
    body = fake.calls_to(CHAT_PATH)[0].body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


async def test_json_cut_off_by_token_limit_is_truncated_output(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(content=['{"items": [1, ', "2, 3"], finish_reason="length")
    options = GenerationOptions(json_schema={"type": "object"})

    stream = await engines.llm.stream(HELLO, options)
    with pytest.raises(InvalidStructuredOutput) as caught:
        await stream.result()

    assert caught.value.truncated is True
    assert caught.value.raw_text == '{"items": [1, 2, 3'


# ------------------------------------------------------------------ cancel, concurrency


async def test_cancel_mid_stream_reaches_consumer_and_server(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(content=[f"w{i} " for i in range(200)], chunk_delay_s=0.02)
    stream = await engines.llm.stream(HELLO)
    await asyncio.sleep(0.1)  # some chunks are on the wire (held back by "auto" mode)
    await stream.cancel()
    with pytest.raises(Cancelled):
        await stream.__anext__()

    call = await fake.wait_for_disconnect()
    assert call.path == CHAT_PATH and not call.completed
    await eventually(lambda: fake.active_chats == 0)
    assert engines.llm.health().ready


async def test_cancel_after_some_deltas_keeps_partial_text(fake: FakeOpenAIServer) -> None:
    fake.chat = ChatScript(content=[f"w{i} " for i in range(200)], chunk_delay_s=0.02)
    async with make_engines(fake.base_url, reasoning="inline") as both:
        stream = await both.llm.stream(HELLO)
        first_two = [await stream.__anext__() for _ in range(2)]
        await stream.cancel()
        with pytest.raises(Cancelled):
            await stream.result()
        call = await fake.wait_for_disconnect()

    assert [d.text for d in first_two] == ["w0 ", "w1 "]
    assert stream.partial_text.startswith("w0 w1 ")
    assert not call.completed


async def test_eight_concurrent_streams_complete_without_crosstalk(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    def echo(body: dict) -> ChatScript:
        return ChatScript(content=["echo:", body["messages"][-1]["content"]], chunk_delay_s=0.1)

    fake.chat = echo

    async def ask(i: int) -> str:
        stream = await engines.llm.stream([ChatMessage("user", f"q{i}")])
        return (await stream.result()).content

    answers = await asyncio.gather(*(ask(i) for i in range(8)))

    assert answers == [f"echo:q{i}" for i in range(8)]
    assert fake.max_active_chats == 8  # they really ran at the same time
    assert all(call.completed for call in fake.calls_to(CHAT_PATH))


# ------------------------------------------------------------------ images


async def test_image_is_png_of_requested_size_with_ovms_fields(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    request = ImageRequest(
        "a lighthouse at dusk", negative_prompt="blurry", width=768, height=512,
        steps=12, cfg=6.0, seed=42,
    )  # fmt: skip

    job = await engines.image.generate(request)
    progress = [event async for event in job]
    result = await job.result()

    assert progress == [ImageProgress(0, 12), ImageProgress(12, 12)]
    assert result.png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.size == (768, 512)
    assert result.request == request.resolve(engines.image.limits)
    assert result.duration_s > 0
    [call] = fake.calls_to(IMAGES_PATH)
    assert call.body == {
        "model": "fake-image",
        "prompt": "a lighthouse at dusk",
        "size": "768x512",
        "n": 1,
        "response_format": "b64_json",
        "num_inference_steps": 12,
        "guidance_scale": 6.0,
        "rng_seed": 42,
        "negative_prompt": "blurry",
    }


async def test_image_defaults_pass_strict_float_check(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    # cfg=7 (an int) must still reach OVMS as a JSON float, or it answers 400
    result = await (await engines.image.generate(ImageRequest("a cat", cfg=7))).result()

    body = fake.calls_to(IMAGES_PATH)[0].body
    assert isinstance(body["guidance_scale"], float) and body["guidance_scale"] == 7.0
    assert "negative_prompt" not in body
    assert body["size"] == "512x512" and result.request.seed == body["rng_seed"]


async def test_non_png_answer_is_converted(fake: FakeOpenAIServer, engines: RemoteEngines) -> None:
    fake.image_format = "JPEG"

    job = await engines.image.generate(ImageRequest("a cat", width=512, height=768))
    result = await job.result()

    assert result.png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(result.png)) as image:
        assert (image.format, image.size) == ("PNG", (512, 768))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ImageRequest("a cat", width=100, height=100), "size"),
        (ImageRequest("a cat", steps=500), "steps"),
        (ImageRequest("a cat", cfg=99.0), "cfg"),
        (ImageRequest("   "), "prompt"),
    ],
)
async def test_bad_image_request_is_rejected_before_any_http(
    fake: FakeOpenAIServer, engines: RemoteEngines, request_: ImageRequest, field: str
) -> None:
    with pytest.raises(BadParameter) as caught:
        await engines.image.generate(request_)

    assert caught.value.field == field
    assert fake.calls_to(IMAGES_PATH) == []


async def test_image_cancel_closes_the_request(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.image_delay_s = 10.0
    job = await engines.image.generate(ImageRequest("a slow cat"))
    await eventually(lambda: bool(fake.calls_to(IMAGES_PATH)))

    await job.cancel()
    with pytest.raises(Cancelled):
        await job.result()

    call = await fake.wait_for_disconnect()
    assert call.path == IMAGES_PATH and not call.completed


async def test_image_server_error_fails_the_job(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.fail(IMAGES_PATH, 500)

    job = await engines.image.generate(ImageRequest("a cat", steps=5))
    progress = []
    with pytest.raises(EngineUnavailable, match="HTTP 500"):
        async for event in job:
            progress.append(event)

    assert progress == [ImageProgress(0, 5)]


# ------------------------------------------------------------------ errors


async def test_unreachable_server_is_down_and_recovers() -> None:
    port = free_port()
    async with make_engines(f"http://127.0.0.1:{port}") as both:
        assert both.llm.health().state == "down"
        assert both.image.health().state == "down"
        assert "unreachable" in both.llm.health().detail

        with pytest.raises(EngineUnavailable) as caught:
            await both.llm.stream(HELLO)
        assert f"127.0.0.1:{port}" in str(caught.value) and "unreachable" in str(caught.value)
        with pytest.raises(EngineUnavailable):
            await both.image.generate(ImageRequest("a cat"))

        async with FakeOpenAIServer(api_key=KEY, port=port):
            result = await (await both.llm.stream(HELLO)).result()
            assert result.content == "Hello, world!"
            assert both.llm.health().ready and both.image.health().ready


async def test_rejected_api_key_is_reported_without_the_key(fake: FakeOpenAIServer) -> None:
    wrong_key = "sk-wrong-key-0123456789abcdef"
    async with make_engines(fake.base_url, api_key=wrong_key) as both:
        assert both.llm.health().state == "down"
        assert "API key" in both.llm.health().detail

        with pytest.raises(EngineUnavailable) as chat_error:
            await both.llm.stream(HELLO)
        with pytest.raises(EngineUnavailable) as image_error:
            await both.image.generate(ImageRequest("a cat"))

    for error in (chat_error.value, image_error.value):
        assert "API key" in str(error)
        assert wrong_key not in str(error) and wrong_key not in error.user_message
    assert fake.calls_to(IMAGES_PATH) == []  # the re-probe refused it first


@pytest.mark.parametrize(
    ("status", "error_type", "words"),
    [
        (400, BadParameter, "max_tokens exceeds limit"),
        (422, BadParameter, "max_tokens exceeds limit"),
        (429, EngineUnavailable, "busy"),
        (503, EngineUnavailable, "busy"),
        (500, EngineUnavailable, "HTTP 500"),
        (502, EngineUnavailable, "HTTP 502"),
    ],
)
async def test_http_status_maps_to_typed_error(
    fake: FakeOpenAIServer,
    engines: RemoteEngines,
    status: int,
    error_type: type[EngineError],
    words: str,
) -> None:
    fake.fail(CHAT_PATH, status, {"error": {"message": "max_tokens exceeds limit: 128"}})

    with pytest.raises(error_type) as caught:
        await engines.llm.stream(HELLO)

    assert words in str(caught.value)
    assert engines.llm.health().ready  # the server answered: it is up


async def test_unknown_model_is_unavailable(fake: FakeOpenAIServer) -> None:
    async with make_engines(fake.base_url, llm_model="no-such-model") as both:
        assert both.llm.health().state == "down"  # /v3/models does not list it
        assert "no-such-model" in both.llm.health().detail
        assert both.image.health().ready
        with pytest.raises(EngineUnavailable, match="does not serve"):
            await both.llm.stream(HELLO)


@pytest.mark.parametrize("cut_mode", ["abort", "eof"])
async def test_stream_cut_off_is_reported_as_interrupted(
    fake: FakeOpenAIServer, engines: RemoteEngines, cut_mode: str
) -> None:
    fake.chat = ChatScript(
        content=["<think>a", "b", "c"], cut_after=2, cut_mode=cut_mode  # type: ignore[arg-type]
    )

    stream = await engines.llm.stream(HELLO)
    with pytest.raises(EngineUnavailable, match="interrupted"):
        await stream.result()

    assert stream.done
    assert not fake.calls_to(CHAT_PATH)[0].completed


async def test_timeout_mid_stream(fake: FakeOpenAIServer, engines: RemoteEngines) -> None:
    fake.chat = ChatScript(content=["x"] * 100, chunk_delay_s=0.1)

    stream = await engines.llm.stream(HELLO, GenerationOptions(timeout_s=0.4))
    with pytest.raises(EngineTimeout):
        await stream.result()

    call = await fake.wait_for_disconnect()
    assert not call.completed


async def test_timeout_before_the_server_answers(
    fake: FakeOpenAIServer, engines: RemoteEngines
) -> None:
    fake.chat = ChatScript(headers_delay_s=3.0)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EngineTimeout):
        await engines.llm.stream(HELLO, GenerationOptions(timeout_s=0.3))
    assert loop.time() - started < 2.0


async def test_image_timeout(fake: FakeOpenAIServer, engines: RemoteEngines) -> None:
    fake.image_delay_s = 3.0

    job = await engines.image.generate(ImageRequest("a cat", timeout_s=0.3))
    with pytest.raises(EngineTimeout):
        await job.result()

    call = await fake.wait_for_disconnect()
    assert call.path == IMAGES_PATH


async def test_api_key_never_logged_nor_in_errors(
    fake: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[EngineError] = []
    async with make_engines(fake.base_url) as both:
        await (await both.llm.stream(HELLO)).result()
        await (await both.image.generate(ImageRequest("a cat"))).result()
        # a server that echoes the header back in its error text
        fake.fail(CHAT_PATH, 400, {"error": f"bad header: Bearer {KEY}"}, times=1)
        fake.fail(CHAT_PATH, 500, times=1)
        for _ in range(2):
            with pytest.raises(EngineError) as caught:
                await both.llm.stream(HELLO)
            errors.append(caught.value)
        text = repr(both)
    async with make_engines(f"http://127.0.0.1:{free_port()}") as down:
        with pytest.raises(EngineUnavailable) as caught:
            await down.llm.stream(HELLO)
        errors.append(caught.value)

    assert fake.calls_to(CHAT_PATH)[0].headers["Authorization"] == f"Bearer {KEY}"
    assert len(caplog.records) > 0
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (caplog.text or "")
    for error in errors:
        assert KEY not in str(error) and KEY not in error.user_message
    assert "[REDACTED]" in str(errors[0])
    assert KEY not in text


# ------------------------------------------------------------------ health, lifecycle


async def test_health_follows_the_lifecycle(fake: FakeOpenAIServer) -> None:
    both = make_engines(fake.base_url)
    assert both.llm.health().state == "starting"
    with pytest.raises(EngineUnavailable, match="not started"):
        await both.llm.stream(HELLO)

    await both.start()
    health = both.llm.health()
    assert health.ready and health.loaded == ("fake-llm",)
    assert both.image.health().loaded == ("fake-image",)

    await both.close()
    assert both.llm.health().state == "stopped"
    with pytest.raises(EngineUnavailable, match="shut down"):
        await both.llm.stream(HELLO)


async def test_probe_falls_back_to_ovms_config_endpoint() -> None:
    async with FakeOpenAIServer(list_models=False) as old_server:
        async with make_engines(old_server.base_url, api_key=None) as both:
            assert both.llm.health().ready
        assert [c.path for c in old_server.calls] == ["/v3/models", "/v1/config"]
        assert [c.path for c in old_server.unhandled] == ["/v3/models"]  # the loud 404
        assert "Authorization" not in old_server.calls[0].headers


async def test_close_aborts_requests_in_flight(fake: FakeOpenAIServer) -> None:
    fake.chat = ChatScript(content=["<think>x"] * 200, chunk_delay_s=0.05)
    both = await make_engines(fake.base_url).__aenter__()
    stream = await both.llm.stream(HELLO)

    await both.close()

    with pytest.raises(EngineUnavailable, match="shut down"):
        await stream.result()
    call = await fake.wait_for_disconnect()
    assert not call.completed


async def test_engines_satisfy_the_protocols_and_build_from_settings(
    fake: FakeOpenAIServer,
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        engine="remote",
        remote_base_url=fake.base_url + "/v3/",
        remote_api_key=KEY,
        remote_llm_model="fake-llm",
        remote_image_model="fake-image",
        image_sizes="512x512,640x640",
        max_new_tokens=77,
    )
    async with RemoteEngines.from_settings(settings) as both:
        assert isinstance(both.llm, LLMEngine) and isinstance(both.image, ImageEngine)
        assert both.image.limits == settings.image_limits()
        assert both.label == fake.base_url
        result = await (await both.llm.stream(HELLO)).result()

    assert result.content == "Hello, world!"
    assert fake.calls_to(CHAT_PATH)[0].body["max_tokens"] == 77


# ------------------------------------------------------------------ pure helpers


def test_chat_body_documents_remote_option_handling() -> None:
    thinking = chat_body("m", HELLO, GenerationOptions(), 100)
    not_thinking = chat_body("m", HELLO, GenerationOptions(think=False), 100)
    assert thinking == not_thinking  # the server owns the template: think=False is a no-op
    assert thinking["max_tokens"] == 100 and "seed" not in thinking

    fixed = chat_body("m", HELLO, GenerationOptions(ignore_eos=True, max_new_tokens=5), 100)
    assert fixed["ignore_eos"] is True and fixed["max_tokens"] == 5


def test_sse_lines_without_data_are_skipped() -> None:
    assert parse_sse_line("") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("event: message") is None
    assert parse_sse_line('data: {"choices": []}') == {"choices": []}
    done = parse_sse_line("data: [DONE]")
    assert done is not None and not isinstance(done, dict)


def test_default_limits_are_the_engine_defaults() -> None:
    both = make_engines("http://127.0.0.1:9")
    assert both.image.limits == ImageLimits()
    assert both.label == "http://127.0.0.1:9"
