"""A web form as a mail: the same bytes a mail client would send, handed to the one ingest."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from ticketing.inbound import Inbound
from ticketing.models import Account
from ticketing.settings import Settings
from ticketing.severity import Severity, strip_tags


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


def message_id(settings: Settings, account: Account, nonce: str) -> str:
    """The form's nonce, signed for this account: the same form sent twice is one message
    (ingest stores a Message-ID once), and nobody can aim at another account's."""
    mac = hmac.new(settings.support.secret.encode(), f"web:{account.id}:{nonce}".encode(),
                   hashlib.sha256).hexdigest()[:40]
    return f"web.{mac}@{settings.support.domain}"


def _mail(account: Account, nonce_id: str, now: datetime, to: str, subject: str, text: str,
          uploads: list[Upload], cc: list[str] | None = None, in_reply_to: str = "") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=account.name, addr_spec=account.address)
    message["To"] = to
    if cc:
        message["Cc"] = [Address(addr_spec=address) for address in cc]
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{nonce_id}>"
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        message["References"] = f"<{in_reply_to}>"
    message.set_content(text or "")
    for upload in uploads:
        maintype, _, subtype = upload.content_type.partition("/")
        if not subtype or "\n" in upload.content_type or "\r" in upload.content_type:
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(upload.data, maintype=maintype, subtype=subtype,
                               filename=upload.filename)
    return message.as_bytes()


def request_inbound(
    settings: Settings, account: Account, nonce: str, now: datetime, *, cc: list[str],
    subject: str, description: str, severity: Severity, uploads: list[Upload],
) -> Inbound:
    """A new request from the signed-in account; its severity as the tag a mail would carry."""
    support = settings.support.address
    subject = f"[{severity.label}] {strip_tags(' '.join(subject.split()))}"
    raw = _mail(account, message_id(settings, account, nonce), now, support, subject, description,
                uploads, cc=cc)
    return Inbound(raw, "web", account.address, (support,), authenticated=True)


def reply_inbound(
    settings: Settings, account: Account, nonce: str, now: datetime, *, reply_to: str,
    subject: str, root: str, text: str, uploads: list[Upload],
) -> Inbound:
    """A reply on a ticket, sent as a mail client would: to its reply address, in its thread."""
    raw = _mail(account, message_id(settings, account, nonce), now, reply_to, subject, text,
                uploads, in_reply_to=root)
    return Inbound(raw, "web", account.address, (reply_to,), authenticated=True)
