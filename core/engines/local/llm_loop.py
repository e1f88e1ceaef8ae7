"""The worker's chat loop: every concurrent chat request shares one
ContinuousBatchingPipeline, driven by ``add_request`` / ``step`` / ``GenerationHandle``.

Runs on the worker process's main thread. ``step()`` holds the GIL for a whole step,
which is why this lives in its own process and not in the bot's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ovbot.core.engines.local.detokenizer import IncrementalDetokenizer
from ovbot.core.engines.local.protocol import (
    Cancel,
    ChatDeltas,
    ChatDone,
    ChatStarted,
    RequestFailed,
    SubmitChat,
)

log = logging.getLogger("ovbot.engine.llm")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
#: what ends reasoning when the model did not (think=False prompts, the reasoning bound)
CLOSE_REASONING = f"\n{THINK_CLOSE}\n\n"
#: the answer phase's pipeline request id is the chat's id plus this (ids must differ)
_ANSWER_ID_OFFSET = 1 << 40
TOO_LONG = "The conversation is too long for the model's memory; start a new one or shorten it."


class PromptTooLong(Exception):
    """A prompt the scheduler cannot take in one step (dynamic split-fuse off). Handed
    to the pipeline it would abort the whole worker process, every chat with it."""


@dataclass(slots=True)
class _Active:
    request_id: int
    handle: Any
    detok: IncrementalDetokenizer
    submitted_at: float
    first_token_at: float | None = None
    finish_reason: str = "stop"
    sent_first: bool = False
    generated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: set while a structured answer is still reasoning: how to go on once it stops
    reasoning: _Reasoning | None = None


@dataclass(slots=True)
class _Reasoning:
    """Reasoning runs unconstrained (stopping at ``</think>``); the answer then runs as a
    second pipeline request on the prompt + the reasoning's own token ids, constrained by
    the JSON grammar. Prefix caching makes that second prefill nearly free.

    Why not one request with a grammar "free text up to </think>, then JSON": a bounded
    reasoning length in the grammar (``[\\s\\S]{0,1500}?</think>``) is a regex with
    thousands of states, and XGrammar took ~45 s per request over the real 151936-token
    vocabulary (measured on the real-shape model), stalling every chat in the batch."""

    request: SubmitChat
    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)
    chars: int = 0


def build_structured_output(og: Any, json_schema: str) -> Any:
    """The answer's grammar. XGrammar caches it per schema: only a schema's first use
    compiles it (seconds for bounded strings over a real vocabulary; the chat service
    warms its schema up at start)."""
    config = og.StructuredOutputConfig()
    config.json_schema = json_schema
    return config


class ChatPromptBuilder:
    """Applies the model's chat template and decides where reasoning starts."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def build(self, request: SubmitChat) -> tuple[str, bool]:
        history = [{"role": role, "content": content} for role, content in request.messages]
        prompt = self._tokenizer.apply_chat_template(history, add_generation_prompt=True)
        opens_thinking = prompt.rstrip().endswith(THINK_OPEN)
        if opens_thinking and not request.think:
            prompt += CLOSE_REASONING
        return prompt, opens_thinking and request.think


class LLMLoop:
    """Owns the pipeline; other threads talk to it only through ``inbox``."""

    def __init__(
        self,
        og: Any,
        pipeline: Any,
        send: Callable[[object], None],
        busy: threading.Event,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self._og = og
        #: the longest prompt one scheduler step takes (None: split-fuse chunks any prompt)
        self._max_prompt_tokens = max_prompt_tokens
        self._pipe = pipeline
        self._tokenizer = pipeline.get_tokenizer()
        self._prompts = ChatPromptBuilder(self._tokenizer)
        encoded = self._tokenizer.encode(CLOSE_REASONING, add_special_tokens=False).input_ids
        self._close_ids = [int(i) for i in encoded.data[0]]
        self._send = send
        self._busy = busy
        self.inbox: queue.Queue[SubmitChat | Cancel | None] = queue.Queue()
        self._active: dict[int, _Active] = {}
        self.steps_total = 0
        self.peak_batch = 0

    @property
    def active_count(self) -> int:
        return len(self._active)

    def run(self) -> None:
        """Until a ``None`` arrives in the inbox: admit new requests, step, stream out."""
        while True:
            if not self._drain_inbox(block=not self._active):
                break
            if self._active:
                self._busy.set()
                self.peak_batch = max(self.peak_batch, len(self._active))
                self.steps_total += 1
                self._pipe.step()
                self._collect()
            if not self._active:
                self._busy.clear()
        for active in self._active.values():
            active.handle.cancel()
        self._busy.clear()

    # ------------------------------------------------------------------ intake
    def _drain_inbox(self, block: bool) -> bool:
        try:
            item = self.inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            if item is None:
                return False
            if isinstance(item, Cancel):
                self._cancel(item.request_id)
            else:
                self._admit(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return True

    def _admit(self, request: SubmitChat) -> None:
        if request.max_reasoning_chars == 0:
            request = replace(request, think=False)  # no room to think: answer at once
        try:
            prompt, in_reasoning = self._prompts.build(request)
            tokens = self._tokenizer.encode(prompt, add_special_tokens=False).input_ids
            reasoning_first = in_reasoning and request.json_schema is not None
            config = self._generation_config(request, request.max_new_tokens, constrained=not reasoning_first)
            if reasoning_first:
                config.stop_strings = {THINK_CLOSE}
                config.include_stop_str_in_output = True
            handle = self._add(request.request_id, tokens, config)
        except PromptTooLong:
            self._send(RequestFailed(request.request_id, "bad_parameter", TOO_LONG, "messages"))
            return
        except Exception as exc:  # a bad schema or template error fails only this request
            log.warning("request %s rejected: %s", request.request_id, exc)
            self._send(
                RequestFailed(request.request_id, "bad_parameter", f"request rejected: {exc}", "options")
            )
            return
        prompt_tokens = int(tokens.get_shape()[-1])
        self._active[request.request_id] = _Active(
            request_id=request.request_id,
            handle=handle,
            detok=IncrementalDetokenizer(self._decode),
            submitted_at=time.monotonic(),
            reasoning=_Reasoning(request, [int(i) for i in tokens.data[0]]) if reasoning_first else None,
        )
        self._send(ChatStarted(request.request_id, prompt_tokens, in_reasoning))

    def _generation_config(self, request: SubmitChat, max_new_tokens: int, constrained: bool) -> Any:
        config = self._og.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.ignore_eos = request.ignore_eos
        if request.temperature > 0:
            config.do_sample = True
            config.temperature = request.temperature
            config.top_p = request.top_p
        if request.seed is not None:
            config.rng_seed = request.seed
        if constrained and request.json_schema is not None:
            config.structured_output_config = build_structured_output(self._og, request.json_schema)
        return config

    def _reasoning_over(self, active: _Active, status: str) -> str | None:
        """Text to add when the reasoning phase is over ("" if the model closed it
        itself), or None while it goes on or when the whole request ends here."""
        reasoning = active.reasoning
        assert reasoning is not None
        if status == "RUNNING":
            bound = reasoning.request.max_reasoning_chars
            return CLOSE_REASONING if bound is not None and reasoning.chars > bound else None
        if status != "FINISHED" or active.finish_reason == "length":
            return None  # dropped, ignored or out of tokens: finishes as it is
        closed = self._decode(reasoning.generated_ids[-8:]).rstrip().endswith(THINK_CLOSE)
        return "" if closed else CLOSE_REASONING

    def _switch_to_answer(self, active: _Active, closing: str, deltas: list[tuple[int, str]]) -> bool:
        """Start the answer phase; False when the request ends here instead (no tokens
        left, or the answer request could not be added)."""
        try:
            switch = self._start_answer(active, closing)
        except Exception as exc:  # the answer's grammar or prompt failed: end with what came
            log.warning("request %s: answer phase failed: %s", active.request_id, exc)
            active.reasoning = None
            return False
        if switch:
            deltas.append((active.request_id, switch))
        return active.finish_reason != "length"

    def _start_answer(self, active: _Active, closing: str) -> str:
        """Replace the reasoning request by the constrained answer request; returns the
        text to stream for the switch (the closing tag when it was added here)."""
        import numpy as np
        import openvino as ov

        reasoning = active.reasoning
        assert reasoning is not None
        active.reasoning = None
        if active.handle.get_status().name == "RUNNING":
            active.handle.cancel()  # cut at the reasoning bound
        tail = active.detok.flush()
        request = reasoning.request
        remaining = request.max_new_tokens - active.generated
        if remaining <= 0:
            active.finish_reason = "length"
            return tail
        ids = reasoning.prompt_ids + reasoning.generated_ids
        if closing:
            ids += self._close_ids
        config = self._generation_config(request, remaining, constrained=True)
        tokens = ov.Tensor(np.array([ids], dtype=np.int64))
        active.handle = self._add(request.request_id + _ANSWER_ID_OFFSET, tokens, config)
        active.detok = IncrementalDetokenizer(self._decode)
        return tail + closing

    def _add(self, request_id: int, tokens: Any, config: Any) -> Any:
        length = int(tokens.get_shape()[-1])
        if self._max_prompt_tokens is not None and length > self._max_prompt_tokens:
            raise PromptTooLong(
                f"a prompt of {length} tokens is longer than the {self._max_prompt_tokens} one step takes "
                "(OVBOT_LLM_SPLIT_FUSE=false)"
            )
        return self._pipe.add_request(request_id, tokens, config)

    def _cancel(self, request_id: int) -> None:
        active = self._active.pop(request_id, None)
        if active is not None:
            active.handle.cancel()
            log.info("request %s cancelled after %d tokens", request_id, active.generated)

    def _decode(self, ids: Any) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ output
    def _collect(self) -> None:
        deltas: list[tuple[int, str]] = []
        first_tokens: list[tuple[int, float]] = []
        finished: list[_Active] = []
        for active in self._active.values():
            status = active.handle.get_status()
            while active.handle.can_read():
                for output in active.handle.read().values():
                    ids = list(output.generated_ids)
                    if ids and active.first_token_at is None:
                        active.first_token_at = time.monotonic()
                        first_tokens.append(
                            (active.request_id, active.first_token_at - active.submitted_at)
                        )
                    active.generated += len(ids)
                    text = active.detok.add(ids)
                    if active.reasoning is not None:
                        active.reasoning.generated_ids.extend(int(i) for i in ids)
                        active.reasoning.chars += len(text)
                    if text:
                        deltas.append((active.request_id, text))
                    if str(output.finish_reason).endswith("LENGTH"):
                        active.finish_reason = "length"
            if active.reasoning is not None:
                closing = self._reasoning_over(active, status.name)
                if closing is not None:
                    if self._switch_to_answer(active, closing, deltas):
                        continue  # the answer request runs from the next step on
                    finished.append(active)
                    continue
            if status.name != "RUNNING":
                finished.append(active)
        if deltas or first_tokens:
            self._send(ChatDeltas(tuple(deltas), tuple(first_tokens)))
        for active in finished:
            self._finish(active, active.handle.get_status().name)

    def _finish(self, active: _Active, status: str) -> None:
        del self._active[active.request_id]
        if status == "IGNORED":
            self._send(RequestFailed(active.request_id, "bad_parameter", TOO_LONG, "messages"))
            return
        tail = active.detok.flush()
        if tail:
            self._send(ChatDeltas(((active.request_id, tail),)))
        self._send(ChatDone(active.request_id, active.generated, active.finish_reason))
