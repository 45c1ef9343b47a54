"""Severity levels and the subject tags that set them (SPEC section 1)."""

from __future__ import annotations

import re
from enum import IntEnum


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
_TAGS = re.compile(
    r"""
      \[\s*S{l}\s*\]                       # [S0]
    | \(\s*S{l}\s*\)                       # (S1)
    | (?<![\w-])S{l}:(?!/)                  # S1: (not s3://)
    | (?<![\w-])SEV(?:ERITY)?[\s-]?{l}(?!\w)   # Sev1, SEV-1, Severity 1
    | (?<![\w-])P{l}(?![\w-])              # P0..P3
    | \[\s*(critical|high|medium|low)\s*\] # [critical]
    """.replace("{l}", _LEVEL),
    re.IGNORECASE | re.VERBOSE,
)
_WORDS = {"critical": Severity.S0, "high": Severity.S1, "medium": Severity.S2, "low": Severity.S3}


def _found(subject: str) -> list[tuple[re.Match[str], Severity]]:
    found = []
    for match in _TAGS.finditer(subject):
        digit = next((g for g in match.groups()[:-1] if g is not None), None)
        word = match.groups()[-1]
        level = Severity(int(digit)) if digit is not None else _WORDS[word.lower()]
        found.append((match, level))
    return found


def severity_in(subject: str) -> Severity | None:
    """The most severe tag in the subject, or None when it has none."""
    levels = [level for _, level in _found(subject)]
    return min(levels) if levels else None


def strip_tags(subject: str) -> str:
    """The subject without its severity tags, spaces tidied."""
    for match, _ in reversed(_found(subject)):
        subject = subject[: match.start()] + " " + subject[match.end() :]
    return re.sub(r"\s{2,}", " ", subject).strip(" -:")
