"""The tables: accounts, tickets and their messages, and the rows workers deliver."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel

# Times are aware datetimes in UTC; SQLModel stores them so on both backends.


class Account(SQLModel, table=True):
    """A Help Desk account: one per requester address."""

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=320, unique=True)
    name: str = Field(default="", max_length=200)
    registered: bool = False  # added by an operator, not on first mail
    bouncing_since: datetime | None = None
    bounce_detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime
    # An argon2id hash; "" until the account sets a password (it signs in by mailed link).
    password_hash: str = Field(default="", max_length=200)
    disabled_at: datetime | None = None


class WebSession(SQLModel, table=True):
    """A signed-in browser: the SHA-256 of its cookie's random id, never the id itself."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    created_at: datetime
    last_seen_at: datetime


class SignInToken(SQLModel, table=True):
    """A mailed one-time link (and its code) that signs in or resets a password, stored hashed."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    code_hash: str = Field(max_length=64)
    account_id: int = Field(foreign_key="account.id", index=True)
    purpose: str = Field(max_length=16)  # sign_in | reset
    next_path: str = Field(default="", max_length=500)
    failures: int = 0  # wrong codes typed for it
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


class WebAttempt(SQLModel, table=True):
    """One counted web action (a sign-in mail asked for, a wrong password), for rate limits."""

    __table_args__ = (Index("ix_webattempt_kind_key_at", "kind", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    key: str = Field(max_length=320)
    at: datetime


class Agent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=320, unique=True)
    name: str = Field(default="", max_length=200)
    created_at: datetime
    operator: bool = False  # also has the operators' web pages


class Ticket(SQLModel, table=True):
    # A requester's tickets, newest first: the agents' notice of a new one names them.
    __table_args__ = (Index("ix_ticket_requester", "requester", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(sa_column=Column(Text, nullable=False))
    severity: int = 3
    status: str = Field(default="open", max_length=16)
    requester: str = Field(max_length=320)
    requester_name: str = Field(default="", max_length=200)
    assignee: str | None = Field(default=None, max_length=320)
    linked_ticket_id: int | None = None
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    # When the customer side last wrote (the request, a reply); the Queue's "waiting".
    customer_wrote_at: datetime | None = None


class Participant(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("ticket_id", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    address: str = Field(max_length=320, index=True)  # a customer's own tickets, on the web
    name: str = Field(default="", max_length=200)
    role: str = Field(max_length=16)  # requester | cc | follower | agent
    active: bool = True
    created_at: datetime


class Message(SQLModel, table=True):
    """A mail in or out: the ticket's history, and every mail we were handed."""

    __table_args__ = (Index("ix_message_ticket_created", "ticket_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    # Duplicate detection on ingest (ingest.duplicate_key): the same mail twice is
    # stored once. Not PagerDuty's dedup_key (Page.dedup_key).
    dedupe_key: str = Field(max_length=1000, unique=True)
    message_id: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    direction: str = Field(default="in", max_length=3)
    kind: str = Field(max_length=24)
    route: str = Field(default="", max_length=200)
    envelope_sender: str = Field(default="", max_length=320)
    envelope_recipients: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    from_address: str = Field(default="", max_length=320)
    from_name: str = Field(default="", max_length=200)
    recipients: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    full_text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    html: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    raw_sha256: str = Field(default="", max_length=64)
    raw_size: int = 0
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime


class ThreadRef(SQLModel, table=True):
    """Every Message-ID a ticket has seen or sent, for In-Reply-To/References lookups."""

    message_id: str = Field(primary_key=True, max_length=1000)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_pk: int = Field(foreign_key="message.id", index=True)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)
    inline: bool = False
    content_id: str = Field(default="", max_length=1000)


class Blob(SQLModel, table=True):
    """A stored file (raw mail or attachment) by its SHA-256; its bytes are in BlobChunk rows."""

    sha256: str = Field(primary_key=True, max_length=64)
    size: int


class BlobChunk(SQLModel, table=True):
    """One piece of a stored file, in order: a large file is read and written a piece at a time."""

    sha256: str = Field(primary_key=True, foreign_key="blob.sha256", max_length=64)
    seq: int = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Outbox(SQLModel, table=True):
    """A mail to send, written in the transaction that caused it; a worker delivers it."""

    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    kind: str = Field(max_length=32)
    message_id: str = Field(max_length=1000)
    mail_from: str = Field(max_length=320)
    recipients: str = Field(sa_column=Column(Text, nullable=False))
    # The mail without its files; the worker attaches those named in `files` when it sends.
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # JSON: [{"sha256", "filename", "content_type"}], stored files sent along.
    files: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    status: str = Field(default="pending", max_length=16)  # pending | sent | failed
    attempts: int = 0
    next_attempt_at: datetime
    claimed_by: str = Field(default="", max_length=100)
    claimed_until: datetime | None = None
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime
    sent_at: datetime | None = None


class AutoReplyLog(SQLModel, table=True):
    """One row per mail sent on the system's own account, for RFC 3834 rate limits."""

    __table_args__ = (
        Index("ix_autoreply_recipient_at", "recipient", "sent_at"),
        Index("ix_autoreply_sent_at", "sent_at"),  # the overall ceiling counts by time
    )

    id: int | None = Field(default=None, primary_key=True)
    recipient: str = Field(max_length=320)
    ticket_id: int | None = None
    kind: str = Field(max_length=32)
    sent_at: datetime


class Page(SQLModel, table=True):
    """A page to the on-call hooks, written with the ticket change; a worker delivers it."""

    __table_args__ = (
        UniqueConstraint("dedup_key", "hook", "action"),
        Index("ix_page_due", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    hook: str = Field(max_length=32)
    action: str = Field(default="trigger", max_length=16)
    # PagerDuty's dedup_key: the alert a trigger opens and its resolve closes (for every
    # hook). Not duplicate mail detection (Message.dedupe_key).
    dedup_key: str = Field(max_length=200)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | delivered | gave_up | skipped
    attempts: int = 0
    next_attempt_at: datetime
    give_up_at: datetime
    claimed_by: str = Field(default="", max_length=100)
    claimed_until: datetime | None = None
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime
    delivered_at: datetime | None = None


class PageAttempt(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    page_id: int = Field(foreign_key="page.id", index=True)
    at: datetime
    ok: bool
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class MailboxState(SQLModel, table=True):
    """Where an IMAP fetcher stands in one mailbox."""

    key: str = Field(primary_key=True, max_length=500)
    uidvalidity: int = 0
    last_uid: int = 0
    # The one fetcher working the mailbox, when several processes share the database.
    held_by: str = Field(default="", max_length=100)
    held_until: datetime | None = None
    updated_at: datetime


class Quarantine(SQLModel, table=True):
    """A mail whose ingest failed for a reason other than storage: kept whole for replay."""

    id: int | None = Field(default=None, primary_key=True)
    raw_sha256: str = Field(max_length=64)
    raw_size: int = 0
    route: str = Field(default="", max_length=200)
    envelope: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime
    replayed_at: datetime | None = None
    outcome: str = Field(default="", max_length=200)


class IngestFailure(SQLModel, table=True):
    """A mail whose storing failed for what it holds, counted by its bytes on every route,
    so that after a few tries it goes to the quarantine instead of standing in front."""

    raw_sha256: str = Field(primary_key=True, max_length=64)
    tries: int = 0
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    first_at: datetime
    last_at: datetime


class TicketEvent(SQLModel, table=True):
    """One change on a ticket, for its audit trail: who made it, what, when, by which route.

    Status, severity, assignee, followers and pages; the desk on the web writes the
    same rows (route "web") as the mail commands do (route "mail").
    """

    __table_args__ = (Index("ix_ticketevent_ticket", "ticket_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id")
    at: datetime
    # An address, or "mailgate" for what the system did by itself (a page delivered).
    actor: str = Field(max_length=320)
    actor_name: str = Field(default="", max_length=200)
    route: str = Field(max_length=16)  # mail | web | cli | system
    # opened | status | severity | assignee | follower | page | incident
    what: str = Field(max_length=16)
    old: str = Field(default="", max_length=320)
    new: str = Field(default="", max_length=320)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class Incident(SQLModel, table=True):
    """An outage or degradation shown on the status page, numbered from 1."""

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    # investigating | identified | monitoring | resolved
    state: str = Field(max_length=16, index=True)
    # The affected components, comma-separated, as `[status] components` names them.
    components: str = Field(default="", max_length=2000)
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None


class IncidentUpdate(SQLModel, table=True):
    """One update on an incident: the state it put the incident in, and what it says."""

    __table_args__ = (Index("ix_incidentupdate_incident", "incident_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id")
    at: datetime
    state: str = Field(max_length=16)
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    author: str = Field(default="", max_length=320)
    # The signed nonce of the web form that posted it: the same form sent again posts nothing.
    form_key: str | None = Field(default=None, max_length=320, unique=True, index=True)


class IncidentTicket(SQLModel, table=True):
    """A ticket attached to an incident: a customer reporting the same outage."""

    incident_id: int = Field(foreign_key="incident.id", primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True, index=True)
    attached_at: datetime
    attached_by: str = Field(default="", max_length=320)


class StatusSubscriber(SQLModel, table=True):
    """An address that asked for the status page's updates by mail.

    It gets them once it has confirmed by the mailed link (double opt-in). The link's
    token is kept only as its hash; the manage and unsubscribe links are signed with the
    server secret over the row's id and its own random `key`, so a new subscription
    never answers to an old one's links.
    """

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=320, unique=True)
    key: str = Field(max_length=32)
    created_at: datetime
    confirmed_at: datetime | None = Field(default=None, index=True)
    confirm_hash: str = Field(default="", max_length=64)  # "" once confirmed
    confirm_expires_at: datetime | None = None


# Every model is defined: the mappers are set up now, not at the first query of the
# process, so an object built without a session (Outbox.model_construct, from a row a
# plain statement returned) can be read in a process that has run no query through the
# ORM yet.
configure_mappers()
