"""Cut quoted history and signatures from a reply, so a ticket stores the new text only."""

from __future__ import annotations

import re

from ticketing.replylines import (
    EMPTY,
    FORWARD,
    QUOTED,
    SPLITTER,
    TEXT,
    classify,
    is_loose_attribution,
    is_signature_delimiter,
    is_tail_noise,
)

REPLY_MARKER = "##- Please type your reply above this line -##"

# Our marker as it comes back: quoted ("> ##- ..."), or wrapped by the client with the
# quote prefix repeated on the next line.
_MARKER = re.compile(r"[\s>]+".join(re.escape(word) for word in REPLY_MARKER.split()), re.I)


def cut_reply(text: str) -> str:
    """The new text of a reply: without our marker and what follows it, quotes and signature.

    Never empty when the input has any text outside quotes; when all of it is quote,
    the input comes back stripped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    marker = _MARKER.search(text)
    if marker:
        above = text[: text.rfind("\n", 0, marker.start()) + 1]
        # The text above our marker is all quote when someone answered below the history.
        new = _cut(above) or _cut(text[: marker.start()] + text[marker.end() :])
    else:
        new = _cut(text)
    return new or text.strip()


def _cut(text: str) -> str:
    lines = text.split("\n")
    kinds = classify(lines)
    if FORWARD in kinds and all(k in (TEXT, EMPTY) for k in kinds[: kinds.index(FORWARD)]):
        return text.strip()  # a forward: what was forwarded is the news
    end = _unquoted_history(kinds)
    lines, kinds = lines[:end], kinds[:end]
    with_signature = _join(*_cut_single_quote(*_trim_tail(lines, kinds)))
    signature = _signature_start(lines, kinds)
    lines, kinds = lines[:signature], kinds[:signature]
    return _join(*_cut_single_quote(*_trim_tail(lines, kinds))) or with_signature


def _unquoted_history(kinds: list[str]) -> int:
    """Where history without '>' begins: a splitter followed by text (Outlook, HTML turned text)."""
    i = 0
    while i < len(kinds):
        if kinds[i] != SPLITTER:
            i += 1
            continue
        start = i
        while i < len(kinds) and kinds[i] in (SPLITTER, EMPTY):
            i += 1
        if i == len(kinds) or kinds[i] in (TEXT, FORWARD):
            return start
    return len(kinds)


def _signature_start(lines: list[str], kinds: list[str]) -> int:
    """The '-- ' line that opens a signature after some text of the reply, or the end."""
    seen_text = False
    for i, (line, kind) in enumerate(zip(lines, kinds, strict=True)):
        if kind == TEXT and is_signature_delimiter(line) and seen_text:
            return i
        seen_text = seen_text or kind == TEXT
    return len(lines)


def _trim_tail(lines: list[str], kinds: list[str]) -> tuple[list[str], list[str]]:
    """Drop what closes a reply: the quoted history, its attribution, 'Sent from my ...', rules."""
    end = len(lines)
    while end and (kinds[end - 1] in (EMPTY, QUOTED, SPLITTER) or is_tail_noise(lines[end - 1])):
        end -= 1
    # An attribution in a form no rule knows ("Bob wrote:", a client's own language)
    # still ends with a colon and names its writer or date.
    quote_cut = QUOTED in kinds[end:]
    if end and quote_cut and TEXT in kinds[: end - 1] and is_loose_attribution(lines[end - 1]):
        end -= 1
        while end and kinds[end - 1] == EMPTY:
            end -= 1
    return lines[:end], kinds[:end]


def _cut_single_quote(lines: list[str], kinds: list[str]) -> tuple[list[str], list[str]]:
    """Drop the one attributed quote a bottom-posted reply answers.

    Two or more quote blocks with text between are an inline reply: the quotes are the
    context of each answer and stay.
    """
    blocks = _quote_blocks(kinds)
    if len(blocks) != 1:
        return lines, kinds
    start, end = blocks[0]
    if SPLITTER not in kinds[start:end]:
        return lines, kinds  # a '>' passage the writer quoted on purpose
    if start and end < len(lines):  # keep the paragraphs around it apart
        return [*lines[:start], "", *lines[end:]], [*kinds[:start], EMPTY, *kinds[end:]]
    return lines[:start] + lines[end:], kinds[:start] + kinds[end:]


def _quote_blocks(kinds: list[str]) -> list[tuple[int, int]]:
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < len(kinds):
        if kinds[i] in (QUOTED, SPLITTER):
            start = i
            while i < len(kinds) and kinds[i] in (QUOTED, SPLITTER, EMPTY):
                i += 1
            blocks.append((start, i))
        else:
            i += 1
    return blocks


def _join(lines: list[str], kinds: list[str]) -> str:
    return "\n".join(line.rstrip() for line in lines).strip("\n").rstrip()
