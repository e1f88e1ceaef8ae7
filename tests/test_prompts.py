"""Prompt building: layout, stable prefix, history window and token budget."""

from __future__ import annotations

from ovbot.core.config import Settings
from ovbot.core.domain import Turn
from ovbot.core.engines.types import ChatMessage
from ovbot.core.prompts import (
    ANSWER_FORMAT,
    MESSAGE_OVERHEAD_TOKENS,
    PromptBuilder,
    estimate_tokens,
)

SYSTEM = "You are a test bot."


def turns(count: int, text: str = "x") -> list[Turn]:
    """``count`` alternating turns, user first, oldest first."""
    return [Turn("c1", "user" if i % 2 == 0 else "assistant", f"{text}{i}") for i in range(count)]


def test_layout_system_history_message() -> None:
    builder = PromptBuilder(SYSTEM, history_turns=10, token_budget=10_000)
    history = turns(4)
    messages = builder.build("new question", history)

    assert messages[0].role == "system"
    assert messages[0].content.startswith(SYSTEM)
    assert ANSWER_FORMAT in messages[0].content
    assert "assistant_response" in messages[0].content and "image_prompt" in messages[0].content
    assert messages[1:-1] == [ChatMessage(t.role, t.content) for t in history]
    assert messages[-1] == ChatMessage("user", "new question")


def test_persona_is_appended_to_the_system_prompt() -> None:
    builder = PromptBuilder(SYSTEM, 10, 10_000)
    plain = builder.build("hi")[0].content
    with_persona = builder.build("hi", persona="  a pirate  ")[0].content
    assert with_persona.startswith(plain)  # the shared part stays a common prefix
    assert with_persona.endswith("a pirate")
    assert builder.build("hi", persona="   ")[0].content == plain


def test_prefix_is_stable_turn_after_turn() -> None:
    builder = PromptBuilder(SYSTEM, 10, 10_000)
    history = turns(2)
    first = builder.build("third message", history, persona="calm")
    history += [Turn("c1", "user", "third message"), Turn("c1", "assistant", "reply")]
    second = builder.build("fourth message", history, persona="calm")
    # everything sent last time except the final user message is a prefix of this time
    assert second[: len(first) - 1] == first[:-1]
    assert second[len(first) - 1] == first[-1]


def test_history_turns_limit() -> None:
    builder = PromptBuilder(SYSTEM, history_turns=4, token_budget=10_000)
    messages = builder.build("now", turns(10))
    assert [m.content for m in messages[1:-1]] == ["x6", "x7", "x8", "x9"]
    assert PromptBuilder(SYSTEM, 0, 10_000).build("now", turns(6)) == [
        builder.system_message(),
        ChatMessage("user", "now"),
    ]


def test_token_budget_drops_oldest_first() -> None:
    # every turn costs 10 + overhead with this counter
    per_turn = 10 + MESSAGE_OVERHEAD_TOKENS
    builder = PromptBuilder(SYSTEM, 20, token_budget=4 * per_turn, count_tokens=lambda text: 10)
    history = turns(8)
    selected = builder.history_messages(history)
    assert [m.content for m in selected] == ["x4", "x5", "x6", "x7"]
    assert builder.build("q", history)[-1] == ChatMessage("user", "q")


def test_budget_never_starts_history_with_an_assistant_turn() -> None:
    per_turn = 10 + MESSAGE_OVERHEAD_TOKENS
    builder = PromptBuilder(SYSTEM, 20, token_budget=3 * per_turn, count_tokens=lambda text: 10)
    selected = builder.history_messages(turns(8))
    assert [m.content for m in selected] == ["x6", "x7"]
    assert selected[0].role == "user"


def test_a_huge_turn_is_dropped_with_everything_before_it() -> None:
    builder = PromptBuilder(SYSTEM, 20, token_budget=100)
    history = [
        Turn("c", "user", "old"),
        Turn("c", "assistant", "a" * 10_000),
        Turn("c", "user", "recent"),
        Turn("c", "assistant", "short"),
    ]
    assert [m.content for m in builder.history_messages(history)] == ["recent", "short"]
    assert PromptBuilder(SYSTEM, 20, token_budget=0).history_messages(history) == []


def test_default_estimator_and_pluggable_counter() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcdefg") == 2
    assert estimate_tokens("a" * 350) == 100
    counted: list[str] = []

    def counter(text: str) -> int:
        counted.append(text)
        return 1

    PromptBuilder(SYSTEM, 10, 100, count_tokens=counter).build("q", turns(3))
    assert counted == ["x0", "x1", "x2"]


def test_answer_format_can_be_left_out() -> None:
    builder = PromptBuilder(SYSTEM, 10, 100, answer_format=None)
    assert builder.system_message().content == SYSTEM


def test_from_settings() -> None:
    settings = Settings(system_prompt="Be kind.", history_turns=3, history_token_budget=50)
    builder = PromptBuilder.from_settings(settings)
    assert builder.history_turns == 3 and builder.window.token_budget == 50
    assert builder.system_message().content.startswith("Be kind.")
