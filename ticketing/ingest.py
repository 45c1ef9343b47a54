"""The one ingest path for SMTP, IMAP and the MTA pipe: parse, screen, then one transaction."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ticketing import oncall
from ticketing.authresults import sender_authenticated
from ticketing.db import StorageError, transaction
from ticketing.destination import (
    Classified,
    FromOutside,
    Held,
    NewTicket,
    NoSender,
    Reply,
    ToPostmaster,
    Unsubscribe,
    destination,
)
from ticketing.dkimcheck import verified_signers
from ticketing.inbound import Inbound, Outcome, Status
from ticketing.models import IngestFailure, Message, Quarantine
from ticketing.parse import ParsedMail, parse_mail
from ticketing.participants import agent_addresses
from ticketing.screening import Verdict, screen
from ticketing.tickets import (
    StoredFile,
    file_classified,
    file_from_outside,
    file_postmaster,
    file_reply,
    file_unsubscribe,
    file_without_sender,
    hold,
    keep_files,
    open_new,
    stored_files,
)

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

# Tries, on any route, of a mail whose own content makes the database refuse it.
MAX_TRIES = 3

_MESSAGE = Message.__table__  # type: ignore[attr-defined]
# The stored copy of a mail, by its duplicate key: its ticket and number, not the whole row.
# A plain query, without a flush first: a mail starts with nothing unwritten (the mail
# before it in a batch was flushed when its savepoint was released).
_STORED_AS = (sa_select(_MESSAGE.c.id, _MESSAGE.c.ticket_id)
              .where(_MESSAGE.c.dedupe_key == bindparam("key")).limit(1))


def duplicate_key(mail: ParsedMail, raw: bytes) -> str:
    """The same message twice is stored once: the same Message-ID from the same From
    address with the same body (text, HTML and attachments), or the same bytes when it
    has no Message-ID. A Message-ID alone is no proof: whoever sends first with a
    customer's Message-ID must not make the customer's real mail a duplicate."""
    if mail.message_id:
        digest = hashlib.sha256()
        sender = mail.sender.address if mail.sender else ""
        for part in (sender, mail.text, mail.html, *(item.sha256 for item in mail.attachments)):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
        return f"mid:{mail.message_id[:900]} {digest.hexdigest()[:32]}"
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Prepared:
    """A mail parsed and screened, ready to be stored in a transaction."""

    inbound: Inbound
    mail: ParsedMail
    key: str
    raw_sha256: str
    files: list[StoredFile]
    verdict: Verdict
    believed: bool

    @property
    def label(self) -> str:
        return self.mail.message_id or self.raw_sha256[:16]


def prepare(desk: Desk, inbound: Inbound) -> Prepared | Outcome:
    """What can be done before the transaction: parse, screen, check who sent it. A mail
    the parser cannot take is quarantined here (its Outcome)."""
    try:
        mail = parse_mail(inbound.raw)
        key = duplicate_key(mail, inbound.raw)
        verdict = screen(mail, inbound, desk.settings)
    except Exception as exc:
        return quarantine(desk, inbound, exc)
    raw_sha256 = hashlib.sha256(inbound.raw).hexdigest()
    return Prepared(inbound, mail, key, raw_sha256, stored_files(mail), verdict,
                    _believed(desk, inbound, mail, verdict))


def record(session: Session, desk: Desk, prepared: Prepared) -> Outcome:
    """Everything a prepared mail does to the database, in the caller's transaction."""
    p = prepared
    queued = oncall.queued(session)
    outcome = _file_mail(session, desk, p.inbound, p.mail, p.key, p.raw_sha256, p.files,
                         p.verdict, p.believed)
    return replace(outcome, pages=oncall.queued(session) - queued)


def stored(prepared: Prepared, outcome: Outcome) -> None:
    """Once the mail's transaction has committed: say so. (serve's workers hear of the
    mail and pages it queued from the commit itself: ticketing.db.on_commit.)"""
    log.info("<%s> %s via %s: %s%s", prepared.label, outcome.status, prepared.inbound.route,
             f"#{outcome.ticket} " if outcome.ticket else "", outcome.detail)


def ingest(desk: Desk, inbound: Inbound) -> Outcome:
    """The one entry for every edge but SMTP (which stores mails in batches, through
    prepare and ticketing.groupcommit): store one mail, and tell the desk's observer how
    it went and how long it took."""
    started = time.monotonic()
    outcome = _ingest(desk, inbound)
    desk.ingested(inbound, outcome, started)
    return outcome


def _ingest(desk: Desk, inbound: Inbound) -> Outcome:
    """Store one mail and everything it causes, or raise StorageError (a temporary failure).

    Any other fault (a parser crash, a bug) keeps the mail whole in the quarantine, so it
    is acknowledged, never lost, and never blocks the mail behind it.
    """
    prepared = prepare(desk, inbound)
    if isinstance(prepared, Outcome):
        return prepared
    return store(desk, prepared)


def store(desk: Desk, prepared: Prepared) -> Outcome:
    """A prepared mail in a transaction of its own (see ingest)."""
    inbound, raw_sha256, label = prepared.inbound, prepared.raw_sha256, prepared.label
    for attempt in range(3):
        try:
            with transaction(desk.engine) as session:
                outcome = record(session, desk, prepared)
            break
        except IntegrityError as exc:
            # A concurrent copy of the same mail (or a ticket row raced) won: look again.
            if attempt == 2:
                reason = str(exc.orig).splitlines()[0] if exc.orig else ""
                fault = StorageError(f"{label}: kept conflicting with a concurrent write "
                                     f"({reason})", mail_fault=True)
                return _failed_try(desk, inbound, raw_sha256, label, fault)
        except StorageError as exc:
            if not exc.mail_fault:
                raise
            return _failed_try(desk, inbound, raw_sha256, label, exc)
        except Exception as exc:
            return quarantine(desk, inbound, exc)
    stored(prepared, outcome)
    return outcome


def _failed_try(
    desk: Desk, inbound: Inbound, raw_sha256: str, label: str, fault: StorageError
) -> Outcome:
    """A database fault that this mail's own content caused: a temporary failure for the
    first tries, counted by the mail's bytes whatever route brings it; then the
    quarantine, so the mail stands in front of no other (an IMAP folder, an MTA queue)."""
    now = desk.clock.now()
    try:
        with transaction(desk.engine) as session:
            row = session.get(IngestFailure, raw_sha256, with_for_update=True)
            if row is None:
                row = IngestFailure(raw_sha256=raw_sha256, first_at=now, last_at=now)
            row.tries += 1
            row.last_at = now
            row.last_error = str(fault)[:2000]
            session.add(row)
            tries = row.tries
    except (StorageError, IntegrityError):
        raise fault from None  # the database is away (or the count raced): the fault stands
    if tries < MAX_TRIES:
        log.warning("<%s> via %s: could not be stored (try %d of %d): %s", label,
                    inbound.route, tries, MAX_TRIES, fault)
        raise fault
    log.error("<%s> via %s: could not be stored in %d tries; quarantined so that it "
              "holds up no other mail: %s", label, inbound.route, tries, fault)
    return quarantine(desk, inbound, fault)


def _believed(desk: Desk, inbound: Inbound, mail: ParsedMail, verdict: Verdict) -> bool:
    """Whether the From address can be believed (agents.trust). A DKIM key is looked up
    here, outside any transaction, and only for mail whose From it matters for: an agent
    address, or an abuse report."""
    settings = desk.settings
    signers: tuple[str, ...] = ()
    sender = mail.sender.address if mail.sender else ""
    if settings.agents.trust == "dkim" and sender and not inbound.authenticated and (
        verdict.rule == "feedback-report" or _is_agent(desk, sender)
    ):
        signers = verified_signers(inbound.raw, desk.txt_lookup)
    return sender_authenticated(mail, inbound, settings, signers)


def _is_agent(desk: Desk, address: str) -> bool:
    if address in {a.lower() for a in desk.settings.agents.addresses}:
        return True
    with transaction(desk.engine) as session:
        return address in agent_addresses(session, desk.settings)


def _file_mail(
    session: Session, desk: Desk, inbound: Inbound, mail: ParsedMail, key: str,
    raw_sha256: str, files: list[StoredFile], verdict: Verdict, believed: bool,
) -> Outcome:
    existing = session.execute(_STORED_AS, {"key": key}).first()
    if existing is not None:
        return Outcome(Status.DUPLICATE, existing.ticket_id, existing.id, "already stored")
    keep_files(session, desk, inbound.raw, raw_sha256, mail)
    message = Message(
        dedupe_key=key,
        message_id=mail.message_id,
        kind="request",
        route=inbound.route,
        envelope_sender=inbound.envelope_sender[:320],
        envelope_recipients=json.dumps(list(inbound.envelope_recipients)),
        from_address=mail.sender.address if mail.sender else "",
        from_name=(mail.sender.name if mail.sender else "")[:200],
        recipients=json.dumps([a.address for a in (*mail.to, *mail.cc)]),
        subject=mail.subject,
        full_text=mail.text,
        text=mail.text,
        html=mail.html,
        raw_sha256=raw_sha256,
        raw_size=len(inbound.raw),
        created_at=desk.clock.now(),
    )
    match destination(session, desk.settings, inbound, mail, verdict, believed,
                      desk.clock.now()):
        case Unsubscribe() as unsubscribe:
            return file_unsubscribe(session, desk, message, files, unsubscribe)
        case ToPostmaster():
            return file_postmaster(session, desk, message, files)
        case Classified():
            return file_classified(session, desk, inbound, mail, message, files, verdict,
                                   believed)
        case NoSender():
            return file_without_sender(session, message, files)
        case Held() as held:
            return hold(session, desk, mail, message, files, held)
        case NewTicket() as new:
            return open_new(session, desk, mail, message, files, new)
        case FromOutside() as outside:
            return file_from_outside(session, desk, mail, message, files, outside)
        case Reply() as reply:
            return file_reply(session, desk, inbound, mail, message, files, reply)


def quarantine(desk: Desk, inbound: Inbound, exc: BaseException) -> Outcome:
    """Keep a mail that ingest could not handle, whole, for `mailgate inbound replay`."""
    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    log.error("quarantining a mail via %s: %s", inbound.route, error, exc_info=exc)
    raw_sha256 = hashlib.sha256(inbound.raw).hexdigest()
    envelope = {
        "sender": inbound.envelope_sender,
        "recipients": list(inbound.envelope_recipients),
        "authenticated": inbound.authenticated,
        "peer": inbound.peer,
    }
    with transaction(desk.engine) as session:
        desk.blobs.put(session, raw_sha256, inbound.raw)
        row = Quarantine(
            raw_sha256=raw_sha256,
            raw_size=len(inbound.raw),
            route=inbound.route,
            envelope=json.dumps(envelope),
            error=error[:4000],
            created_at=desk.clock.now(),
        )
        session.add(row)
        session.flush()
        number = row.id
    return Outcome(Status.QUARANTINED, None, None, f"quarantine #{number}: {error[:200]}")


def replay(desk: Desk, quarantine_id: int) -> Outcome:
    """Run a quarantined mail through ingest again (after a fix)."""
    with transaction(desk.engine) as session:
        row = session.get(Quarantine, quarantine_id)
        if row is None:
            raise LookupError(f"no quarantined mail #{quarantine_id}")
        envelope = json.loads(row.envelope)
        raw = desk.blobs.get(row.raw_sha256)
        route = row.route
    outcome = _ingest(
        desk,
        Inbound(raw, route, envelope.get("sender", ""), tuple(envelope.get("recipients", ())),
                bool(envelope.get("authenticated")), str(envelope.get("peer", ""))),
    )
    if outcome.status is not Status.QUARANTINED:
        with transaction(desk.engine) as session:
            stored = session.get(Quarantine, quarantine_id)
            if stored is not None:
                stored.replayed_at = desk.clock.now()
                stored.outcome = f"{outcome.status} #{outcome.ticket or ''}".strip(" #")
                session.add(stored)
    return outcome


def release(desk: Desk, message_pk: int) -> Outcome:
    """Open a ticket from a held mail (sender policy "registered"), registering its sender."""
    from ticketing.models import Account
    from ticketing.tickets import open_ticket

    with transaction(desk.engine) as session:
        message = session.get(Message, message_pk)
        if message is None or message.kind != "held":
            raise LookupError(f"no held mail m{message_pk}")
        mail = parse_mail(desk.blobs.get(message.raw_sha256))
        sender = mail.sender
        if sender is None:
            raise LookupError(f"held mail m{message_pk} has no sender to register")
        account = session.exec(select(Account).where(Account.address == sender.address)).first()
        if account is None:
            account = Account(address=sender.address, name=sender.name, created_at=desk.clock.now())
        account.registered = True
        session.add(account)
        # Its attachments were recorded when it was held: no files to add again.
        outcome = open_ticket(session, desk, mail, message, [], sender)
        outcome = replace(outcome, pages=oncall.queued(session))
    desk.committed(outcome.pages > 0)
    return outcome
