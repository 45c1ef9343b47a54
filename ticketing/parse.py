"""Raw bytes to one normalized record; mail-parser is confined here, the stdlib backs it up."""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from ticketing.addresses import Address, normalize
from ticketing.filenames import safe_filename
from ticketing.htmltext import html_to_text
from ticketing.tnef import unpack_tnef

log = logging.getLogger(__name__)

# mail-parser logs a warning for every part type it does not handle (report,
# rfc822-headers, related); we handle those parts ourselves below.
logging.getLogger("mailparser").setLevel(logging.ERROR)
logging.getLogger("mailparser.core").setLevel(logging.ERROR)

_MSGID = re.compile(r"<([^<>\s]+)>")
_MAX_DEPTH = 20


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class ParsedMail:
    message_id: str
    subject: str
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    delivered_to: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[ParsedAttachment, ...]
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    content_type: str = "text/plain"
    parser: str = "mail-parser"
    defects: tuple[str, ...] = ()

    def header(self, name: str) -> str:
        """The first value of a header, or ''."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), "")

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this mail answers, nearest first (In-Reply-To, then References newest first)."""
        seen: dict[str, None] = {}
        for ref in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(ref, None)
        return tuple(seen)


def text_of(value: object) -> str:
    """A header value as text: RFC 2047 decoded; raw 8-bit bytes read as UTF-8, else cp1252."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if any("\udc80" <= c <= "\udcff" for c in value):
        raw = value.encode("utf-8", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("cp1252", "replace")
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
            pass
    return value


def _one_line(value: str) -> str:
    return re.sub(r"[\r\n\t]+\s*", " ", value).replace("\x00", "").strip()


def _ids(value: str) -> tuple[str, ...]:
    found = _MSGID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]  # a bare id without brackets, as some clients write
    return tuple(dict.fromkeys(found))


def _addresses(values: list[str]) -> tuple[Address, ...]:
    found: dict[str, Address] = {}
    for name, addr in getaddresses([text_of(v) for v in values]):
        address = normalize(addr)
        if address and address not in found:
            found[address] = Address(address, _one_line(text_of(name)))
    return tuple(found.values())


def _decode_part(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = (part.get_content_charset() or "utf-8").lower()
    for candidate in (charset, "utf-8", "cp1252"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("utf-8", "replace")


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except (LookupError, UnicodeError, ValueError):
        name = ""
    if isinstance(name, tuple):  # an RFC 2231 value the stdlib could not collapse
        name = email.utils.collapse_rfc2231_value(name)
    return text_of(str(name))


class _Walk:
    """One pass over the MIME tree: text and HTML bodies, every attachment."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []

    def part(self, part: Message, depth: int = 0, in_alternative: bool = False) -> None:
        ctype = part.get_content_type()
        if (part.is_multipart() and ctype == "message/rfc822") or ctype == "message/rfc822":
            self._enclosed(part)
            return
        if part.is_multipart():
            if depth >= _MAX_DEPTH:
                return
            payload = part.get_payload()
            children = payload if isinstance(payload, list) else []
            alternative = ctype == "multipart/alternative"
            for child in children:
                if isinstance(child, Message):
                    self.part(child, depth + 1, alternative)
            return
        disposition = (part.get_content_disposition() or "").lower()
        name = _filename(part)
        is_body = (
            ctype in ("text/plain", "text/html")
            and disposition != "attachment"
            and not name
        )
        if is_body:
            (self.text if ctype == "text/plain" else self.html).append(_decode_part(part))
            return
        if ctype in ("application/ms-tnef", "application/vnd.ms-tnef") or name.lower() == "winmail.dat":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and self._tnef(data):
                return
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = b""
        if not name and ctype.startswith("text/") and disposition != "attachment":
            # An inline text part of another kind (text/enriched, text/calendar...):
            # keep it as text when there is no plain body.
            self.text.append(_decode_part(part))
            return
        self.attachments.append(
            ParsedAttachment(
                filename=safe_filename(name, ctype),
                content_type=ctype,
                data=data,
                inline=disposition == "inline" or bool(part.get("Content-ID") and not name),
                content_id=_one_line(str(part.get("Content-ID", ""))).strip("<>"),
            )
        )

    def _enclosed(self, part: Message) -> None:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message):
            data = inner.as_bytes(policy=email.policy.compat32)
            subject = text_of(inner.get("Subject", ""))
        else:
            raw = part.get_payload(decode=True)
            data = raw if isinstance(raw, bytes) else b""
            subject = ""
        name = _filename(part) or (subject + ".eml" if subject else "message.eml")
        self.attachments.append(
            ParsedAttachment(safe_filename(name, "message/rfc822"), "message/rfc822", data)
        )

    def _tnef(self, data: bytes) -> bool:
        unpacked = unpack_tnef(data)
        if unpacked is None:
            return False
        text, html, files = unpacked
        if text:
            self.text.append(text)
        if html:
            self.html.append(html)
        for filename, content in files:
            self.attachments.append(
                ParsedAttachment(safe_filename(filename, "application/octet-stream"),
                                 _guess_type(filename), content)
            )
        return True


def _guess_type(filename: str) -> str:
    import mimetypes

    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _headers(message: Message) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in message.items():
        pairs.append((str(key).lower(), text_of(value)))
    return tuple(pairs)


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse with mail-parser; where it fails or reads less than the message holds, the stdlib."""
    mp_text = mp_subject = ""
    message: Message | None = None
    try:
        import mailparser

        parsed = mailparser.parse_from_bytes(raw)
        message = parsed.message
        mp_text = "\n".join(parsed.text_plain or [])
        mp_subject = _one_line(text_of(parsed.subject or ""))
    except Exception as exc:
        log.info("mail-parser failed (%s: %s); using the stdlib reading", type(exc).__name__, exc)
    if not isinstance(message, Message):
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    # One walk of the same tree finds what mail-parser leaves out: enclosed messages,
    # TNEF, report parts, bodies it reads as empty (FACTS: its gaps on real mail).
    walk = _Walk()
    walk.part(message)
    walked_text = "\n".join(t for t in walk.text if t.strip())
    html = "\n".join(walk.html)
    parser = "mail-parser"
    text = mp_text
    if len(mp_text.strip()) < len(walked_text.strip()):
        text, parser = walked_text, "stdlib"
    subject = mp_subject
    if not subject or "\ufffd" in subject:
        subject = _one_line(text_of(message.get("Subject", "")))
    if not text.strip() and html.strip():
        text = html_to_text(html)
    sender = _addresses(message.get_all("From", []) or [])
    return ParsedMail(
        message_id=next(iter(_ids(text_of(message.get("Message-ID", "")))), ""),
        subject=subject,
        sender=sender[0] if sender else None,
        to=_addresses(message.get_all("To", []) or []),
        cc=_addresses(message.get_all("Cc", []) or []),
        reply_to=_addresses(message.get_all("Reply-To", []) or []),
        delivered_to=tuple(
            normalize(text_of(v)) for v in message.get_all("Delivered-To", []) or []
        ),
        in_reply_to=_ids(text_of(message.get("In-Reply-To", ""))),
        references=tuple(
            ref for v in message.get_all("References", []) or [] for ref in _ids(text_of(v))
        ),
        text=text.replace("\r\n", "\n").replace("\x00", ""),
        html=html.replace("\x00", ""),
        attachments=tuple(walk.attachments),
        headers=_headers(message),
        content_type=message.get_content_type(),
        parser=parser,
        defects=tuple(type(d).__name__ for d in message.defects),
    )
