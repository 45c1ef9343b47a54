"""Bounces: reading delivery status notifications (RFC 3464) for who failed and for how long."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

from ticketing.addresses import normalize

# RFC 3463 status codes: class.subject.detail; class 2 success, 4 transient, 5 permanent.
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_ADDRESS = re.compile(r"[^\s<>;:\"'()\[\],]+@[^\s<>;:\"'()\[\],]+")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_RECIPIENT_FIELDS = frozenset({"final-recipient", "original-recipient"})
_MAX_DEPTH = 20

# The machine-readable parts of a report (RFC 6522): DSN, read receipt, abuse report.
DELIVERY_STATUS = "message/delivery-status"
DISPOSITION = "message/disposition-notification"
FEEDBACK = "message/feedback-report"
_REPORT_PARTS = {
    DELIVERY_STATUS: DELIVERY_STATUS,
    "message/global-delivery-status": DELIVERY_STATUS,  # RFC 6533, internationalized
    DISPOSITION: DISPOSITION,
    "message/global-disposition-notification": DISPOSITION,
    FEEDBACK: FEEDBACK,
}
_REPORT_MARKS = (b"delivery-status", b"disposition-notification", b"feedback-report")
_MARK_PIECE = 1 << 20


def _has_report_mark(raw: bytes) -> bool:
    """Whether the words of a report part's type appear anywhere in the mail, in any case.
    A case-blind regular expression tries every byte of a large mail in turn (some six
    seconds for 68 MB); a piece lowered at a time and searched for the plain words takes
    a fraction of a second. Pieces overlap by a word's length, so none is cut in two."""
    overlap = max(map(len, _REPORT_MARKS)) - 1
    for start in range(0, len(raw), _MARK_PIECE):
        piece = raw[start : start + _MARK_PIECE + overlap].lower()
        if any(mark in piece for mark in _REPORT_MARKS):
            return True
    return False


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a report (RFC 3464 section 2.3)."""

    address: str
    action: str = ""  # failed | delayed | delivered | relayed | expanded, or '' when absent
    status: str = ""  # e.g. "5.1.1"
    diagnostic: str = ""

    @property
    def failed(self) -> bool:
        """Given up on: Action "failed", or no Action and a permanent Status."""
        if self.action in ("delivered", "relayed", "expanded", "delayed"):
            return False
        if self.action in ("failed", "expired"):  # "expired": SendGrid's word for a give-up
            return True
        # No Action, or one RFC 3464 2.3.3 does not name: a 5.x.x Status is a
        # failure; a 4.x.x one is a delay, which is not a bounce yet.
        return self.status.startswith("5")

    @property
    def permanent(self) -> bool:
        # Only a 5.x.x Status is final (RFC 3463 3.1). Without a Status we do not
        # guess: a wrong guess would stop all mail to a customer.
        return self.failed and self.status.startswith("5")


def _unfold(text: str) -> list[str]:
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line[:1] in (" ", "\t") and lines and lines[-1]:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return lines


def _address(value: str) -> str:
    # "rfc822; user@example.com": the address type comes first (RFC 3464 2.3.1).
    value = value.rpartition(";")[2] if ";" in value else value
    found = _ADDRESS.search(value)
    return normalize(found.group(0)) if found else ""


def _blocks(text: str) -> list[dict[str, str]]:
    """Field groups; a new group starts at a blank line or a recipient field seen twice."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in _unfold(text):
        match = _FIELD.match(line)
        if not match:
            if not line.strip() and _RECIPIENT_FIELDS & set(current):
                blocks.append(current)
                current = {}
            continue
        name, value = match.group(1).lower(), match.group(2).strip()
        if name in _RECIPIENT_FIELDS and name in current:
            blocks.append(current)
            current = {}
        current.setdefault(name, value)
    if _RECIPIENT_FIELDS & set(current):
        blocks.append(current)
    return blocks


def recipients_from_fields(text: str) -> tuple[RecipientStatus, ...]:
    """The per-recipient blocks in DSN field text, once per address."""
    found: dict[str, RecipientStatus] = {}
    for block in _blocks(text):
        # Original-Recipient is the address we wrote to, before forwarding or
        # alias expansion turned it into Final-Recipient (RFC 3464 2.3.1, 2.3.2).
        address = _address(block.get("original-recipient", "")) or _address(
            block.get("final-recipient", "")
        )
        if not address or address in found:
            continue
        status = _STATUS.search(block.get("status", ""))
        action = block.get("action", "").split()
        found[address] = RecipientStatus(
            address=address,
            action=action[0].lower() if action else "",
            status=".".join(status.groups()) if status else "",
            diagnostic=" ".join(block.get("diagnostic-code", "").split())[:500],
        )
    return tuple(found.values())


def _part_text(part: Message) -> str:
    """The text of a report part, which the stdlib parses into header blocks."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n\n".join(
            "\n".join(f"{k}: {v}" for k, v in block.items())
            for block in payload
            if isinstance(block, Message)
        )
    data = part.get_payload(decode=True)
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)


def _report_parts(
    part: Message, parent: Message | None = None, depth: int = 0
) -> list[tuple[str, Message, Message]]:
    """(kind, part, the multipart around it) of each report part, never inside an
    enclosed message: a forwarded bounce is a person's mail."""
    kind = _REPORT_PARTS.get(part.get_content_type())
    if kind:
        return [(kind, part, parent or part)]
    if part.get_content_type().startswith("message/") or depth >= _MAX_DEPTH:
        return []
    payload = part.get_payload() if part.is_multipart() else []
    found: list[tuple[str, Message, Message]] = []
    for child in payload if isinstance(payload, list) else []:
        if isinstance(child, Message):
            found.extend(_report_parts(child, part, depth + 1))
    return found


@dataclass(frozen=True)
class Report:
    """What the machine-readable parts of a mail say."""

    kinds: frozenset[str]
    recipients: tuple[RecipientStatus, ...]


_NO_REPORT = Report(frozenset(), ())


@dataclass(frozen=True)
class Complaint:
    """An abuse report (RFC 5965): the mail complained about, and whom the report names."""

    message_id: str  # the enclosed mail's own Message-ID, without <>
    named: tuple[str, ...]  # Original-Rcpt-To, else the enclosed To; often redacted
    return_path: str = ""  # the enclosed mail's Return-Path: the envelope sender it had


def _enclosed(report: Message) -> Message | None:
    """The mail an abuse report encloses (whole, or its header block)."""
    payload = report.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if not isinstance(part, Message):
            continue
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        # "text/rfc822-header", singular, is seen in the wild too.
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers",
                                       "text/rfc822-header"):
            data = part.get_payload(decode=True)
            return email.message_from_bytes(data if isinstance(data, bytes) else b"",
                                            policy=email.policy.compat32)
    return None


def read_complaint(raw: bytes) -> Complaint | None:
    """What an abuse report is about; None for a mail that holds no feedback part."""
    if not _has_report_mark(raw):
        return None
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = [(part, report) for kind, part, report in _report_parts(message) if kind == FEEDBACK]
    if not found:
        return None
    feedback, report = found[0]
    named = [_address(line.split(":", 1)[1]) for line in _unfold(_part_text(feedback))
             if line.lower().startswith("original-rcpt-to:")]
    enclosed = _enclosed(report)
    message_id = return_path = ""
    if enclosed is not None:
        message_id = " ".join(str(enclosed.get("Message-ID", "")).split()).strip("<>")
        return_path = "".join(str(enclosed.get("Return-Path", "")).split()).strip("<>")
        if not any(named):
            to = _ADDRESS.findall(str(enclosed.get("To", "")))
            named = [normalize(to[0])] if len(to) == 1 else []
    return Complaint(message_id, tuple(a for a in dict.fromkeys(named)
                                       if a and "redacted" not in a), return_path)


def read_report(raw: bytes) -> Report:
    """The report parts of a mail; a mail without one is not parsed a second time."""
    if not _has_report_mark(raw):
        return _NO_REPORT
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    kinds: set[str] = set()
    found: dict[str, RecipientStatus] = {}
    for kind, part, _ in _report_parts(message):
        kinds.add(kind)
        if kind == DELIVERY_STATUS:
            for recipient in recipients_from_fields(_part_text(part)):
                found.setdefault(recipient.address, recipient)
    return Report(frozenset(kinds), tuple(found.values()))
