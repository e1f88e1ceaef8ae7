"""Splitting a long reply into messages no longer than a platform allows.

A reply is streamed into messages that are edited in place. When the text outgrows one
message, the messages before it must never change again: every edit costs a
rate-limited API call and makes the chat jump. So where a chunk ends may depend only on
the text that existed when the chunk filled up (*prefix stability*): the cut for a
chunk that starts at ``s`` is chosen from ``text[s : end + 1]``, where ``end`` is the
last index that still fits and the one character after it tells whether the text
goes on. Only the last chunk (the one still growing) may change as text arrives.

Within that window a chunk ends at the strongest natural boundary: a paragraph break,
else a line break, else a sentence end, else any whitespace, else a hard cut that keeps
surrogate pairs, combining marks and emoji joiners together. Boundaries in the first
quarter of the window are only used when nothing later is found, so one early blank
line does not produce a tiny message. Whitespace at the edges of a chunk is dropped
(platforms refuse empty or blank messages); no other character is lost.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

#: the length of a text as a platform counts it (additive: the length of a text is the
#: sum of the lengths of its characters)
Measure = Callable[[str], int]

_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
#: a sentence end followed by whitespace; closing quotes and brackets stay with it
_SENTENCE = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)")
#: CJK sentence ends need no space after them
_CJK_SENTENCE = re.compile(r"[。！？]+[」』”’）]*")
_ZWJ = "\u200d"
#: boundaries before this share of the window are a last resort
_MIN_FILL = 0.25


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units: characters outside the BMP (most emoji) count
    twice. Platforms whose limits are UTF-16 based (Telegram counts this way) need it;
    it is never less than ``len``, so it is the safe choice when unsure."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_message(text: str, limit: int, *, measure: Measure = len) -> list[str]:
    """``text`` as chunks each at most ``limit`` long (by ``measure``), none empty or
    blank, cut at the strongest natural boundary; see the module docstring for the
    rules and the prefix-stability guarantee."""
    if limit < 2:
        raise ValueError(f"limit must be at least 2 (got {limit})")
    chunks: list[str] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _window_end(text, start, limit, measure)
        if end >= len(text):
            chunks.append(text[start:].rstrip())
            break
        cut = _cut(text, start, end)
        chunks.append(text[start:cut].rstrip())
        start = _skip_space(text, cut)
    return chunks


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _window_end(text: str, start: int, limit: int, measure: Measure) -> int:
    """The largest ``end`` with ``text[start:end]`` fitting ``limit`` (at least one
    character, so a single over-long character still makes progress)."""
    if measure is len:
        return min(len(text), start + limit)
    used = 0
    end = start
    while end < len(text):
        used += measure(text[end])
        if used > limit:
            break
        end += 1
    return max(end, start + 1)


def _cut(text: str, start: int, end: int) -> int:
    """Where the chunk starting at ``start`` ends, given that ``text[end]`` exists and
    does not fit. Reads only ``text[start : end + 1]``."""
    window = text[start : end + 1]
    fits = end - start  # characters of the window that fit
    candidates = (
        _paragraph_cuts(window),
        _line_cuts(window, fits),
        _sentence_cuts(window, fits),
        _space_cuts(window, fits),
    )
    floor = max(1, int(fits * _MIN_FILL))
    for cut in candidates:
        if cut is not None and cut >= floor:
            return start + cut
    for cut in candidates:
        if cut is not None and cut >= 1:
            return start + cut
    return _hard_cut(text, start, end)


def _paragraph_cuts(window: str) -> int | None:
    """Cut before the last blank line (the match ends inside the window, so the cut
    is at most ``fits - 1``)."""
    last = None
    for match in _PARAGRAPH.finditer(window):
        last = match.start()
    return last


def _line_cuts(window: str, fits: int) -> int | None:
    index = window.rfind("\n", 0, fits + 1)
    return index if index > 0 else None


def _sentence_cuts(window: str, fits: int) -> int | None:
    """Cut after the last sentence end: ``. `` needs the space to be known (it may be
    the lookahead character), ``。`` must itself fit."""
    best = None
    for match in _SENTENCE.finditer(window):
        if match.end() <= fits:
            best = match.end()
    for match in _CJK_SENTENCE.finditer(window, 0, fits):
        if best is None or match.end() > best:
            best = match.end()
    return best


def _space_cuts(window: str, fits: int) -> int | None:
    for index in range(min(fits, len(window) - 1), 0, -1):
        if window[index].isspace():
            return index
    return None


def _hard_cut(text: str, start: int, end: int) -> int:
    """Cut at ``end``, moved back so a surrogate pair, a base character and its
    combining marks, or an emoji sequence joined by ZWJ / variation selectors is not
    torn apart (unless that would leave the chunk empty)."""
    cut = end
    while cut - 1 > start and _joined(text[cut - 1], text[cut]):
        cut -= 1
    return cut


def _joined(before: str, after: str) -> bool:
    if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
        return True
    if before == _ZWJ or after == _ZWJ:
        return True
    if unicodedata.combining(after) or unicodedata.category(after) in ("Mn", "Me"):
        return True
    return "\ufe00" <= after <= "\ufe0f" or "\U0001f3fb" <= after <= "\U0001f3ff"
