"""How our own mail is marked, so it is known when it comes back."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

# Set on every mail we send, with our support address as its value: a mail that
# arrives carrying it with one of our addresses is our own (another desk's is not).
LOOP_HEADER = "X-Mailgate-Loop"
_PREFIX = "mailgate."
# mailgate.<24 hex: random>.<16 hex: HMAC of the rest with the server secret>@domain
_SHAPE = re.compile(r"mailgate\.([0-9a-f]{24})\.([0-9a-f]{16})@([^\s@>]+)", re.IGNORECASE)


def _signature(nonce: str, domain: str, secret: str) -> str:
    text = f"message-id:{nonce.lower()}@{domain.lower()}".encode()
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()[:16]


def new_message_id(domain: str, secret: str) -> str:
    """A Message-ID in our domain, signed with the server secret, without angle brackets."""
    nonce = secrets.token_hex(12)
    return f"{_PREFIX}{nonce}.{_signature(nonce, domain, secret)}@{domain}"


def is_our_message_id(message_id: str, domain: str, secret: str) -> bool:
    """Made by us: our shape, our domain and a valid signature (a lookalike is not ours)."""
    found = _SHAPE.fullmatch(message_id.strip().strip("<>"))
    if found is None or found.group(3).lower() != domain.lower():
        return False
    expected = _signature(found.group(1), domain, secret)
    return hmac.compare_digest(found.group(2).lower(), expected)


def our_message_ids_in(data: bytes, domain: str, secret: str) -> list[str]:
    """Our Message-IDs quoted anywhere in a mail (a bounce or auto-reply returning ours)."""
    pattern = (re.escape(_PREFIX.encode()) + rb"[0-9a-f]{24}\.[0-9a-f]{16}@"
               + re.escape(domain.encode()))
    found = dict.fromkeys(m.decode() for m in re.findall(pattern, data, re.IGNORECASE))
    return [m for m in found if is_our_message_id(m, domain, secret)]
