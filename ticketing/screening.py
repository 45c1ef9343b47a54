"""Small named rules that decide, before any reply, what kind of mail this is."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from ticketing.addresses import normalize
from ticketing.conversation import served_addresses
from ticketing.dsn import (
    DELIVERY_STATUS,
    DISPOSITION,
    FEEDBACK,
    Report,
    read_report,
    recipients_from_fields,
)
from ticketing.identity import LOOP_HEADER, is_our_message_id
from ticketing.inbound import Inbound
from ticketing.parse import ParsedMail
from ticketing.returnpath import outbox_id_of
from ticketing.settings import Settings


@dataclass(frozen=True)
class Verdict:
    kind: str  # "human" | "auto_reply" | "bounce" | "own" | "list"
    rule: str  # the name of the rule that decided ("human" when none did)
    reason: str  # one line a person can read
    failed_recipients: tuple[str, ...] = ()  # for bounces: the addresses that failed
    permanent: bool = False  # for bounces: a 5.x.x failure


@dataclass
class Candidate:
    """The mail under screening, as every rule sees it."""

    mail: ParsedMail
    inbound: Inbound
    settings: Settings

    @cached_property
    def report(self) -> Report:
        return read_report(self.inbound.raw)

    def header(self, name: str) -> str:
        return " ".join(self.mail.header(name).split())

    def first_word(self, name: str) -> str:
        return (self.header(name).split(None, 1) or [""])[0].split(";")[0].lower()

    @property
    def report_type(self) -> str:
        if self.mail.content_type != "multipart/report":
            return ""
        found = re.search(r"report-type\s*=\s*\"?([\w-]+)", self.header("content-type"), re.I)
        return found.group(1).lower() if found else ""


@dataclass(frozen=True)
class Rule:
    """One check: None when it does not apply, else the reason (or a whole Verdict)."""

    name: str
    kind: str
    description: str
    check: Callable[[Candidate], str | Verdict | None]

    def decide(self, candidate: Candidate) -> Verdict | None:
        found = self.check(candidate)
        if found is None or isinstance(found, Verdict):
            return found
        return Verdict(self.kind, self.name, " ".join(found.split()))


# --- our own mail coming back -------------------------------------------------


def _own_loop_header(c: Candidate) -> str | None:
    # Another desk's mail carries the header too, with its own address.
    ours = served_addresses(c.settings)
    if any(normalize(value) in ours for value in c.mail.header_all(LOOP_HEADER.lower())):
        return f"carries our {LOOP_HEADER} header"
    return None


def _own_message_id(c: Candidate) -> str | None:
    support = c.settings.support
    if c.mail.message_id and is_our_message_id(c.mail.message_id, support.domain, support.secret):
        return f"Message-ID <{c.mail.message_id}> is one we made"
    return None


# --- bounces ------------------------------------------------------------------

# What MTAs write in the Subject of a bounce that carries no report (Postfix,
# Exim, Sendmail, qmail, Exchange, Lotus Notes, Google): anchored at the start,
# so a person forwarding one ("Fwd: Undelivered Mail ...") is still a person, and
# narrow, so "Undelivered order" or "Delivery failure on my parcel" stays a request.
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(undeliver(ed|able) (mail|message)\b|undeliverable\s*:|nondeliverable (mail|message)"
    r"|delivery status notification \((failure|delay)\)|mail delivery (failed|failure)\b"
    r"|delivery (failure|has failed|notification: delivery has failed)\s*:?\s*$"
    r"|delivery failure\s*:|returned mail\s*:|failure notice\s*$|mail system error\b"
    r"|non[- ]?delivery (report|notification)|warning: could not send message"
    r"|mail could not be delivered|message (not delivered|delivery failure)\s*$"
    r"|there was an error sending your mail)",
    re.IGNORECASE,
)
_DAEMON = re.compile(
    r"^(mailer[-_.]?daemon|post[-_.]?master|mail[-_.]?delivery[-_.]?(system|subsystem))$", re.I
)


def _bounce(c: Candidate, rule: str, reason: str) -> Verdict:
    # A report whose MIME boundaries are broken still has its fields in the text.
    recipients = c.report.recipients or recipients_from_fields(
        c.inbound.raw[:1_000_000].decode("utf-8", "replace")
    )
    failed = tuple(r for r in recipients if r.failed)
    addresses = tuple(r.address for r in failed)
    if not recipients:
        # Exim names the failed addresses in a header when it writes no report.
        addresses = tuple(
            address
            for value in c.mail.header_all("x-failed-recipients")
            for address in map(normalize, value.split(","))
            if address
        )
    if failed:
        reason += ": " + ", ".join(f"{r.address} {r.status or r.action}" for r in failed[:5])
    elif recipients:
        actions = sorted({r.action or r.status or "?" for r in recipients})
        reason += f" ({', '.join(actions)}: nothing failed)"
    return Verdict(
        "bounce", rule, " ".join(reason.split()), addresses, any(r.permanent for r in failed)
    )


def _delivery_report(c: Candidate) -> Verdict | None:
    # RFC 3464: multipart/report; report-type=delivery-status. Some MTAs wrap the
    # report in another multipart or send the status part alone; any
    # delivery-status part outside an enclosed message counts.
    if c.report_type == "delivery-status" or DELIVERY_STATUS in c.report.kinds:
        return _bounce(c, "delivery-report", "a delivery status report")
    return None


def _sender_local_part(c: Candidate) -> str | None:
    """The From local part; '' for "From: <>"; None when there is none to read."""
    if c.mail.sender:
        return c.mail.sender.address.rpartition("@")[0]
    raw = c.header("from")
    if "<>" in raw.replace(" ", ""):
        return ""
    # "From: mailer-daemon" with no domain does not parse as an address.
    bare = raw.rpartition("<")[2].rstrip(">").strip() if "<" in raw else raw.strip()
    return (bare.rpartition("@")[0] if "@" in bare else bare) or None


def _daemon_sender(c: Candidate) -> Verdict | None:
    local = _sender_local_part(c)
    if local == "":
        return _bounce(c, "daemon-sender", "sent from the null address <>")
    if local and _DAEMON.match(local):
        return _bounce(c, "daemon-sender", f"sent by {c.header('from')[:80]}")
    return None


def _bounce_subject(c: Candidate) -> Verdict | None:
    if _BOUNCE_SUBJECT.match(c.mail.subject):
        return _bounce(c, "bounce-subject", f"bounce subject {c.mail.subject[:80]!r}")
    return None


def _null_sender(c: Candidate) -> Verdict | None:
    # The SMTP null reverse-path (RFC 5321 4.5.5) arrives as "<>". An empty string
    # means "not known" (a pipe run without the sender argument), so it does not
    # count; Postfix's pipe(8) writes MAILER-DAEMON for the null sender by default.
    # IMAP has no envelope: there the delivering server's Return-Path, the topmost
    # one, records it (RFC 5321 4.4). Auto-replies use the null sender too (RFC
    # 3834 3.3); their own rules run before this one.
    sender = c.inbound.envelope_sender.strip()
    route = c.inbound.route
    if sender == "<>" or (sender.upper() == "MAILER-DAEMON" and route in ("smtp", "pipe")):
        return _bounce(c, "null-sender", "empty envelope sender")
    if route.startswith("imap") and not sender and c.header("return-path") == "<>":
        return _bounce(c, "null-sender", "empty Return-Path from the delivering server")
    return None


def _to_return_path(c: Candidate) -> str | None:
    # Only machines write to a mail's return path: bounces, and responders, which
    # RFC 3834 3.1 sends there. People answer From or Reply-To.
    for address in (*c.inbound.envelope_recipients, *c.mail.delivered_to):
        if outbox_id_of(address, c.settings) is not None:
            return f"sent to {address}, the return path of a mail of ours"
    return None


# --- automatic replies and reports --------------------------------------------


def _feedback_report(c: Candidate) -> str | None:
    # RFC 5965 abuse reports: a mailbox provider telling us someone pressed "spam".
    if c.report_type == "feedback-report" or FEEDBACK in c.report.kinds:
        return "an abuse feedback report (RFC 5965)"
    return None


def _read_receipt(c: Candidate) -> str | None:
    # RFC 8098 disposition notifications are sent automatically or on a click.
    if c.report_type == "disposition-notification" or DISPOSITION in c.report.kinds:
        return "a read receipt (message disposition notification)"
    return None


def _auto_submitted(c: Candidate) -> str | None:
    if c.header("auto-submitted") and c.first_word("auto-submitted") != "no":  # RFC 3834 5
        return f"Auto-Submitted: {c.header('auto-submitted')[:60]}"
    return None


def _x_autoreply(c: Candidate) -> str | None:
    for name in ("x-autoreply", "x-autorespond", "x-autoresponse", "x-autogenerated"):
        if c.header(name) and c.first_word(name) not in ("no", "false", "0"):
            return f"{name}: {c.header(name)[:60]}"
    return None


# Subjects auto-responders write: Exchange "Automatic reply:", Apple "Auto reply:",
# Lotus Notes "AUTO: <name> is out of the office", older Outlook "Out of Office
# AutoReply:". Anchored at the start: a person's "Re: Automatic reply: ..." is a reply.
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)\s*:|autorespons\w*\s*:"
    r"|out of (the )?office( auto[ -]?reply)?\s*:|auto:\s.*\bout of (the )?office\b"
    r"|\[auto[ -]generated\])",
    re.IGNORECASE,
)


def _exchange(c: Candidate) -> str | None:
    # Exchange marks what an inbox rule or the out-of-office assistant sent with
    # X-MS-Exchange-Inbox-Rules-Loop. X-Auto-Response-Suppress alone is no mark:
    # Outlook sets it on ordinary mail too (meeting requests, mail asking for a
    # read receipt), so it counts only beside an auto-reply subject.
    if c.header("x-ms-exchange-inbox-rules-loop"):
        return "X-MS-Exchange-Inbox-Rules-Loop (an Exchange rule or out-of-office)"
    if c.header("x-auto-response-suppress") and _AUTO_SUBJECT.match(c.mail.subject):
        return f"X-Auto-Response-Suppress with subject {c.mail.subject[:60]!r}"
    return None


def _apple_vacation(c: Candidate) -> str | None:
    if c.header("x-apple-action").upper() == "VACATION":
        return "X-Apple-Action: VACATION (iCloud vacation reply)"
    return None


def _google_vacation(c: Candidate) -> str | None:
    # Gmail's responder writes Auto-Submitted (caught above); mail it relays
    # for other servers keeps the original mark in this header.
    if c.header("x-google-original-auto-submitted") or c.header("x-gm-vacation"):
        return "Google vacation responder"
    return None


def _challenge_response(c: Candidate) -> str | None:
    # Challenge-response filters ask the sender to prove they are a person, with
    # headers of their own rather than Auto-Submitted.
    for name in ("x-bluebottle-request", "x-boxbe-id", "x-spamarrest-noauth"):
        if c.header(name):
            return f"challenge-response mail ({name})"
    return None


def _auto_subject(c: Candidate) -> str | None:
    if _AUTO_SUBJECT.match(c.mail.subject):
        return f"auto-reply subject {c.mail.subject[:80]!r}"
    return None


def _junk_precedence(c: Candidate) -> str | None:
    # RFC 3834 2: do not answer Precedence junk; vacation(1) marks its replies so,
    # and some responders write auto_reply.
    if c.first_word("precedence") in ("junk", "auto_reply"):
        return f"Precedence: {c.first_word('precedence')}"
    return None


# --- list and bulk mail -------------------------------------------------------

_LIST_HEADERS = (
    "list-id",  # RFC 2919
    "list-post",  # RFC 2369
    "list-subscribe",
    "list-help",
    "x-beenthere",  # Mailman
    "x-mailman-version",
    "mailing-list",  # ezmlm
    "x-mlserver",  # fml
    "x-ml-name",
)
_LIST_SENDER = re.compile(r"^(owner-.+|.+-(owner|request|bounces?|admin))$")


def _list_headers(c: Candidate) -> str | None:
    for name in _LIST_HEADERS:
        if c.header(name):
            return f"{name}: {c.header(name)[:60]}"
    return None


def _list_unsubscribe(c: Candidate) -> str | None:
    # A person's mail client never writes List-Unsubscribe; bulk senders must
    # (RFC 8058, and the large mailbox providers require it of them).
    if c.header("list-unsubscribe"):
        return "List-Unsubscribe (bulk or list mail)"
    return None


def _list_sender(c: Candidate) -> str | None:
    # Majordomo and other older list managers: Sender: owner-<list>@ or <list>-owner@.
    sender = normalize(c.header("sender"))
    if c.first_word("precedence") == "bulk" and _LIST_SENDER.match(sender.rpartition("@")[0]):
        return f"a list manager's Sender {sender}"
    return None


def _list_precedence(c: Candidate) -> str | None:
    # Precedence: list, or bulk (newsletters); RFC 3834 2 says answer neither.
    if c.first_word("precedence") in ("list", "bulk"):
        return f"Precedence: {c.first_word('precedence')}"
    return None


# Decided in order; the first rule that applies gives the verdict. The daemon
# and subject signs of a bounce come before Auto-Submitted, which MTAs write on
# bounces too; auto-reply marks come before the null sender, which RFC 3834
# auto-replies use too and which must not mark anyone bouncing.
RULES: tuple[Rule, ...] = (
    Rule("own-loop-header", "own", "our loop header came back", _own_loop_header),
    Rule("own-message-id", "own", "a Message-ID we made came back", _own_message_id),
    Rule("delivery-report", "bounce", "RFC 3464 delivery status report", _delivery_report),
    Rule("feedback-report", "auto_reply", "RFC 5965 abuse report", _feedback_report),
    Rule("read-receipt", "auto_reply", "RFC 8098 disposition notification", _read_receipt),
    Rule("daemon-sender", "bounce", "From MAILER-DAEMON, postmaster or <>", _daemon_sender),
    Rule("bounce-subject", "bounce", "a bounce subject without a report", _bounce_subject),
    Rule("auto-submitted", "auto_reply", "RFC 3834 Auto-Submitted", _auto_submitted),
    Rule("x-autoreply", "auto_reply", "X-Autoreply and its relatives", _x_autoreply),
    Rule("exchange-auto-reply", "auto_reply", "Exchange rule or out-of-office", _exchange),
    Rule("apple-vacation", "auto_reply", "iCloud vacation reply", _apple_vacation),
    Rule("google-vacation", "auto_reply", "Gmail vacation responder", _google_vacation),
    Rule("challenge-response", "auto_reply", "challenge-response filter", _challenge_response),
    Rule("auto-reply-subject", "auto_reply", "auto-responder subject", _auto_subject),
    Rule("junk-precedence", "auto_reply", "Precedence: junk or auto_reply", _junk_precedence),
    Rule("null-sender", "bounce", "empty envelope sender", _null_sender),
    Rule("return-path", "auto_reply", "sent to one of our mails' return paths", _to_return_path),
    Rule("list-headers", "list", "List-Id, List-Post, list manager marks", _list_headers),
    Rule("list-unsubscribe", "list", "List-Unsubscribe", _list_unsubscribe),
    Rule("list-sender", "list", "a list manager's Sender", _list_sender),
    Rule("list-precedence", "list", "Precedence: list or bulk", _list_precedence),
)


def screen(mail: ParsedMail, inbound: Inbound, settings: Settings) -> Verdict:
    """The first rule that applies decides; a mail no rule claims is a person's."""
    candidate = Candidate(mail, inbound, settings)
    for rule in RULES:
        verdict = rule.decide(candidate)
        if verdict is not None:
            return verdict
    return Verdict("human", "human", "no sign of automatic mail")
