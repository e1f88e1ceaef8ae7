"""Runs one structured answer on the chat engine and streams it as reply events.

Kept apart from the service so the streaming rules (what users see while the model
thinks, what happens when the JSON breaks) can be read in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ovbot.core.chat.answer_stream import GRAMMAR_MAX_LENGTH, AnswerStreamParser, answer_schema
from ovbot.core.engines.base import LLMEngine
from ovbot.core.engines.streams import LLMStream
from ovbot.core.engines.types import ChatMessage, GenerationOptions
from ovbot.core.errors import InvalidStructuredOutput
from ovbot.core.config import Settings
from ovbot.core.jobs.base import EventSink
from ovbot.core.turns import ReasoningMode

log = logging.getLogger("ovbot.chat")

FALLBACK_REPLY = "Sorry — I could not finish that answer. Please try again or rephrase."
THINKING_STATUS = "thinking"


@dataclass(frozen=True, slots=True)
class AnswerSettings:
    """How a chat answer is generated.

    The bounds work together: reasoning (``max_reasoning_chars``) and the JSON answer
    share ``max_new_tokens`` (``None``: the engine's default, 1024 tokens by default),
    so ~1500 characters of thinking (~450 tokens) leave room for a full answer. Bounds up
    to ``grammar_max_length`` go into the grammar as ``maxLength`` (the model must close
    the string); longer ones are enforced here, by stopping the stream at the limit,
    because long ``maxLength`` bounds make every token ~15x slower on a real vocabulary.
    ``None`` removes a bound.
    """

    response_max_chars: int | None = 2000
    #: Stable Diffusion's text encoder reads ~77 tokens (~300 characters) anyway
    image_prompt_max_chars: int | None = 250
    #: bounds above this stay out of the grammar and are enforced while reading
    grammar_max_length: int = GRAMMAR_MAX_LENGTH
    #: the reasoning bound of the "full" mode; "short" is ``short_reasoning_chars`` (never
    #: above it), "off" is 0: the model answers at once
    max_reasoning_chars: int | None = 1500
    short_reasoning_chars: int = 400
    max_new_tokens: int | None = None
    temperature: float = 0.6
    seed: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerSettings:
        return cls(
            max_reasoning_chars=settings.reasoning_full_chars,
            short_reasoning_chars=settings.reasoning_short_chars,
        )

    def reasoning_budget(self, mode: ReasoningMode) -> int | None:
        """Characters of reasoning ``mode`` allows (None: unbounded)."""
        if mode == "off":
            return 0
        if mode == "short":
            full = self.max_reasoning_chars
            return self.short_reasoning_chars if full is None else min(self.short_reasoning_chars, full)
        return self.max_reasoning_chars

    def options(self, max_reasoning_chars: int | None | Literal["default"] = "default") -> GenerationOptions:
        """``max_reasoning_chars``: this answer's reasoning bound (0: answer at once,
        None: unbounded); by default the settings' bound."""
        bound = self.max_reasoning_chars if max_reasoning_chars == "default" else max_reasoning_chars
        return GenerationOptions(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            json_schema=answer_schema(
                self.response_max_chars, self.image_prompt_max_chars, self.grammar_max_length
            ),
            think=bound != 0,
            max_reasoning_chars=bound,
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    #: exactly the text sent in "text" events (what users saw and what gets stored)
    text: str
    reasoning: str
    #: a complete, non-blank image prompt from the model, else None
    image_prompt: str | None
    #: the model's answer was unusable and ``text`` is the fallback reply
    fallback: bool = False


class _ReplyText:
    """The reply as sent so far; leading whitespace is held back, so a reply that never
    gets past whitespace sends nothing and can be replaced by the fallback cleanly. At
    ``max_chars`` it is full: what goes beyond is dropped."""

    def __init__(self, max_chars: int | None) -> None:
        self._parts: list[str] = []
        self._room = max_chars

    def add(self, text: str) -> str:
        if not self._parts:
            text = text.lstrip()
        if self._room is not None:
            text = text[: self._room]
            self._room -= len(text)
        if text:
            self._parts.append(text)
        return text

    @property
    def full(self) -> bool:
        return self._room is not None and self._room <= 0

    @property
    def text(self) -> str:
        return "".join(self._parts)


class AnswerGenerator:
    """Streams one answer: a single "thinking" status while the model reasons
    ("reasoning" deltas too when asked for), then the ``assistant_response`` characters
    as "text" deltas. A broken or cut-off answer never fails the job: the text that got
    through is kept, or the fallback reply is sent when nothing did."""

    def __init__(self, llm: LLMEngine, settings: AnswerSettings | None = None) -> None:
        self._llm = llm
        self.settings = settings or AnswerSettings()

    def _reader_limit(self) -> int | None:
        """The reply limit this generator enforces: the grammar holds the small ones."""
        limit = self.settings.response_max_chars
        return limit if limit is not None and limit > self.settings.grammar_max_length else None

    async def warm_up(self) -> None:
        """One token under the answer grammar, so the engine compiles it now and not
        while the first user waits (seconds over a real vocabulary, and a local engine
        stalls every running chat while it compiles). The token is thrown away; an
        answer cut off after one token is the expected outcome."""
        options = replace(self.settings.options(), max_new_tokens=1, think=False, temperature=0.0)
        stream = await self._llm.stream([ChatMessage("user", "Hello")], options)
        try:
            await stream.result()
        except InvalidStructuredOutput:
            pass

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        sink: EventSink,
        show_reasoning: bool,
        max_reasoning_chars: int | None | Literal["default"] = "default",
    ) -> Answer:
        stream = await self._llm.stream(messages, self.settings.options(max_reasoning_chars))
        parser = AnswerStreamParser()
        reply = _ReplyText(self._reader_limit())
        reasoning: list[str] = []
        try:
            await self._relay(stream, parser, reply, reasoning, sink, show_reasoning)
            if reply.full:  # the limit the grammar does not enforce: stop here, keep the reply
                log.info("answer reached %s characters: stopped", self.settings.response_max_chars)
                broken = True
            else:
                await stream.result()
                broken = False
        except InvalidStructuredOutput as exc:
            log.info(
                "structured answer unusable (truncated=%s): keeping %d characters",
                exc.truncated,
                len(reply.text),
            )
            broken = True
        finally:
            if not stream.done:  # cancelled job or error: free the engine's slot
                await stream.cancel()
        return self._finish(reply, parser, "".join(reasoning), sink, broken)

    async def _relay(
        self,
        stream: LLMStream,
        parser: AnswerStreamParser,
        reply: _ReplyText,
        reasoning: list[str],
        sink: EventSink,
        show_reasoning: bool,
    ) -> None:
        thinking_sent = False
        async for delta in stream:
            if delta.kind == "reasoning":
                reasoning.append(delta.text)
                if not thinking_sent:
                    sink.emit("status", THINKING_STATUS)
                    thinking_sent = True
                if show_reasoning:
                    sink.emit("reasoning", delta.text)
                continue
            text = reply.add(parser.feed(delta.text))
            if text:
                sink.emit("text", text)
            if reply.full:
                return

    def _finish(
        self, reply: _ReplyText, parser: AnswerStreamParser, reasoning: str, sink: EventSink, broken: bool
    ) -> Answer:
        # an image prompt counts only from a complete answer: half a prompt draws nonsense
        prompt = None if broken else (parser.image_prompt or "").strip() or None
        if reply.text:
            return Answer(reply.text, reasoning, prompt)
        sink.emit("text", FALLBACK_REPLY)
        return Answer(FALLBACK_REPLY, reasoning, prompt, fallback=True)
