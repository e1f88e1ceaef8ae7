"""Builds the messages sent to the chat model for one turn.

Layout, from the most to the least stable: the configured system prompt and the answer
format (identical for every chat), then the chat's persona (changes rarely), then the
history, then the new message. The engine's prefix cache reuses the longest common
prefix of consecutive requests, so nothing that changes every turn (a timestamp, a
counter) may appear before the history: it would make the cache miss every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ovbot.core.chat.answer_stream import IMAGE_PROMPT_KEY, RESPONSE_KEY
from ovbot.core.config import Settings
from ovbot.core.domain import Turn
from ovbot.core.engines.types import ChatMessage

#: counts the tokens of a text; a real tokenizer or ``estimate_tokens``
TokenCounter = Callable[[str], int]

#: English text averages ~4 characters per token on Qwen-style BPE vocabularies; 3.5
#: errs towards overestimating, so the history rather stays under the budget
CHARS_PER_TOKEN = 3.5
#: role markers and separators the chat template adds around each message
MESSAGE_OVERHEAD_TOKENS = 4

ANSWER_FORMAT = (
    "Reply with one JSON object and nothing else: "
    f'{{"{RESPONSE_KEY}": "<your reply to the user>", "{IMAGE_PROMPT_KEY}": null}}. '
    f"Put your whole reply in {RESPONSE_KEY}. Set {IMAGE_PROMPT_KEY} to a short English "
    "description of the picture (subject, style, colors, details) only when the user asks "
    "you to draw, paint, generate or show an image; otherwise it must be null."
)


def estimate_tokens(text: str) -> int:
    """Token count without a tokenizer: cheap, and good enough to budget history."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class HistoryWindow:
    """Chooses which past turns go into the prompt: the last ``max_turns``, then the
    oldest dropped until the rest fits ``token_budget``."""

    def __init__(self, max_turns: int, token_budget: int, count_tokens: TokenCounter) -> None:
        self.max_turns = max_turns
        self.token_budget = token_budget
        self._count = count_tokens

    def select(self, turns: Sequence[Turn]) -> list[Turn]:
        kept = list(turns[-self.max_turns :]) if self.max_turns > 0 else []
        costs = [self.cost(turn.content) for turn in kept]
        total = sum(costs)
        start = 0
        while start < len(kept) and total > self.token_budget:
            total -= costs[start]
            start += 1
        # a history that opens with the model's answer to a dropped question reads as
        # if the model spoke first; drop it too
        while start < len(kept) and kept[start].role != "user":
            start += 1
        return kept[start:]

    def cost(self, text: str) -> int:
        return self._count(text) + MESSAGE_OVERHEAD_TOKENS


class PromptBuilder:
    """System prompt (+ answer format, + persona), trimmed history, new message."""

    def __init__(
        self,
        system_prompt: str,
        history_turns: int,
        token_budget: int,
        count_tokens: TokenCounter | None = None,
        *,
        answer_format: str | None = ANSWER_FORMAT,
    ) -> None:
        self.system_prompt = system_prompt.strip()
        self.answer_format = answer_format
        self.window = HistoryWindow(history_turns, token_budget, count_tokens or estimate_tokens)

    @classmethod
    def from_settings(cls, settings: Settings, count_tokens: TokenCounter | None = None) -> PromptBuilder:
        return cls(
            settings.system_prompt,
            settings.history_turns,
            settings.history_token_budget,
            count_tokens,
        )

    @property
    def history_turns(self) -> int:
        """How many turns to load from the store (the window trims further)."""
        return self.window.max_turns

    def build(
        self, message: str, history: Sequence[Turn] = (), persona: str | None = None
    ) -> list[ChatMessage]:
        messages = [self.system_message(persona)]
        messages.extend(self.history_messages(history))
        messages.append(ChatMessage("user", message))
        return messages

    def system_message(self, persona: str | None = None) -> ChatMessage:
        parts = [part for part in (self.system_prompt, self.answer_format) if part]
        if persona and persona.strip():
            parts.append(f"Persona for this chat, set by its users: {persona.strip()}")
        return ChatMessage("system", "\n\n".join(parts))

    def history_messages(self, history: Sequence[Turn]) -> list[ChatMessage]:
        """Assistant turns hold only stored answers (never reasoning): replaying old
        reasoning would waste the context and teach the model to skip thinking."""
        return [ChatMessage(turn.role, turn.content) for turn in self.window.select(history)]
