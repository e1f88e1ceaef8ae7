"""Incremental parsing of the structured answer the model streams.

The answer arrives as JSON, ``{"assistant_response": "...", "image_prompt": "..."|null}``,
one small chunk at a time. Waiting for the closing brace would make users stare at a
silent chat for the whole answer, so the characters of ``assistant_response`` are
decoded and handed out as soon as they arrive. The parser is lenient on purpose: model
output can be cut off by the token limit or be plain garbage, and whatever was decoded
so far is still useful as a reply. It never raises on its input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Any

RESPONSE_KEY = "assistant_response"
IMAGE_PROMPT_KEY = "image_prompt"

_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_STRING_SPECIAL = re.compile(r'["\\]')
_REPLACEMENT = "\ufffd"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


#: the longest ``maxLength`` put into the grammar. Above ~256 XGrammar's token masks get
#: slow over a real 151936-token vocabulary: measured 0.08 s per token up to 256, 0.11 s
#: at 257, 1.2-1.4 s at 600-2000 (vs 0.08 s unconstrained). Longer bounds are enforced by
#: whoever reads the answer (``AnswerGenerator`` stops the stream at the limit).
GRAMMAR_MAX_LENGTH = 256


def answer_schema(
    response_max_chars: int | None = 2000,
    image_prompt_max_chars: int | None = 250,
    grammar_max_length: int = GRAMMAR_MAX_LENGTH,
) -> dict[str, Any]:
    """The JSON schema that constrains the model's answer.

    ``maxLength`` bounds (up to ``GRAMMAR_MAX_LENGTH``) keep a rambling model inside the
    token budget, so the JSON closes instead of being cut off; larger bounds and ``None``
    leave the string open in the grammar. A fresh dict each call, so no caller can change
    another's schema.
    """

    def string(max_chars: int | None) -> dict[str, Any]:
        if max_chars is None or max_chars > grammar_max_length:
            return {"type": "string"}
        return {"type": "string", "maxLength": max_chars}

    image = string(image_prompt_max_chars)
    image["type"] = ["string", "null"]
    return {
        "type": "object",
        "properties": {RESPONSE_KEY: string(response_max_chars), IMAGE_PROMPT_KEY: image},
        "required": [RESPONSE_KEY, IMAGE_PROMPT_KEY],
        "additionalProperties": False,
    }


class JsonStringDecoder:
    """Decodes the body of one JSON string (after its opening quote), chunk by chunk.

    Escapes may be split anywhere, including between the two halves of a ``\\uXXXX``
    surrogate pair, so a half-read escape and a lone high surrogate are held back until
    the next chunk decides them. Lone surrogates become U+FFFD: a lone surrogate cannot
    be encoded as UTF-8 and would break storing or sending the text later.
    Raw control characters are kept (the engine parses with ``strict=False`` as well);
    an unknown escape yields its character, a broken ``\\u`` escape U+FFFD.
    """

    def __init__(self) -> None:
        self._escape: str | None = None  # None: not in an escape; else text after "\"
        self._high_surrogate: int | None = None
        self.closed = False

    def feed(self, text: str, start: int = 0) -> tuple[str, int]:
        """Decode from ``text[start:]`` up to the closing quote (consumed) or the end.
        Returns the decoded characters and the index after what was consumed."""
        out: list[str] = []
        index = start
        while index < len(text) and not self.closed:
            if self._escape is not None:
                index = self._feed_escape(text, index, out)
                continue
            match = _STRING_SPECIAL.search(text, index)
            end = match.start() if match else len(text)
            if end > index:
                self._plain(text[index:end], out)
            if match is None:
                return "".join(out), len(text)
            if match.group() == '"':
                self._flush_surrogate(out)
                self.closed = True
            else:
                self._escape = ""
            index = end + 1
        return "".join(out), index

    def finish(self) -> str:
        """What is still held back when the input ends inside the string."""
        out: list[str] = []
        self._escape = None
        self._flush_surrogate(out)
        return "".join(out)

    def _plain(self, text: str, out: list[str]) -> None:
        self._flush_surrogate(out)
        out.append(text)

    def _feed_escape(self, text: str, index: int, out: list[str]) -> int:
        char = text[index]
        assert self._escape is not None
        if self._escape == "":
            if char == "u":
                self._escape = "u"
                return index + 1
            self._escape = None
            self._plain(_SIMPLE_ESCAPES.get(char, char), out)
            return index + 1
        if char not in _HEX_DIGITS:
            # "\u12" followed by a non-hex character: drop the escape, keep the character
            self._escape = None
            self._plain(_REPLACEMENT, out)
            return index
        self._escape += char
        if len(self._escape) == 5:
            code = int(self._escape[1:], 16)
            self._escape = None
            self._code_point(code, out)
        return index + 1

    def _code_point(self, code: int, out: list[str]) -> None:
        if 0xDC00 <= code <= 0xDFFF and self._high_surrogate is not None:
            high, self._high_surrogate = self._high_surrogate, None
            out.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
            return
        self._flush_surrogate(out)
        if 0xD800 <= code <= 0xDBFF:
            self._high_surrogate = code
        elif 0xDC00 <= code <= 0xDFFF:
            out.append(_REPLACEMENT)
        else:
            out.append(chr(code))

    def _flush_surrogate(self, out: list[str]) -> None:
        if self._high_surrogate is not None:
            self._high_surrogate = None
            out.append(_REPLACEMENT)


class _ValueSkipper:
    """Consumes a JSON value that is not streamed: a literal, a number or a nested
    object/array (brackets counted, strings inside them respected)."""

    def __init__(self) -> None:
        self._depth = 0
        self._string: JsonStringDecoder | None = None
        self.done = False

    def feed(self, text: str, index: int) -> int:
        while index < len(text) and not self.done:
            if self._string is not None:
                _, index = self._string.feed(text, index)
                if self._string.closed:
                    self._string = None
                continue
            char = text[index]
            if self._depth == 0 and (char in ",}]" or char.isspace()):
                self.done = True  # the end of a literal; the terminator is not ours
                return index
            index += 1
            if char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                self.done = self._depth == 0
            elif char == '"' and self._depth > 0:
                self._string = JsonStringDecoder()
        return index


class _State(Enum):
    START = "start"
    KEY_OR_END = "key_or_end"
    KEY = "key"
    COLON = "colon"
    VALUE = "value"
    STRING = "string"
    SKIP = "skip"
    AFTER_VALUE = "after_value"
    DONE = "done"
    FAILED = "failed"


class AnswerStreamParser:
    """Feed content chunks of the structured answer; get the ``assistant_response``
    characters back as they arrive, and ``image_prompt`` once the answer is complete.

    Only the first ``assistant_response`` is streamed (a duplicate key is skipped), so
    what users saw is exactly what gets stored. Text before the opening brace is
    skipped (e.g. a markdown fence from an unconstrained remote model); anything that
    breaks the object's structure stops the parser and keeps what was decoded.
    """

    def __init__(self) -> None:
        self._state = _State.START
        self._key = JsonStringDecoder()
        self._key_parts: list[str] = []
        self._value: JsonStringDecoder | None = None
        self._value_key = ""
        self._skipper = _ValueSkipper()
        self._response: list[str] = []
        self._response_seen = False
        self._response_closed = False
        self._image_parts: list[str] | None = None
        self._image_prompt: str | None = None
        self._handlers: dict[_State, Callable[[str, int, list[str]], int]] = {
            _State.START: self._on_start,
            _State.KEY_OR_END: self._on_key_or_end,
            _State.KEY: self._on_key,
            _State.COLON: self._on_colon,
            _State.VALUE: self._on_value,
            _State.STRING: self._on_string,
            _State.SKIP: self._on_skip,
            _State.AFTER_VALUE: self._on_after_value,
        }

    # ---------------------------------------------------------------- public
    def feed(self, chunk: str) -> str:
        """Consume one chunk; return the newly decoded ``assistant_response`` text."""
        out: list[str] = []
        index = 0
        while index < len(chunk) and self._state in self._handlers:
            index = self._handlers[self._state](chunk, index, out)
        return "".join(out)

    def finish(self) -> str:
        """Call at the end of the input: returns response text still held back (a lone
        high surrogate at a cut-off). Idempotent."""
        if self._state is _State.STRING and self._value_key == RESPONSE_KEY and self._value:
            tail = self._value.finish()
            self._response.append(tail)
            return tail
        return ""

    @property
    def response(self) -> str:
        """``assistant_response`` as decoded so far (all of it once complete)."""
        return "".join(self._response)

    @property
    def response_complete(self) -> bool:
        """The ``assistant_response`` string was closed (not cut off)."""
        return self._response_closed

    @property
    def image_prompt(self) -> str | None:
        """The image prompt, only when its string was received whole; ``None`` for
        ``null``, a missing key, a non-string value or a cut-off string."""
        return self._image_prompt

    @property
    def complete(self) -> bool:
        """The answer object was closed."""
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        """The input stopped looking like the answer object."""
        return self._state is _State.FAILED

    # ---------------------------------------------------------------- states
    def _skip_space(self, chunk: str, index: int) -> int:
        while index < len(chunk) and chunk[index].isspace():
            index += 1
        return index

    def _on_start(self, chunk: str, index: int, out: list[str]) -> int:
        brace = chunk.find("{", index)
        if brace < 0:
            return len(chunk)
        self._state = _State.KEY_OR_END
        return brace + 1

    def _on_key_or_end(self, chunk: str, index: int, out: list[str]) -> int:
        index = self._skip_space(chunk, index)
        if index < len(chunk):
            char = chunk[index]
            if char == '"':
                self._key, self._key_parts = JsonStringDecoder(), []
                self._state = _State.KEY
            else:
                self._state = _State.DONE if char == "}" else _State.FAILED
            index += 1
        return index

    def _on_key(self, chunk: str, index: int, out: list[str]) -> int:
        text, index = self._key.feed(chunk, index)
        self._key_parts.append(text)
        if self._key.closed:
            self._value_key = "".join(self._key_parts)
            self._state = _State.COLON
        return index

    def _on_colon(self, chunk: str, index: int, out: list[str]) -> int:
        index = self._skip_space(chunk, index)
        if index < len(chunk):
            self._state = _State.VALUE if chunk[index] == ":" else _State.FAILED
            index += 1
        return index

    def _on_value(self, chunk: str, index: int, out: list[str]) -> int:
        index = self._skip_space(chunk, index)
        if index >= len(chunk):
            return index
        if self._value_key == RESPONSE_KEY and self._response_seen:
            self._value_key = ""  # a duplicate: what was streamed stays the answer
        if self._value_key == RESPONSE_KEY:
            self._response_seen = True
        if chunk[index] == '"':
            self._value = JsonStringDecoder()
            if self._value_key == IMAGE_PROMPT_KEY:
                self._image_parts, self._image_prompt = [], None
            self._state = _State.STRING
            return index + 1
        if self._value_key == IMAGE_PROMPT_KEY:
            self._image_parts, self._image_prompt = None, None
        self._skipper = _ValueSkipper()
        self._state = _State.SKIP
        return index

    def _on_string(self, chunk: str, index: int, out: list[str]) -> int:
        assert self._value is not None
        text, index = self._value.feed(chunk, index)
        if self._value_key == RESPONSE_KEY:
            self._response.append(text)
            out.append(text)
            self._response_closed = self._value.closed
        elif self._value_key == IMAGE_PROMPT_KEY and self._image_parts is not None:
            self._image_parts.append(text)
            if self._value.closed:
                self._image_prompt = "".join(self._image_parts)
        if self._value.closed:
            self._state = _State.AFTER_VALUE
        return index

    def _on_skip(self, chunk: str, index: int, out: list[str]) -> int:
        index = self._skipper.feed(chunk, index)
        if self._skipper.done:
            self._state = _State.AFTER_VALUE
        return index

    def _on_after_value(self, chunk: str, index: int, out: list[str]) -> int:
        index = self._skip_space(chunk, index)
        if index < len(chunk):
            char = chunk[index]
            if char == ",":
                self._state = _State.KEY_OR_END
            else:
                self._state = _State.DONE if char == "}" else _State.FAILED
            index += 1
        return index


def parse_answer(text: str) -> AnswerStreamParser:
    """Parse a whole (possibly cut-off) answer in one go."""
    parser = AnswerStreamParser()
    parser.feed(text)
    parser.finish()
    return parser
