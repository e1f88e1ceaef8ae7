"""Incremental detokenization for streaming.

Decoding only the newest token is wrong for byte-level BPE (one character can span
several tokens, and some tokenizers change earlier text when a token follows), so each
step decodes a short window and emits only the stable new suffix. A trailing U+FFFD
means an incomplete UTF-8 sequence: hold it back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def token_count(self) -> int:
        return len(self._ids)

    def add(self, new_ids: Sequence[int]) -> str:
        if not new_ids:
            return ""
        self._ids.extend(int(i) for i in new_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix) :].rstrip("\ufffd") if len(full) > len(prefix) else ""
