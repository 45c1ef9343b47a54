"""The mails we send: Jinja2 text and HTML parts in an EmailMessage with threading headers."""

from __future__ import annotations

import email.policy
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ticketing.addresses import Address
from ticketing.identity import LOOP_HEADER, new_message_id
from ticketing.settings import Settings

# policy.SMTP: CRLF line ends, and header values that refuse embedded CR/LF.
_POLICY = email.policy.SMTP.clone(max_line_length=78)
# Clients thread on the nearest references; a long chain only grows every mail.
_MAX_REFERENCES = 20


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str
    recipients: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True)
class FileToSend:
    filename: str
    content_type: str
    data: bytes


class Templates:
    """Mail templates: the operator's override folder first, then ours."""

    def __init__(self, settings: Settings) -> None:
        folders = [str(settings.templates_path)]
        if settings.templates_override:
            folders.insert(0, str(settings.templates_override))
        self.environment = Environment(
            loader=FileSystemLoader(folders),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, **context: Any) -> tuple[str, str]:
        """(text, html) for one template pair: NAME.txt and NAME.html."""
        text = self.environment.get_template(f"{name}.txt").render(**context)
        html = self.environment.get_template(f"{name}.html").render(**context)
        return text, html


def _header_address(address: Address) -> HeaderAddress | str:
    try:
        return HeaderAddress(display_name=address.name, addr_spec=address.address)
    except (ValueError, IndexError, TypeError):
        return address.address


def compose(
    settings: Settings,
    *,
    to: Sequence[Address],
    subject: str,
    text: str,
    html: str,
    now: datetime,
    cc: Sequence[Address] = (),
    reply_to: str | None = None,
    from_name: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    auto_submitted: str | None = None,
    attachments: Sequence[FileToSend] = (),
    extra_headers: Sequence[tuple[str, str]] = (),
) -> OutgoingMail:
    support = settings.support
    message = EmailMessage(policy=_POLICY)
    message_id = new_message_id(support.domain)
    message["From"] = HeaderAddress(display_name=from_name or support.name, addr_spec=support.address)
    message["To"] = [_header_address(a) for a in to]
    if cc:
        message["Cc"] = [_header_address(a) for a in cc]
    message["Subject"] = " ".join(subject.split())
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
    chain = list(dict.fromkeys(references))
    if len(chain) > _MAX_REFERENCES:
        chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]  # RFC 5322 3.6.4: keep the root
    if chain:
        message["References"] = " ".join(f"<{ref}>" for ref in chain)
    if reply_to:
        message["Reply-To"] = HeaderAddress(display_name=support.name, addr_spec=reply_to)
    if auto_submitted:
        # RFC 3834: responders must not answer this mail.
        message["Auto-Submitted"] = auto_submitted
        message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = support.address
    for name, value in extra_headers:
        message[name] = value
    message.set_content(text, cte="quoted-printable" if not text.isascii() else None)
    message.add_alternative(html, subtype="html")
    for item in attachments:
        maintype, _, subtype = (
            item.content_type or mimetypes.guess_type(item.filename)[0] or "application/octet-stream"
        ).partition("/")
        if maintype == "message" or maintype == "multipart":
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(
            item.data, maintype=maintype, subtype=subtype or "octet-stream", filename=item.filename
        )
    recipients = tuple(dict.fromkeys(a.address for a in (*to, *cc)))
    return OutgoingMail(message_id, recipients, message.as_bytes())
