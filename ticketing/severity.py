"""Severity levels and the subject tags that set them (S3 when none does)."""

from __future__ import annotations

import re
from enum import IntEnum

from ticketing.conversation import REPLY_PREFIX


class Severity(IntEnum):
    S0 = 0
    S1 = 1
    S2 = 2
    S3 = 3

    @property
    def label(self) -> str:
        return f"S{self.value}"

    @property
    def word(self) -> str:
        return ("critical", "high", "medium", "low")[self.value]

    @property
    def meaning(self) -> str:
        return MEANINGS[self]

    @classmethod
    def parse(cls, text: str) -> Severity:
        """'S0'..'S3' (or 0..3), as an agent writes it in #severity."""
        match = re.fullmatch(r"\s*(?:s|sev|p)?\s*-?\s*([0-3])\s*", text, re.IGNORECASE)
        if match:
            return cls(int(match.group(1)))
        for level in cls:
            if text.strip().lower() == level.word:
                return level
        raise ValueError(f"unknown severity {text!r}: use S0, S1, S2 or S3")


MEANINGS = {
    Severity.S3: "General product questions and feature requests.",
    Severity.S2: "Specific product functionality is degraded and affects a small number of users.",
    Severity.S1: (
        "Service or performance is severely degraded for one or more product components "
        "and affects business processes."
    ),
    Severity.S0: (
        "Service is inaccessible for one or more major product components "
        "and affects crucial business processes."
    ),
}

DEFAULT = Severity.S3

_LEVEL = r"([0-3])"
# Explicit tags only: a word in running text ("Is error P0 documented?", "the P1 plan")
# never sets severity.
_TAGS = re.compile(
    r"""
      \[\s*S{l}\s*\]                             # [S0]
    | \(\s*S{l}\s*\)                             # (S1)
    | \[\s*SEV(?:ERITY)?[\s-]?{l}\s*\]            # [Sev1], [SEV-1]
    | \[\s*P{l}\s*\]                             # [P0]
    | \[\s*(critical|high|medium|low)\s*\]       # [critical]
    """.replace("{l}", _LEVEL),
    re.IGNORECASE | re.VERBOSE,
)
# "S1: ..." counts as the subject's first word only, once reply prefixes and our
# ticket tag are set aside ("how does S3: bucket sync work" is a question).
_LEADING = re.compile(r"(?:\s*(?:\[#\d{1,12}\]|\[[^\]]*\]))*\s*")
_FIRST_WORD = re.compile(r"S([0-3]):(?!/)", re.IGNORECASE)
_PREFIX_AT = re.compile(REPLY_PREFIX.pattern.removeprefix("^"), REPLY_PREFIX.flags)
_WORDS = {"critical": Severity.S0, "high": Severity.S1, "medium": Severity.S2, "low": Severity.S3}


def _first_word(subject: str) -> tuple[int, int, Severity] | None:
    start = -1
    position = 0
    while position != start:
        start = position
        position = _LEADING.match(subject, position).end()  # type: ignore[union-attr]
        prefix = _PREFIX_AT.match(subject, position)
        position = prefix.end() if prefix else position
    match = _FIRST_WORD.match(subject, position)
    if match is None:
        return None
    return match.start(), match.end(), Severity(int(match.group(1)))


def _found(subject: str) -> list[tuple[int, int, Severity]]:
    """Each severity tag in the subject: (start, end, level), in order."""
    found = []
    for match in _TAGS.finditer(subject):
        digit = next((g for g in match.groups()[:-1] if g is not None), None)
        word = match.groups()[-1]
        level = Severity(int(digit)) if digit is not None else _WORDS[word.lower()]
        found.append((match.start(), match.end(), level))
    first = _first_word(subject)
    if first is not None:
        found.append(first)
    return sorted(found)


def severity_in(subject: str) -> Severity | None:
    """The most severe tag in the subject, or None when it has none."""
    levels = [level for _, _, level in _found(subject)]
    return min(levels) if levels else None


def strip_tags(subject: str) -> str:
    """The subject without its severity tags (every other word kept), spaces tidied."""
    found = _found(subject)
    if not found:
        return subject
    for start, end, _ in reversed(found):
        subject = subject[:start] + " " + subject[end:]
    return re.sub(r"\s{2,}", " ", subject).strip(" -:")
