"""The mails we send: Jinja2 text and HTML parts, with the headers that thread them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)

from ticketing import mime
from ticketing.addresses import Address
from ticketing.identity import LOOP_HEADER, new_message_id
from ticketing.settings import Settings

# The mails we write, each a NAME.txt and NAME.html pair.
MAIL_TEMPLATES = ("confirmation", "new_ticket", "reply", "status", "command_error", "no_account",
                  "sign_in", "reset", "password_changed", "postmaster",
                  "status_subscribe", "status_update")

# Clients thread on the nearest references; a long chain only grows every mail.
_MAX_REFERENCES = 20


@dataclass(frozen=True)
class FileToSend:
    """A stored file to attach: named by its hash, read when the mail is sent."""

    filename: str
    content_type: str
    sha256: str


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str
    recipients: tuple[str, ...]
    raw: bytes  # without its files: mime.with_files adds them when it is sent
    files: tuple[FileToSend, ...] = ()


class Templates:
    """Mail templates: the operator's override folder first, then ours.

    Ours ship inside the package (ticketing/templates, subfolders included) and are
    read as package resources, so an installed wheel finds them from any folder.
    """

    def __init__(self, settings: Settings) -> None:
        loaders: list[BaseLoader] = []
        folders: list[str] = []
        if settings.templates_override:
            loaders.append(FileSystemLoader(str(settings.templates_override)))
            folders.append(str(settings.templates_override))
        if settings.templates_path:
            loaders.append(FileSystemLoader(str(settings.templates_path)))
            folders.append(str(settings.templates_path))
        else:
            loaders.append(PackageLoader("ticketing", "templates"))
            folders.append("the templates shipped with mailgate")
        self.where = " or ".join(folders)
        self.environment = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def names(self) -> list[str]:
        """Every template's name, override folder and subfolders included."""
        return sorted(self.environment.list_templates())

    def problem(self) -> str | None:
        """Why some mail template cannot be loaded (missing or not valid Jinja2), else None.

        Subfolders (web/) hold pages rendered by an environment of their own.
        """
        wanted = [f"{name}.{kind}" for name in MAIL_TEMPLATES for kind in ("txt", "html")]
        for name in dict.fromkeys([*wanted, *(n for n in self.names() if "/" not in n)]):
            try:
                self.environment.get_template(name)
            except TemplateNotFound:
                return f"template {name} not found in {self.where}"
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                return f"template {name}{f' line {line}' if line else ''}: {exc.message}"
        return None

    def render(self, name: str, **context: Any) -> tuple[str, str]:
        """(text, html) for one template pair: NAME.txt and NAME.html."""
        text = self.environment.get_template(f"{name}.txt").render(**context)
        html = self.environment.get_template(f"{name}.html").render(**context)
        return text, html


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
    message_id = new_message_id(support.domain, support.secret)
    lines = [
        mime.address_header("From", [mime.address(from_name or support.name, support.address)]),
        mime.address_header("To", [mime.address(a.name, a.address) for a in to]),
    ]
    if cc:
        lines.append(mime.address_header("Cc", [mime.address(a.name, a.address) for a in cc]))
    lines.append(mime.header("Subject", subject))
    lines.append(f"Date: {format_datetime(now)}")
    lines.append(f"Message-ID: <{message_id}>")
    if in_reply_to:
        lines.append(mime.header("In-Reply-To", f"<{in_reply_to}>"))
    chain = list(dict.fromkeys(references))
    if len(chain) > _MAX_REFERENCES:
        chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]  # RFC 5322 3.6.4: keep the root
    if chain:
        lines.append(mime.header("References", " ".join(f"<{ref}>" for ref in chain)))
    if reply_to:
        lines.append(mime.address_header("Reply-To", [mime.address(support.name, reply_to)]))
    if auto_submitted:
        # RFC 3834: responders must not answer this mail.
        lines.append(mime.header("Auto-Submitted", auto_submitted))
    # Exchange and Outlook: no out-of-office, read receipt or other automatic answer.
    lines.append("X-Auto-Response-Suppress: All")
    lines.append(mime.header(LOOP_HEADER, support.address))
    lines.extend(mime.header(name, value) for name, value in extra_headers)
    raw = mime.build(lines, text, html)
    recipients = tuple(dict.fromkeys(a.address for a in (*to, *cc)))
    return OutgoingMail(message_id, recipients, raw, tuple(attachments))
