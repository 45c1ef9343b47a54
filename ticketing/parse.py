"""Raw bytes to one normalized record; mail-parser is confined here, the stdlib backs it up."""

from __future__ import annotations

import binascii
import email
import email.parser
import email.policy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses

from ticketing.addresses import Address, normalize
from ticketing.filenames import safe_filename
from ticketing.htmltext import html_to_text
from ticketing.tnef import unpack_tnef

log = logging.getLogger(__name__)



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
        value = decode_bytes(value.encode("utf-8", "surrogateescape"), "utf-8")
    elif "\x1b" in value:  # raw ISO-2022-JP, as old Japanese clients write headers
        value = decode_bytes(value.encode("ascii", "replace"), "iso-2022-jp")
    if "=?" in value:
        try:
            words = decode_header(value)
        except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
            return value
        value = "".join(
            decode_bytes(word, charset or "us-ascii") if isinstance(word, bytes) else word
            for word, charset in words
        )
    return value


# What senders label one charset but write in another: first its superset (WHATWG
# Encoding reads these labels so), then the label, then UTF-8. Japanese mail labelled
# ISO-2022-JP is often EUC-JP or Shift_JIS on the wire.
_READ_AS: dict[str, tuple[str, ...]] = {
    "us-ascii": ("utf-8",), "ascii": ("utf-8",),  # 8-bit under an ASCII label: mislabelled
    "iso-8859-1": ("cp1252",), "latin1": ("cp1252",),
    "gb2312": ("gb18030",), "gbk": ("gb18030",), "x-gbk": ("gb18030",),
    "ks_c_5601-1987": ("cp949",), "euc-kr": ("cp949",),
    "shift_jis": ("cp932",), "sjis": ("cp932",),
    "iso-2022-jp": ("iso2022_jp_ext", "euc_jp", "cp932"),
    "unicode-1-1-utf-7": ("utf-7",), "uft-8": ("utf-8",),
    "iso-8859-8-i": ("iso-8859-8",), "x-mac-cyrillic": ("mac-cyrillic",),
}


# What UTF-8 decoding with surrogateescape leaves of each byte that is not UTF-8.
_ESCAPED = re.compile("[\udc80-\udcff]")


def _cp1252_byte(match: re.Match[str]) -> str:
    byte = ord(match.group()) - 0xDC00
    return bytes([byte]).decode("cp1252", "ignore") or chr(byte)


def _utf8_then_cp1252(data: bytes) -> str:
    """UTF-8, with each byte that is not UTF-8 read as cp1252 (latin-1 where it has none)."""
    return _ESCAPED.sub(_cp1252_byte, data.decode("utf-8", "surrogateescape"))


def decode_bytes(data: bytes, charset: str) -> str:
    """Bytes in a declared charset, read as well as they can be; never fails.

    A part mixing UTF-8 with cp1252 (a reply pasted into a message) keeps both readable.
    """
    charset = (charset or "utf-8").strip().strip("\"'").lower()
    for candidate in (*_READ_AS.get(charset, ()), charset, "utf-8"):
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return _utf8_then_cp1252(data)


def _one_line(value: str) -> str:
    return re.sub(r"[\r\n\t]+\s*", " ", value).replace("\x00", "").strip()


def _ids(value: str) -> tuple[str, ...]:
    found = _MSGID.findall(value)
    bare = value.split()
    if not found and len(bare) == 1:
        found = [bare[0].strip("<>")]  # a bare id without brackets, as some clients write
    # Ids go back out in our In-Reply-To and References: nothing that is not printable.
    return tuple(dict.fromkeys(i for i in found if i.isprintable() and len(i) <= 900))


# What one mail may ask the database about its thread: the first ids (the root end)
# and the last (the nearest) of its References are enough to find the ticket
# (RFC 5322 3.6.4); a header of 70,000 ids must not become a 70,000-term query.
_THREAD_ENDS = 30


def _ends(ids: tuple[str, ...]) -> tuple[str, ...]:
    return ids if len(ids) <= 2 * _THREAD_ENDS else ids[:_THREAD_ENDS] + ids[-_THREAD_ENDS:]


# A Q-encoded word in a display name may carry only letters, digits and "!*+-/=_"
# (RFC 2047 5(3)); a hostile one carries ":", "@" or "," to smuggle in an address.
_Q_WORD = re.compile(r"=\?[^?\s]+\?[qQ]\?[^?\s]*\?=")
_SPECIALS = re.compile(r'[()<>@,;:\\".\[\]]')


def _unfold(value: str) -> str:
    """A header's value on one line (RFC 5322 2.2.3): a line break before white space is
    removed, whatever the line ends (CRLF from SMTP and IMAP, LF from files)."""
    return re.sub(r"[\r\n]+", " ", re.sub(r"\r?\n(?=[ \t])", "", value))


def _addresses(values: list[str]) -> tuple[Address, ...]:
    found: dict[str, Address] = {}
    # Split first, decode after: a decoded name may hold a comma or a colon.
    safe = [_Q_WORD.sub(lambda w: _SPECIALS.sub(lambda c: f"={ord(c[0]):02X}", w[0]), _unfold(v))
            for v in values]
    for name, addr in getaddresses(safe):
        address = normalize(text_of(addr))
        if address and address not in found:
            found[address] = Address(address, _one_line(text_of(name))[:200])
    return tuple(found.values())


def _decode_part(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset() or "utf-8"
    except (LookupError, UnicodeError, ValueError):
        charset = "utf-8"
    return decode_bytes(payload, charset)


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
        if "\ufffd" in str(name):
            # compat32 shows raw 8-bit bytes in a parameter as U+FFFD: read the raw header.
            name = _readable_headers(part).get_filename() or ""
    except (LookupError, UnicodeError, ValueError):
        name = ""
    if isinstance(name, tuple):  # an RFC 2231 value the stdlib could not collapse
        name = email.utils.collapse_rfc2231_value(name)
    return text_of(str(name))


def _readable_headers(part: Message) -> Message:
    """The part's Content-Type and -Disposition with raw 8-bit bytes decoded (UTF-8, else cp1252)."""
    stub = Message()
    for key, value in part.raw_items():
        if key.lower() in ("content-type", "content-disposition"):
            stub[key] = decode_bytes(str(value).encode("utf-8", "surrogateescape"), "utf-8")
    return stub


# Machine-readable report parts (RFC 6522) and header excerpts: kept as files, not as text.
_REPORT_PARTS = {
    "message/delivery-status": "delivery-status.txt",
    "message/global-delivery-status": "delivery-status.txt",
    "message/disposition-notification": "disposition-notification.txt",
    "message/global-disposition-notification": "disposition-notification.txt",
    "message/feedback-report": "feedback-report.txt",
    "text/rfc822-headers": "headers.txt",
    "message/global-headers": "headers.txt",
}
_ENCLOSED = ("message/rfc822", "message/global")  # RFC 6532: global is rfc822 in UTF-8
_TNEF = ("application/ms-tnef", "application/vnd.ms-tnef")


def _payload_bytes(part: Message) -> bytes:
    """A leaf's decoded bytes; for a part the parser split into blocks, the blocks again."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return b"\n".join(p.as_bytes(policy=email.policy.compat32) for p in payload
                          if isinstance(p, Message))
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if isinstance(payload, str) and encoding == "base64":
        # Straight from the text: the stdlib makes three more copies of the part on the
        # way (bytes, its lines, joined), a lot for an attachment of many megabytes. What
        # this cannot read exactly as the stdlib does (missing padding, 8-bit bytes) it
        # leaves to the stdlib.
        try:
            return binascii.a2b_base64(payload)
        except (binascii.Error, ValueError):
            pass
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


class _Walk:
    """One pass over the MIME tree: text and HTML bodies, every attachment."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []

    def part(self, part: Message, depth: int = 0) -> None:
        ctype = part.get_content_type()
        if ctype in _ENCLOSED:
            self._enclosed(part)
        elif ctype in _REPORT_PARTS:
            self._attach(part, _filename(part) or _REPORT_PARTS[ctype], ctype, _payload_bytes(part))
        elif part.is_multipart():
            payload = part.get_payload()
            for child in payload if isinstance(payload, list) and depth < _MAX_DEPTH else []:
                if isinstance(child, Message):
                    self.part(child, depth + 1)
        elif ctype.startswith("multipart/"):
            # A multipart whose boundary never appears: its text is all there is to read.
            self.text.append(_decode_part(part))
        else:
            self._leaf(part, ctype)

    def _leaf(self, part: Message, ctype: str) -> None:
        disposition = (part.get_content_disposition() or "").lower()
        name = _filename(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment":
            bodies = self.text if ctype == "text/plain" else self.html
            # A named text part is an attachment, unless it is the first body of its kind
            # (a one-part mail with a name= parameter): the stdlib's get_body() reads so too.
            if not name or not bodies:
                bodies.append(_decode_part(part))
                return
        data = _payload_bytes(part)
        if (ctype in _TNEF or name.lower() == "winmail.dat") and self._tnef(data):
            return
        if not name and ctype.startswith("text/") and disposition != "attachment":
            # Another inline text kind (text/enriched, text/calendar...): read it as text.
            self.text.append(_decode_part(part))
            return
        self._attach(part, name, ctype, data)

    def _attach(self, part: Message, name: str, ctype: str, data: bytes) -> None:
        disposition = (part.get_content_disposition() or "").lower()
        content_id = _one_line(str(part.get("Content-ID", ""))).strip("<>")
        self.attachments.append(ParsedAttachment(
            filename=safe_filename(name, ctype),
            content_type=ctype,
            data=data,
            inline=disposition == "inline" or bool(content_id and not name),
            content_id=content_id,
        ))

    def _enclosed(self, part: Message) -> None:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        subject = ""
        if isinstance(inner, Message):
            data = inner.as_bytes(policy=email.policy.compat32)
            subject = _one_line(text_of(inner.get("Subject", "")))
        else:
            data = _payload_bytes(part)
        name = _filename(part) or (subject + ".eml" if subject else "")
        self._attach(part, name, "message/rfc822", data)

    def _tnef(self, data: bytes) -> bool:
        """Unpack winmail.dat into its files and body; False keeps the blob as it came."""
        unpacked = unpack_tnef(data)
        if unpacked is None or not any(unpacked):
            return False
        text, html, files = unpacked
        if text:
            self.text.append(text)
        if html:
            self.html.append(html)
        for filename, kind, content in files:
            self.attachments.append(ParsedAttachment(safe_filename(filename, kind), kind, content))
        return True


def _headers(message: Message) -> tuple[tuple[str, str], ...]:
    # raw_items(): compat32's get() turns raw 8-bit bytes into U+FFFD before we can read them.
    return tuple((str(key).lower(), text_of(value)) for key, value in message.raw_items())


def _garbled(text: str) -> int:
    """Signs of a body read in the wrong charset: U+FFFD, or ISO-2022-JP escapes left in."""
    return text.count("\ufffd") + text.count("\x1b")


def _tree(raw: bytes, message: Message) -> Message:
    """The MIME tree to walk: compat32 keeps a folded boundary parameter folded, so its
    parts are never found; the default policy unfolds it (RFC 5322 2.2.3)."""
    if not any(isinstance(d, email.errors.StartBoundaryNotFoundDefect)
               for part in message.walk() for d in part.defects):
        return message
    try:
        unfolded = email.message_from_bytes(raw, policy=email.policy.default)
        unfolded.get_body()  # reads the headers the walk reads; a parser bug shows here
    except Exception:
        return message
    return unfolded


# The parser is fed this much at a time: email.message_from_bytes reads the whole mail
# through one text buffer, four bytes a character, five times a large mail's size.
_FEED = 1 << 16


def message_from_bytes(raw: bytes) -> Message:
    """The MIME tree of a mail, as email.message_from_bytes (compat32) reads it."""
    feeder = email.parser.BytesFeedParser(policy=email.policy.compat32)
    for start in range(0, len(raw), _FEED):
        feeder.feed(raw[start : start + _FEED])
    message = feeder.close()
    assert isinstance(message, Message)
    return message


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse with mail-parser; where it fails or reads less than the message holds, the stdlib."""
    mp_text = mp_subject = ""
    message: Message | None = None
    try:
        import mailparser

        parsed = mailparser.MailParser(message_from_bytes(raw))
        message = parsed.message
        mp_text = "\n".join(parsed.text_plain or [])
        mp_subject = _one_line(text_of(parsed.subject or ""))
    except Exception as exc:
        log.info("mail-parser failed (%s: %s); using the stdlib reading", type(exc).__name__, exc)
    if not isinstance(message, Message):
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    # One walk of the same tree finds what mail-parser leaves out: enclosed messages,
    # TNEF, report parts, bodies it reads as empty (its known gaps on real mail).
    walk = _Walk()
    walk.part(_tree(raw, message))
    walked_text = "\n".join(t for t in walk.text if t.strip())
    html = "\n".join(walk.html)
    parser = "mail-parser"
    text = mp_text
    if len(mp_text.strip()) < len(walked_text.strip()) or _garbled(mp_text) > _garbled(walked_text):
        text, parser = walked_text, "stdlib"
    if not text.strip() and html.strip():
        text = html_to_text(html)
    headers = _headers(message)

    def every(name: str) -> list[str]:
        return [value for key, value in headers if key == name]

    def raw_all(name: str) -> list[str]:
        return [str(value) for key, value in message.raw_items() if key.lower() == name]

    sender = _addresses(raw_all("from"))
    # Headers are read by our own decoder (charset supersets, raw 8-bit): mail-parser
    # turns an encoded word in a label narrower than its bytes into mojibake.
    subject = _one_line(next(iter(every("subject")), "")) or mp_subject
    return ParsedMail(
        message_id=next(iter(_ids(next(iter(every("message-id")), ""))), ""),
        subject=subject,
        sender=sender[0] if sender else None,
        to=_addresses(raw_all("to")),
        cc=_addresses(raw_all("cc")),
        reply_to=_addresses(raw_all("reply-to")),
        delivered_to=tuple(normalize(v) for v in every("delivered-to")),
        in_reply_to=_ends(_ids(next(iter(every("in-reply-to")), ""))),
        references=_ends(tuple(ref for v in every("references") for ref in _ids(v))),
        text=text.replace("\r\n", "\n").replace("\x00", ""),
        html=html.replace("\x00", ""),
        attachments=tuple(walk.attachments),
        headers=headers,
        content_type=message.get_content_type(),
        parser=parser,
        defects=tuple(type(d).__name__ for d in message.defects),
    )
