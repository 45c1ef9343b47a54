"""`mailgate deliver`: one mail on stdin from an MTA pipe, answered with a sysexits code."""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

from mailgate.exitcodes import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL
from ticketing.conversation import is_ours, is_postmaster
from ticketing.db import StorageError
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest

log = logging.getLogger(__name__)



def deliver(desk: Desk, stream: BinaryIO, recipient: str = "", sender: str = "") -> int:
    """Ingest one mail; 0 once it is committed, 75 on a storage fault, 65/67 for bad input."""
    if recipient and not is_ours(recipient, desk.settings) and not is_postmaster(
        recipient, desk.settings
    ):
        print(f"mailgate deliver: {recipient}: not a support address here", file=sys.stderr)
        return EX_NOUSER
    try:
        raw = stream.read(desk.settings.smtp.max_message_size + 1)
    except OSError as exc:
        print(f"mailgate deliver: could not read the message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if not raw.strip():
        print("mailgate deliver: empty message on stdin", file=sys.stderr)
        return EX_DATAERR
    if len(raw) > desk.settings.smtp.max_message_size:
        print("mailgate deliver: message larger than smtp.max_message_size", file=sys.stderr)
        return EX_DATAERR
    inbound = Inbound(raw, "pipe", sender, (recipient,) if recipient else ())
    try:
        outcome = ingest(desk, inbound)
    except StorageError as exc:
        print(f"mailgate deliver: storage fault, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except Exception as exc:
        log.exception("deliver failed")
        print(f"mailgate deliver: temporary failure: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    ticket = f" #{outcome.ticket}" if outcome.ticket else ""
    print(f"mailgate deliver: {outcome.status}{ticket}", file=sys.stderr)
    return EX_OK
