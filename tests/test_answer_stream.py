"""The incremental answer parser: same result for every way the text can be split,
correct escapes, useful output on cut-off text, no exception on garbage."""

from __future__ import annotations

import json
import random

import pytest

from ovbot.core.chat.answer_stream import (
    IMAGE_PROMPT_KEY,
    RESPONSE_KEY,
    AnswerStreamParser,
    JsonStringDecoder,
    answer_schema,
    parse_answer,
)

RESPONSE = 'Hi "there"\\ \n\ttab é 😀 end\x01'
SAMPLE = json.dumps({RESPONSE_KEY: RESPONSE, IMAGE_PROMPT_KEY: "a cat 🐱"})  # ASCII escapes
SAMPLE_RAW = json.dumps({RESPONSE_KEY: RESPONSE, IMAGE_PROMPT_KEY: "a cat 🐱"}, ensure_ascii=False)


def feed_chunks(chunks: list[str]) -> tuple[AnswerStreamParser, str]:
    parser = AnswerStreamParser()
    streamed = "".join(parser.feed(chunk) for chunk in chunks)
    streamed += parser.finish()
    return parser, streamed


@pytest.mark.parametrize("sample", [SAMPLE, SAMPLE_RAW], ids=["ascii", "raw"])
def test_every_split_point_gives_the_same_answer(sample: str) -> None:
    for cut in range(len(sample) + 1):
        parser, streamed = feed_chunks([sample[:cut], sample[cut:]])
        assert streamed == RESPONSE, cut
        assert parser.response == RESPONSE
        assert parser.image_prompt == "a cat 🐱"
        assert parser.complete and parser.response_complete and not parser.failed


def test_every_two_split_points_and_single_characters() -> None:
    sample = json.dumps({RESPONSE_KEY: 'a\\u00e9😀"', IMAGE_PROMPT_KEY: None})
    expected = 'a\\u00e9😀"'
    for first in range(len(sample) + 1):
        for second in range(first, len(sample) + 1):
            _, streamed = feed_chunks([sample[:first], sample[first:second], sample[second:]])
            assert streamed == expected, (first, second)
    parser, streamed = feed_chunks(list(sample))
    assert streamed == expected and parser.image_prompt is None and parser.complete


def test_text_arrives_as_soon_as_it_is_decodable() -> None:
    parser = AnswerStreamParser()
    assert parser.feed('{"assistant_response": "Hel') == "Hel"
    assert parser.feed("lo") == "lo"
    assert parser.feed("\\") == ""  # half an escape is held back
    assert parser.feed("n w\\ud83d") == "\n w"  # a high surrogate waits for its pair
    assert parser.feed("\\ude00!") == "😀!"
    assert parser.feed('", "image_prompt": null}') == ""
    assert parser.response == "Hello\n w😀!" and parser.complete


@pytest.mark.parametrize(
    "body, expected",
    [
        (r"\n\r\t\b\f\/\\\"", '\n\r\t\b\f/\\"'),
        (r"\u0041\u00e9\u4e2d", "Aé中"),
        (r"\uD83D\uDE00", "😀"),  # upper-case hex, surrogate pair
        (r"\ud83d", "\ufffd"),  # lone high surrogate at the end of the string
        (r"\ud83dx", "\ufffdx"),  # high surrogate followed by a plain character
        (r"\ud83d\n", "\ufffd\n"),  # ... by another escape
        (r"\ude00", "\ufffd"),  # lone low surrogate
        (r"\ud83d\ud83d\ude00", "\ufffd😀"),  # two highs, then the low
        ("raw\ncontrol\x00chars", "raw\ncontrol\x00chars"),
        (r"\q", "q"),  # unknown escape: keep the character
        (r"\u12x4", "\ufffdx4"),  # broken \u escape
    ],
)
def test_escapes(body: str, expected: str) -> None:
    for cut in range(len(body) + 1):
        parser, streamed = feed_chunks(
            ['{"assistant_response":"' + body[:cut], body[cut:] + '","image_prompt":null}']
        )
        assert streamed == expected, cut
        assert parser.complete


def test_string_decoder_reports_consumed_position() -> None:
    decoder = JsonStringDecoder()
    text, index = decoder.feed('ab\\"c" tail', 0)
    assert (text, index, decoder.closed) == ('ab"c', 6, True)


def test_whitespace_and_key_order() -> None:
    text = '\n  { "image_prompt" :\n "a dog" ,\n\t"assistant_response"\n:\n"woof"  }  '
    parser = parse_answer(text)
    assert parser.response == "woof" and parser.image_prompt == "a dog" and parser.complete


def test_unknown_keys_and_values_are_skipped() -> None:
    text = json.dumps(
        {
            "extra": {"nested": ["x", "}", {"y": '\\"]'}], "n": 1.5e3},
            "flag": True,
            "num": -12,
            RESPONSE_KEY: "ok",
            "after": None,
            IMAGE_PROMPT_KEY: "sky",
        }
    )
    for cut in range(len(text) + 1):
        parser, streamed = feed_chunks([text[:cut], text[cut:]])
        assert (streamed, parser.image_prompt, parser.complete) == ("ok", "sky", True), cut


def test_image_prompt_variants() -> None:
    assert parse_answer('{"assistant_response":"a","image_prompt":null}').image_prompt is None
    assert parse_answer('{"assistant_response":"a","image_prompt":""}').image_prompt == ""
    assert parse_answer('{"assistant_response":"a","image_prompt":42}').image_prompt is None
    assert parse_answer('{"assistant_response":"a"}').image_prompt is None
    # a cut-off image prompt is not trusted
    assert parse_answer('{"assistant_response":"a","image_prompt":"a half').image_prompt is None


def test_duplicate_response_key_keeps_the_streamed_one() -> None:
    parser = parse_answer('{"assistant_response":"first","assistant_response":"second","image_prompt":null}')
    assert parser.response == "first" and parser.complete


@pytest.mark.parametrize(
    "text, response",
    [
        ('{"assistant_response": "Hello wor', "Hello wor"),
        ('{"assistant_response": "Hello\\', "Hello"),
        ('{"assistant_response": "Hello\\u00', "Hello"),
        ('{"assistant_response": "Hi \\ud83d', "Hi \ufffd"),
        ('{"assistant_resp', ""),
        ('{"assistant_response"', ""),
        ("{", ""),
        ("", ""),
        ('{"assistant_response": "done", "image_pro', "done"),
    ],
)
def test_cut_off_input_keeps_what_arrived(text: str, response: str) -> None:
    parser, streamed = feed_chunks([text])
    assert streamed == response and parser.response == response
    assert not parser.complete
    assert parser.image_prompt is None
    assert parser.response_complete == text.endswith('"done", "image_pro')


def test_leading_text_before_the_object_is_skipped() -> None:
    parser = parse_answer('```json\n{"assistant_response":"x","image_prompt":null}\n```')
    assert parser.response == "x" and parser.complete


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        "{oops}",
        '{"assistant_response" "missing colon"}',
        '{"assistant_response": "a" "b"}',
        '{"a": ]]]]}',
        '{"assistant_response": nul}',
        "}}}}{{{{",
        '{"assistant_response": "\\',
        "\x00\x01\ud800",
    ],
)
def test_garbage_never_raises(text: str) -> None:
    for cut in range(len(text) + 1):
        parser, streamed = feed_chunks([text[:cut], text[cut:]])
        assert isinstance(streamed, str) and streamed == parser.response
        assert parser.image_prompt is None or isinstance(parser.image_prompt, str)


def test_random_garbage_never_raises() -> None:
    rng = random.Random(1234)
    alphabet = '{}[]":,\\u0123456789abcdefnul tr\n\t\x00é😀' + RESPONSE_KEY + IMAGE_PROMPT_KEY
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        chunks, rest = [], text
        while rest:
            size = rng.randrange(1, 6)
            chunks.append(rest[:size])
            rest = rest[size:]
        parser, streamed = feed_chunks(chunks)
        assert streamed == parser.response
        streamed.encode("utf-8")  # never a lone surrogate


def test_matches_json_loads_on_random_valid_answers() -> None:
    rng = random.Random(99)
    pieces = ["a", " ", "\n", '"', "\\", "é", "😀", "\x07", "中", "/", "\ufffd"]
    for _ in range(200):
        response = "".join(rng.choice(pieces) for _ in range(rng.randrange(30)))
        image = rng.choice([None, "a tree", '😀 "q"'])
        text = json.dumps({RESPONSE_KEY: response, IMAGE_PROMPT_KEY: image}, ensure_ascii=rng.random() < 0.5)
        cut = rng.randrange(len(text) + 1)
        parser, streamed = feed_chunks([text[:cut], text[cut:]])
        assert (streamed, parser.image_prompt) == (response, image)


def test_schema_bounds() -> None:
    schema = answer_schema(40, 30)
    assert schema["properties"][RESPONSE_KEY] == {"type": "string", "maxLength": 40}
    assert schema["properties"][IMAGE_PROMPT_KEY] == {"type": ["string", "null"], "maxLength": 30}
    assert set(schema["required"]) == {RESPONSE_KEY, IMAGE_PROMPT_KEY}
    unbounded = answer_schema(None, None)
    assert "maxLength" not in unbounded["properties"][RESPONSE_KEY]
    assert answer_schema() is not answer_schema()
    # long bounds stay out of the grammar (slow token masks over a real vocabulary)
    default = answer_schema()
    assert "maxLength" not in default["properties"][RESPONSE_KEY]
    assert default["properties"][IMAGE_PROMPT_KEY]["maxLength"] == 250
    assert answer_schema(256, 257)["properties"][RESPONSE_KEY]["maxLength"] == 256
    assert "maxLength" not in answer_schema(256, 257)["properties"][IMAGE_PROMPT_KEY]
