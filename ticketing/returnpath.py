"""Each mail's own return path (VERP): the one address a bounce of it may come back to."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable

from sqlmodel import Session

from ticketing.models import Outbox
from ticketing.settings import Settings

_DETAIL = re.compile(r"^bounce-(\d{1,18})-([0-9a-f]{16})$")


def _signature(outbox_id: int, secret: str) -> str:
    return hmac.new(secret.encode(), f"bounce:{outbox_id}".encode(), hashlib.sha256).hexdigest()[:16]


def bounce_address(outbox_id: int, settings: Settings) -> str:
    """`support+bounce-<id>-<hmac>@domain`: the envelope sender of one outgoing mail."""
    support = settings.support
    return (f"{support.local_part}+bounce-{outbox_id}-{_signature(outbox_id, support.secret)}"
            f"@{support.domain}")


def outbox_id_of(address: str, settings: Settings) -> int | None:
    """The outbox row a return path names, or None (another address, forged, guessed)."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    base, plus, detail = local.partition("+")
    support = settings.support
    if not plus or domain != support.domain.lower() or base != support.local_part.lower():
        return None
    match = _DETAIL.match(detail)
    if match is None:
        return None
    number = int(match.group(1))
    expected = _signature(number, support.secret)
    return number if hmac.compare_digest(expected, match.group(2)) else None


def returned_to(session: Session, addresses: Iterable[str], settings: Settings) -> Outbox | None:
    """The mail of ours whose return path is among these addresses (the envelope
    recipient, Delivered-To, To): only there does a bounce or report name its reader."""
    for address in addresses:
        number = outbox_id_of(address, settings)
        if number is not None:
            row = session.get(Outbox, number)
            if row is not None:
                return row
    return None


def one_reader(row: Outbox) -> str | None:
    """The mail's reader when it had exactly one: a report on a mail to several could
    come from any of them, about any other."""
    readers = json.loads(row.recipients)
    return str(readers[0]) if len(readers) == 1 else None
