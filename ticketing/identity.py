"""How our own mail is marked, so it is known when it comes back."""

from __future__ import annotations

import re
import uuid

# Set on every mail we send; a mail that arrives carrying it for our address is our own.
LOOP_HEADER = "X-Mailgate-Loop"
_PREFIX = "mailgate."


def new_message_id(domain: str) -> str:
    """A Message-ID in our domain, without the angle brackets."""
    return f"{_PREFIX}{uuid.uuid4().hex}@{domain}"


def our_message_ids_in(data: bytes, domain: str) -> list[str]:
    """Our Message-IDs quoted anywhere in a mail (a bounce or auto-reply returning ours)."""
    pattern = re.escape(_PREFIX.encode()) + rb"[0-9a-f]{32}@" + re.escape(domain.encode())
    return list(dict.fromkeys(m.decode() for m in re.findall(pattern, data, re.IGNORECASE)))


def is_our_message_id(message_id: str, domain: str) -> bool:
    local, _, right = message_id.strip("<>").rpartition("@")
    return local.startswith(_PREFIX) and right.lower() == domain.lower()
