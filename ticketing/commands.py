"""Agent commands on their own lines at the top of a mail: #note, #status, #severity, #assign,
#incident, #follow and #unfollow with an address."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ticketing.addresses import normalize
from ticketing.severity import Severity

STATUSES = ("open", "pending", "solved", "closed")
_COMMAND = re.compile(r"^#(note|status|severity|assign|incident|follow|unfollow)\b[ \t]*(.*?)\s*$",
                      re.IGNORECASE)
_UNFOLLOW = re.compile(r"^[ \t]*#unfollow[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Commands:
    """What the top lines of an agent's mail ask for; errors name each bad line."""

    note: bool = False
    status: str | None = None
    severity: Severity | None = None
    assign: str | None = None  # "me" or an address
    incident: int | None = None  # attach the ticket to this incident
    follow: tuple[str, ...] = ()  # addresses to put on the ticket as followers
    unfollow: tuple[str, ...] = ()  # addresses to take off it
    errors: tuple[str, ...] = ()
    lines: tuple[str, ...] = field(default=(), repr=False)


def split_commands(text: str) -> tuple[Commands, str]:
    """The commands at the top of the text, and the text without them."""
    lines = text.splitlines()
    index = 0
    note = False
    status = severity = assign = None
    incident: int | None = None
    follow: list[str] = []
    unfollow: list[str] = []
    errors: list[str] = []
    found: list[str] = []
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        match = _COMMAND.match(line)
        if not match:
            break
        found.append(line)
        name, argument = match.group(1).lower(), match.group(2).strip()
        index += 1
        if name == "note":
            note = True
        elif name in ("follow", "unfollow"):
            if name == "unfollow" and not argument:
                continue  # leaving oneself: handled for everyone by wants_unfollow()
            address = normalize(argument)
            if address:
                (follow if name == "follow" else unfollow).append(address)
            else:
                errors.append(f"{line}: give one address, as in #{name} dave@example.com")
        elif name == "status":
            if argument.lower() in STATUSES:
                status = argument.lower()
            else:
                errors.append(f"{line}: the status must be one of {', '.join(STATUSES)}")
        elif name == "severity":
            try:
                severity = Severity.parse(argument)
            except ValueError as exc:
                errors.append(f"{line}: {exc}")
        elif name == "assign":
            if argument.lower() == "me" or re.fullmatch(r"[^@\s]+@[^@\s]+", argument):
                assign = argument.lower()
            else:
                errors.append(f"{line}: give 'me' or an agent's address")
        elif name == "incident":
            number = argument.removeprefix("#")
            # A number past what an id column holds names no incident, never a query.
            if number.isdigit() and len(number) <= 10 and 0 < int(number) < 2**31:
                incident = int(number)
            else:
                errors.append(f"{line}: give the incident's number, as in #incident 1")
    rest = "\n".join(lines[index:]).strip("\n")
    commands = Commands(note, status, severity, assign, incident, tuple(follow), tuple(unfollow),
                        tuple(errors), tuple(found))
    return commands, rest


def wants_unfollow(text: str) -> bool:
    """#unfollow alone on a line, from anyone."""
    return bool(_UNFOLLOW.search(text))


def without_unfollow(text: str) -> str:
    return _UNFOLLOW.sub("", text).strip()
