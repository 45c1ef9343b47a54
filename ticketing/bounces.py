"""Bounces and abuse reports: which mail of ours came back, and who gets no more mail."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime

from sqlmodel import Session, col, select

from ticketing.authresults import aligned
from ticketing.dsn import read_complaint
from ticketing.identity import our_message_ids_in
from ticketing.inbound import Inbound
from ticketing.models import Outbox
from ticketing.parse import ParsedMail
from ticketing.ratelimit import mark_bouncing
from ticketing.returnpath import one_reader, returned_to
from ticketing.screening import Verdict
from ticketing.settings import Settings

log = logging.getLogger(__name__)


def came_back_to(
    session: Session, settings: Settings, inbound: Inbound, mail: ParsedMail
) -> Outbox | None:
    """The mail of ours whose own return path this one was sent to, if any."""
    return returned_to(session, _return_addresses(inbound, mail), settings)


def _return_addresses(inbound: Inbound, mail: ParsedMail) -> list[str]:
    """Where a report says it was sent: the envelope, then Delivered-To, then To."""
    return [*inbound.envelope_recipients, *mail.delivered_to, *(a.address for a in mail.to)]


def stop_bounced(
    session: Session, now: datetime, row: Outbox | None, verdict: Verdict, label: str
) -> None:
    """A permanent failure stops mail to the one reader of the mail it came back for.

    Only a bounce to that mail's own return path counts: the Message-ID and the
    Final-Recipient of a report are anyone's to write, so a report sent to the support
    address naming someone else (a reader on the same thread) must mark nobody.
    """
    if row is None:
        log.info("<%s> bounce not sent to a return path of ours; marking nobody", label)
        return
    reader = one_reader(row)
    if reader is None:
        log.warning("<%s> bounce of <%s>, a mail to %s: cannot tell whose; marking nobody",
                    label, row.message_id, ", ".join(json.loads(row.recipients)))
        return
    log.warning("<%s> bounce of <%s>: no more mail to %s", label, row.message_id, reader)
    mark_bouncing(session, reader, verdict.reason, now)


def stop_complainant(
    session: Session, settings: Settings, now: datetime, inbound: Inbound, mail: ParsedMail,
    believed: bool,
) -> None:
    """Someone marked a mail of ours as spam: no more mail to them until an operator
    clears it. Only for a report from a feedback loop we signed up for (its From
    believed as agents.trust says), about a mail we really sent to that one reader,
    named by its return path (the report's address, or the enclosed Return-Path):
    a report naming one of several readers could come from another of them."""
    complaint = read_complaint(inbound.raw)
    if complaint is None:
        return
    domain = mail.sender.address.rpartition("@")[2] if mail.sender else ""
    listed = any(aligned(loop.lower(), domain) for loop in settings.support.feedback_loops)
    if not listed or not believed:
        log.info("abuse report on <%s> from %s: not a feedback loop of ours (support."
                 "feedback_loops), or not authenticated; stopping nobody",
                 complaint.message_id, mail.sender.address if mail.sender else "nobody")
        return
    row = returned_to(session, [*_return_addresses(inbound, mail), complaint.return_path],
                      settings)
    if row is None or (complaint.message_id and complaint.message_id.lower() != row.message_id):
        log.info("abuse report on <%s>: not to the return path of a mail of ours; "
                 "stopping nobody", complaint.message_id)
        return
    readers = json.loads(row.recipients)
    reader = one_reader(row)
    if reader is None or (complaint.named and reader not in complaint.named):
        log.warning("abuse report on <%s> (to %s): cannot tell who complained; "
                    "stopping nobody", row.message_id, ", ".join(readers))
        return
    log.warning("abuse report: %s marked <%s> as spam; no more mail to them",
                reader, row.message_id)
    mark_bouncing(session, reader, "complaint: marked our mail as spam (abuse report)",
                  now)


def returned_mail(session: Session, settings: Settings, raw: bytes) -> Outbox | None:
    """The mail of ours that a bounce or auto-reply returns, found by its Message-ID."""
    support = settings.support
    found = [m.lower() for m in our_message_ids_in(raw, support.domain, support.secret)]
    if not found:
        return None
    # The returned mail's own Message-ID header first: ours named in its References
    # or quoted in its text are earlier mails, to other readers perhaps.
    headed = [m.decode("ascii", "replace").lower() for m in _MESSAGE_ID_FIELD.findall(raw)]
    headed = [m for m in headed if m in found]
    wanted = list(dict.fromkeys((*headed, *found)))[:20]
    rows = {r.message_id: r for r in session.exec(
        select(Outbox).where(col(Outbox.message_id).in_(wanted))).all()}
    return next((rows[m] for m in wanted if m in rows), None)


# A Message-ID field, folded or not.
_MESSAGE_ID_FIELD = re.compile(rb"(?im)^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^>\s]+)")
