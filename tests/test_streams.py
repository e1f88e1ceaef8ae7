"""Stream plumbing shared by every engine: reasoning split, deltas, JSON checks,
deadlines, cancellation — driven as an engine would drive it."""

from __future__ import annotations

import asyncio

import pytest

from ovbot.core.engines.local.detokenizer import IncrementalDetokenizer
from ovbot.core.engines.streams import ImageJob, LLMStream, ThinkSplitter
from ovbot.core.engines.types import ImageRequest, ImageResult, LLMMetrics
from ovbot.core.errors import Cancelled, EngineTimeout, EngineUnavailable, InvalidStructuredOutput


def split(chunks: list[str], starts_in_reasoning: bool) -> tuple[str, str]:
    splitter = ThinkSplitter(starts_in_reasoning)
    deltas = [d for chunk in chunks for d in splitter.feed(chunk)] + splitter.flush()
    reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
    content = "".join(d.text for d in deltas if d.kind == "content")
    return reasoning, content


@pytest.mark.parametrize(
    "chunks, starts, expected",
    [
        (["I think", " hard</think>\n\nHello", " world"], True, ("I think hard", "Hello world")),
        (["a</th", "ink>b"], True, ("a", "b")),
        (["a<", "/", "think", ">", "b"], True, ("a", "b")),
        (["  <thi", "nk>plan</think>answer"], False, ("plan", "answer")),
        (["plain answer <think> not a tag"], False, ("", "plain answer <think> not a tag")),
        (["<", "b>bold"], False, ("", "<b>bold")),
        (["never closed"], True, ("never closed", "")),
        (["x</think>y</think>z"], True, ("x", "y</think>z")),
    ],
)
def test_think_splitter(chunks: list[str], starts: bool, expected: tuple[str, str]) -> None:
    assert split(chunks, starts) == expected


def metrics(reason: str = "stop") -> LLMMetrics:
    return LLMMetrics(prompt_tokens=3, generated_tokens=5, ttft_s=0.01, duration_s=0.1, finish_reason=reason)


def make_stream(cancelled: list[bool] | None = None, **kwargs) -> LLMStream:
    defaults = dict(
        request_id="1",
        on_cancel=lambda: cancelled.append(True) if cancelled is not None else None,
        starts_in_reasoning=True,
        expects_json=False,
        timeout_s=None,
    )
    defaults.update(kwargs)
    return LLMStream(**defaults)


async def test_stream_delivers_then_ends() -> None:
    stream = make_stream()
    stream.feed("hmm</think>")
    stream.feed("Hi")
    stream.finish(metrics())
    kinds = [(d.kind, d.text) async for d in stream]
    assert kinds == [("reasoning", "hmm"), ("content", "Hi")]
    result = await stream.result()
    assert (result.reasoning, result.content, result.metrics.finish_reason) == ("hmm", "Hi", "stop")


async def test_json_answer_parsed_with_control_characters() -> None:
    stream = make_stream(starts_in_reasoning=False, expects_json=True)
    stream.feed('{"a": "line\nbreak"}')
    stream.finish(metrics())
    assert (await stream.result()).data == {"a": "line\nbreak"}


async def test_cut_off_json_keeps_the_raw_text() -> None:
    stream = make_stream(starts_in_reasoning=False, expects_json=True)
    stream.feed('{"a": "never fini')
    stream.finish(metrics("length"))
    with pytest.raises(InvalidStructuredOutput) as caught:
        await stream.result()
    assert caught.value.truncated and caught.value.raw_text == '{"a": "never fini'
    assert stream.partial_text == '{"a": "never fini'


async def test_invalid_json_not_truncated() -> None:
    stream = make_stream(starts_in_reasoning=False, expects_json=True)
    stream.feed("not json")
    stream.finish(metrics("stop"))
    with pytest.raises(InvalidStructuredOutput) as caught:
        await stream.result()
    assert not caught.value.truncated


async def test_cancel_calls_the_engine_once_and_raises() -> None:
    calls: list[bool] = []
    stream = make_stream(calls)
    stream.feed("partial")
    await stream.cancel()
    await stream.cancel()
    stream.feed("late text is ignored")
    with pytest.raises(Cancelled):
        await stream.result()
    assert calls == [True]


async def test_deadline_cancels_upstream() -> None:
    calls: list[bool] = []
    stream = make_stream(calls, timeout_s=0.05)
    with pytest.raises(EngineTimeout):
        async for _ in stream:
            pass
    assert calls == [True]


async def test_engine_failure_reaches_the_consumer() -> None:
    stream = make_stream()
    stream.feed("so far</think>ok")
    stream.fail(EngineUnavailable("worker died"))
    seen = []
    with pytest.raises(EngineUnavailable):
        async for delta in stream:
            seen.append(delta.text)
    assert seen == ["so far", "ok"]


async def test_image_job_progress_result_and_timeout() -> None:
    request = ImageRequest("p", width=64, height=64, steps=2, cfg=7.0, seed=1)
    job = ImageJob(request=request, on_cancel=lambda: None, timeout_s=None)
    job.progress(0, 2)
    job.progress(2, 2)
    job.finish(ImageResult(b"png", request, 0.5))
    assert [(p.step, p.total) async for p in job] == [(0, 2), (2, 2)]
    assert (await job.result()).png == b"png"

    cancelled: list[bool] = []
    slow = ImageJob(request=request, on_cancel=lambda: cancelled.append(True), timeout_s=0.05)
    with pytest.raises(EngineTimeout):
        await slow.result()
    assert cancelled == [True]


async def test_image_job_failure_without_iteration() -> None:
    request = ImageRequest("p")
    job = ImageJob(request=request, on_cancel=lambda: None, timeout_s=None)
    job.fail(EngineUnavailable("gone"))
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(job.result(), 1)


def test_incremental_detokenizer_with_the_real_tokenizer(tiny_models) -> None:
    import openvino_genai as og

    tokenizer = og.Tokenizer(str(tiny_models.llm))
    text = "héllo wörld, 你好 — {\"assistant_response\": null} 🙂 done"
    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
    decode = lambda chunk: tokenizer.decode(list(chunk), skip_special_tokens=True)  # noqa: E731
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.add([token]) for token in ids] + [detok.flush()]
    assert "".join(pieces) == decode(ids)
    assert all("\ufffd" not in piece for piece in pieces)
    assert detok.token_count == len(ids)


@pytest.mark.parametrize("kind", ["chat", "image"])
async def test_cancelling_a_waiting_consumer_is_never_swallowed(kind: str) -> None:
    """An item arriving in the same loop turn as the consumer's cancellation must not
    eat the cancellation (asyncio.wait_for does on Python 3.11)."""
    for _ in range(20):
        if kind == "chat":
            stream = make_stream(timeout_s=30)
            consume = asyncio.ensure_future(stream.result())
            await asyncio.sleep(0)
            stream.feed("text arrives")
        else:
            job = ImageJob(request=ImageRequest("p"), on_cancel=lambda: None, timeout_s=30)
            consume = asyncio.ensure_future(job.result())
            await asyncio.sleep(0)
            job.progress(1, 2)
        consume.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consume
