"""The chat service end to end: real tiny-model engines, the real SQLite store, the
real job queue and rate limits.

Random models produce gibberish: these tests check structure (which events, in which
order, what is stored), never content.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from ovbot.core.chat.answering import FALLBACK_REPLY, THINKING_STATUS, AnswerSettings
from ovbot.core.chat.service import ChatService
from ovbot.core.config import Settings
from ovbot.core.domain import ChatRef, ImageParams, Job, JobKind, JobState, ReplyEvent, Turn, UserRef
from ovbot.core.engines.local import LocalEngines, WorkerConfig
from ovbot.core.engines.types import ChatMessage, ImageLimits
from ovbot.core.errors import BadParameter, InvalidInput, RateLimited
from ovbot.core.jobs.queue import LocalJobQueue
from ovbot.core.access import AccessControl
from ovbot.core.limits import RateLimits
from ovbot.core.prompts import PromptBuilder
from ovbot.core.store.sqlite import SQLiteStore

LIMITS = ImageLimits(
    sizes=((64, 64),), default_size=(64, 64), default_steps=2, min_steps=1, max_steps=8, max_prompt_chars=200
)
#: small bounds keep every answer to a few dozen tokens on the tiny model
ANSWERS = AnswerSettings(response_max_chars=40, image_prompt_max_chars=30, max_reasoning_chars=60, seed=5)
ALICE = UserRef("test", "alice", "Alice")
BOB = UserRef("test", "bob", "Bob")
ROOM = ChatRef("test", "room-1")


@pytest.fixture
async def engines(tiny_models) -> AsyncIterator[LocalEngines]:
    config = WorkerConfig(
        llm_dir=str(tiny_models.llm),
        image_dir=str(tiny_models.image),
        kv_cache_gb=1,
        max_num_seqs=16,
        default_max_new_tokens=300,
        image_limits=LIMITS,
        image_max_pause_s=5.0,
        image_model_name="tiny-sd",
    )
    async with LocalEngines(config, max_restarts=0) as running:
        yield running


class RecordingPromptBuilder(PromptBuilder):
    """Remembers the history and messages of every prompt it built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.histories: list[list[Turn]] = []
        self.prompts: list[list[ChatMessage]] = []

    def build(
        self, message: str, history: Sequence[Turn] = (), persona: str | None = None
    ) -> list[ChatMessage]:
        messages = super().build(message, history, persona)
        self.histories.append(list(history))
        self.prompts.append(messages)
        return messages


@dataclass
class Harness:
    service: ChatService
    store: SQLiteStore
    queue: LocalJobQueue
    prompts: RecordingPromptBuilder
    engines: LocalEngines
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def events(self, job: Job | str, timeout: float = 60.0) -> list[ReplyEvent]:
        job_id = job if isinstance(job, str) else job.id

        async def collect() -> list[ReplyEvent]:
            return [event async for event in self.queue.subscribe(job_id)]

        return await asyncio.wait_for(collect(), timeout)

    async def chat(self, message: str, **kwargs) -> tuple[Job, list[ReplyEvent]]:
        job = await self.service.submit_chat(ALICE, ROOM, message, **kwargs)
        events = await self.events(job)
        stored = await self.store.get_job(job.id)
        assert stored is not None
        return stored, events


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(engines: LocalEngines, tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    built: list[Harness] = []

    async def build(
        answers: AnswerSettings = ANSWERS,
        chat_turns: int = 100,
        images_per_day: int = 100,
        **settings_overrides,
    ) -> Harness:
        index = len(built)
        values = dict(
            max_message_chars=200,
            max_persona_chars=50,
            history_turns=4,
            history_token_budget=10_000,
            reasoning_mode="full",  # the model reasons up to the answers' bound, as these tests expect
        )
        values.update(settings_overrides)
        settings = Settings(**values)
        store = SQLiteStore(tmp_path / f"db{index}" / "ovbot.db", tmp_path / f"data{index}")
        await store.initialize()
        queue = LocalJobQueue(
            store, max_running_chat=4, max_queued_per_user=5, max_queued_total=50, lease_s=30
        )
        limits = RateLimits(
            store,
            chat_turns_per_window=chat_turns,
            chat_window_s=3600,
            images_per_day=images_per_day,
            access=AccessControl(store),
        )
        prompts = RecordingPromptBuilder(
            settings.system_prompt, settings.history_turns, settings.history_token_budget
        )
        service = ChatService(store, queue, engines, limits, prompts, settings, answers=answers)
        queue.register(JobKind.CHAT, service.run_chat_job)
        queue.register(JobKind.IMAGE, service.run_image_job)
        await queue.start()
        harness = Harness(service, store, queue, prompts, engines)
        harness.closers += [lambda: queue.stop(5.0), store.close]
        built.append(harness)
        return harness

    yield build
    for harness in built:
        for close in harness.closers:
            await close()


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness()


def types(events: Sequence[ReplyEvent]) -> list[str]:
    return [event.type for event in events]


def text_of(events: Sequence[ReplyEvent], kind: str = "text") -> str:
    return "".join(event.text for event in events if event.type == kind)


async def turns_of(harness: Harness, conversation_id: str) -> list[Turn]:
    return await harness.store.recent_turns(conversation_id, 100)


def decode(png_path: str) -> Image.Image:
    image = Image.open(io.BytesIO(Path(png_path).read_bytes()))
    image.load()
    return image


# ---------------------------------------------------------------- text turns


async def test_text_turn_end_to_end(harness: Harness) -> None:
    job, events = await harness.chat("hello there")

    assert job.state is JobState.DONE, job.error
    kinds = types(events)
    assert kinds[-1] == "done"
    assert "reasoning" not in kinds and "error" not in kinds
    thinking = [i for i, e in enumerate(events) if e.type == "status" and e.text == THINKING_STATUS]
    assert len(thinking) == 1
    first_text = kinds.index("text")
    assert thinking[0] < first_text < kinds.index("done")

    text = text_of(events)
    assert text and job.result is not None
    assert job.result["text"] == text == events[-1].data["text"]
    assert "reasoning" not in job.result
    stored = await turns_of(harness, job.conversation_id)
    assert [(t.role, t.content, t.job_id) for t in stored] == [
        ("user", "hello there", job.id),
        ("assistant", text, job.id),
    ]


async def test_show_reasoning_streams_it_but_never_stores_it(harness: Harness) -> None:
    job, events = await harness.chat("think out loud", show_reasoning=True)

    assert job.state is JobState.DONE, job.error
    reasoning = text_of(events, "reasoning")
    assert reasoning, "no reasoning events"
    kinds = types(events)
    assert kinds.index("reasoning") < kinds.index("text")
    assert job.result is not None and job.result["reasoning"] == reasoning
    assistant = (await turns_of(harness, job.conversation_id))[-1]
    assert assistant.role == "assistant" and assistant.content == job.result["text"] == text_of(events)


async def test_history_is_applied_window_trimmed_and_reset_clears_it(harness: Harness) -> None:
    jobs = [(await harness.chat(f"message {i}"))[0] for i in range(4)]
    assert all(job.state is JobState.DONE for job in jobs)
    answers = [job.result["text"] for job in jobs]  # type: ignore[index]

    # the 4th prompt saw the last 4 turns (history_turns=4) of the 3 before it
    assert [(t.role, t.content) for t in harness.prompts.histories[3]] == [
        ("user", "message 1"),
        ("assistant", answers[1]),
        ("user", "message 2"),
        ("assistant", answers[2]),
    ]
    sent = harness.prompts.prompts[3]
    assert [m.role for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[-1].content == "message 3"
    # the system prompt and the history are a stable prefix of the next prompt
    assert harness.prompts.prompts[2][:1] == sent[:1]

    await harness.service.reset(ALICE, ROOM, forget=False)
    job, _ = await harness.chat("fresh start")
    assert job.conversation_id != jobs[0].conversation_id
    assert harness.prompts.histories[-1] == []
    assert [m.role for m in harness.prompts.prompts[-1]] == ["system", "user"]
    assert len(await turns_of(harness, jobs[0].conversation_id)) == 8  # kept, out of prompts

    await harness.service.reset(ALICE, ROOM, forget=True)
    assert await turns_of(harness, job.conversation_id) == []


async def test_persona_goes_into_the_system_prompt(harness: Harness) -> None:
    with pytest.raises(InvalidInput) as caught:
        await harness.service.set_persona(ALICE, ROOM, "x" * 51)
    assert caught.value.field == "persona"

    await harness.service.set_persona(ALICE, ROOM, "  a cheerful pirate ")
    await harness.chat("ahoy")
    assert harness.prompts.prompts[-1][0].content.endswith("a cheerful pirate")

    await harness.service.set_persona(ALICE, ROOM, None)
    await harness.chat("plain again")
    assert "pirate" not in harness.prompts.prompts[-1][0].content


# ---------------------------------------------------------------- broken answers


async def test_nothing_answered_gives_the_fallback_reply(make_harness: HarnessFactory) -> None:
    # one token: the model is still thinking when the limit hits, no JSON at all
    harness = await make_harness(answers=AnswerSettings(max_new_tokens=1, max_reasoning_chars=60, seed=1))
    job, events = await harness.chat("hello")

    assert job.state is JobState.DONE, job.error
    assert "error" not in types(events)
    assert text_of(events) == FALLBACK_REPLY == job.result["text"]  # type: ignore[index]
    assert [t.content for t in await turns_of(harness, job.conversation_id)] == ["hello", FALLBACK_REPLY]


@pytest.mark.parametrize("max_new_tokens", [8, 14, 20, 30, 60])
async def test_cut_off_answer_keeps_what_arrived(make_harness: HarnessFactory, max_new_tokens: int) -> None:
    # no maxLength and no room to think: the JSON string runs into the token limit,
    # before the answer started (short limits: fallback) or in the middle of it
    answers = AnswerSettings(
        response_max_chars=None,
        image_prompt_max_chars=None,
        max_reasoning_chars=0,
        max_new_tokens=max_new_tokens,
        seed=2,
    )
    harness = await make_harness(answers=answers)
    job, events = await harness.chat("tell me a long story")

    assert job.state is JobState.DONE, job.error
    text = text_of(events)
    assert text and text == job.result["text"]  # type: ignore[index]
    assert not text.startswith("{"), "raw JSON must never reach users"
    assert FALLBACK_REPLY not in text or text == FALLBACK_REPLY
    if max_new_tokens >= 30:  # ~10 tokens of JSON syntax, then answer characters
        assert text != FALLBACK_REPLY
    assert "image_job_id" not in job.result  # type: ignore[operator]
    stored = await turns_of(harness, job.conversation_id)
    assert [t.content for t in stored] == ["tell me a long story", text]


async def test_reply_longer_than_the_limit_is_cut_there(make_harness: HarnessFactory) -> None:
    # a limit above grammar_max_length stays out of the grammar (the real default: 2000 >
    # 256); the generator stops the stream at the limit, the reply that got through stands
    # and the engine's slot is freed
    answers = AnswerSettings(
        response_max_chars=12, grammar_max_length=8, max_reasoning_chars=0, max_new_tokens=2000, seed=5
    )
    assert "maxLength" not in answers.options().json_schema["properties"]["assistant_response"]  # type: ignore[index]
    harness = await make_harness(answers=answers)
    job, events = await harness.chat("tell me everything")

    assert job.state is JobState.DONE, job.error
    text = text_of(events)
    assert len(text) == 12 and text == job.result["text"]  # type: ignore[index]
    assert "image_job_id" not in job.result  # type: ignore[operator]
    assert [t.content for t in await turns_of(harness, job.conversation_id)] == ["tell me everything", text]
    for _ in range(100):
        if (await harness.engines.stats())["chat_active"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await harness.engines.stats())["chat_active"] == 0


# ---------------------------------------------------------------- images


async def test_explicit_image_request_saves_a_png(harness: Harness) -> None:
    job, events = await harness.chat("a lighthouse at dusk", image=ImageParams("", steps=2, seed=7))

    assert job.state is JobState.DONE, job.error
    image_job_id = job.result["image_job_id"]  # type: ignore[index]
    queued = [e for e in events if e.type == "image_queued"]
    assert [e.data["job_id"] for e in queued] == [image_job_id]

    image_events = await harness.events(image_job_id)
    kinds = types(image_events)
    assert kinds[-1] == "done", image_events[-1]
    steps = [e.data["step"] for e in image_events if e.type == "image_progress"]
    assert steps and steps == sorted(steps) and steps[-1] == 2
    ready = next(e for e in image_events if e.type == "image_ready")
    image_job = await harness.store.get_job(image_job_id)
    assert image_job is not None and image_job.kind is JobKind.IMAGE
    assert image_job.payload["parent_job_id"] == job.id
    assert image_job.result == {"image_id": ready.data["image_id"], "params": ready.data["params"]}
    params = ready.data["params"]
    assert params["prompt"] == "a lighthouse at dusk"  # the message, no prompt was given
    assert (params["width"], params["height"], params["steps"], params["seed"]) == (64, 64, 2, 7)

    record = await harness.store.get_image(ready.data["image_id"])
    assert record is not None and record.job_id == image_job_id and record.user_key == ALICE.key
    assert decode(record.path).size == (64, 64)


async def test_submit_image_directly(harness: Harness) -> None:
    job = await harness.service.submit_image(BOB, ROOM, ImageParams("a red square", seed=3))
    events = await harness.events(job)
    assert types(events)[-1] == "done"
    assert any(e.type == "status" and e.text == "generating image" for e in events)
    image_id = events[-1].data["image_id"]
    record = await harness.store.get_image(image_id)
    assert record is not None and decode(record.path).size == (64, 64)
    assert events[-1].data["params"]["steps"] == LIMITS.default_steps  # defaults filled in


async def test_cancel_a_running_chat_frees_the_engine(make_harness: HarnessFactory) -> None:
    # unbounded reasoning: the tiny model thinks until it is stopped
    harness = await make_harness(
        answers=AnswerSettings(max_reasoning_chars=None, max_new_tokens=20_000, seed=4)
    )
    job = await harness.service.submit_chat(ALICE, ROOM, "think forever")
    async for event in harness.queue.subscribe(job.id):
        if event.type == "status" and event.text == THINKING_STATUS:
            break
    cancelled = await harness.queue.cancel(job.id, ALICE)
    assert cancelled.state is JobState.CANCELLED
    assert types(await harness.events(job))[-1] == "cancelled"
    assert await turns_of(harness, job.conversation_id) == []

    for _ in range(100):
        if (await harness.engines.stats())["chat_active"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await harness.engines.stats())["chat_active"] == 0


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("message", ["", "   \n\t ", "x" * 201])
async def test_empty_or_huge_message_is_invalid_input(harness: Harness, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await harness.service.submit_chat(ALICE, ROOM, message)
    assert caught.value.field == "message"
    assert ("200" in caught.value.user_message) == bool(message.strip())
    assert await harness.store.usage_times(ALICE.key, "chat", 0) == []  # not charged
    assert harness.queue.depth()["chat_queued"] == 0


@pytest.mark.parametrize(
    "params, field",
    [
        (ImageParams("a cat", width=640, height=640), "size"),
        (ImageParams("a cat", steps=99), "steps"),
        (ImageParams("a cat", cfg=500), "cfg"),
        (ImageParams("x" * 201), "prompt"),
    ],
)
async def test_bad_image_params_are_refused_before_queueing(
    harness: Harness, params: ImageParams, field: str
) -> None:
    with pytest.raises(BadParameter) as caught:
        await harness.service.submit_image(ALICE, ROOM, params)
    assert caught.value.field == field
    with pytest.raises(BadParameter):
        await harness.service.submit_chat(ALICE, ROOM, "draw it", image=params)
    assert await harness.store.jobs_in_states(list(JobState)) == []
    assert await harness.store.usage_times(ALICE.key, "image", 0) == []
    assert await harness.store.usage_times(ALICE.key, "chat", 0) == []


async def test_rate_limited(make_harness: HarnessFactory) -> None:
    harness = await make_harness(chat_turns=1, images_per_day=1)
    await harness.service.submit_chat(ALICE, ROOM, "first")
    with pytest.raises(RateLimited) as caught:
        await harness.service.submit_chat(ALICE, ROOM, "second")
    assert caught.value.retry_after_s > 0
    await harness.service.submit_chat(BOB, ROOM, "other users are not affected")

    await harness.service.submit_image(ALICE, ROOM, ImageParams("one"))
    with pytest.raises(RateLimited):
        await harness.service.submit_image(ALICE, ROOM, ImageParams("two"))


async def test_image_limit_in_a_chat_turn_is_a_note_not_a_failure(make_harness: HarnessFactory) -> None:
    harness = await make_harness(images_per_day=1)
    first = await harness.service.submit_image(ALICE, ROOM, ImageParams("uses the only image"))
    job, events = await harness.chat("and draw me another", image=ImageParams("a boat"))

    assert job.state is JobState.DONE, job.error
    assert "image_job_id" not in job.result and "image_queued" not in types(events)  # type: ignore[operator]
    notes = [e for e in events if e.type == "status" and e.data.get("image_error") == "rate_limited"]
    assert len(notes) == 1 and notes[0].text == job.result["image_note"]  # type: ignore[index]
    assert text_of(events) == job.result["text"]  # type: ignore[index]
    assert len(await turns_of(harness, job.conversation_id)) == 2
    await harness.events(first)


def test_reasoning_budget_of_each_mode() -> None:
    bounded = AnswerSettings(max_reasoning_chars=60, short_reasoning_chars=400)
    assert [bounded.reasoning_budget(m) for m in ("off", "short", "full")] == [0, 60, 60]
    unbounded = AnswerSettings(max_reasoning_chars=None, short_reasoning_chars=400)
    assert [unbounded.reasoning_budget(m) for m in ("off", "short", "full")] == [0, 400, None]
    configured = AnswerSettings.from_settings(Settings(_env_file=None, reasoning_short_chars=50, reasoning_full_chars=900))
    assert [configured.reasoning_budget(m) for m in ("off", "short", "full")] == [0, 50, 900]
