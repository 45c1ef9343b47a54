"""MIME bytes for the mails we send, written directly: headers made safe, parts encoded.

The stdlib's EmailMessage parses every header it is given back into typed objects; for
mail whose every value we produce ourselves that costs more than the rest of ingest, so
the few shapes we send are written here instead (RFC 5322, 2045-2047, 2231).
"""

from __future__ import annotations

import base64
import quopri
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from email.header import Header
from email.utils import formataddr
from urllib.parse import quote

_UNSAFE = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")
_TOKEN_SAFE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_LINE = 78


def one_line(value: str) -> str:
    """No CR, LF or other control character can reach a header: no header injection."""
    return " ".join(_UNSAFE.sub(" ", value).split())


def _fold(name: str, value: str) -> str:
    """An ASCII header folded at spaces so no line passes 78 characters where it can help."""
    line = f"{name}: "
    lines: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > _LINE and line.strip() and not line.endswith(": "):
            lines.append(line.rstrip())
            line = " "
        line += word + " "
    lines.append(line.rstrip())
    return "\r\n".join(lines)


def header(name: str, value: str) -> str:
    """One header line: unstructured text, RFC 2047-encoded when it is not ASCII."""
    value = one_line(value)
    if value.isascii():
        return _fold(name, value)
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}"


def address(name: str, addr: str) -> str:
    """'Display Name <addr>', the name quoted or encoded as RFC 5322/2047 want it."""
    name = one_line(name)
    addr = one_line(addr).replace(" ", "")
    if not name:
        return addr
    if addr.isascii():
        return formataddr((name, addr), charset="utf-8")
    # An internationalised address (RFC 6532) goes as it is; the name is still encoded.
    return f"{Header(name, 'utf-8').encode()} <{addr}>"


def address_header(name: str, addresses: Sequence[str]) -> str:
    return f"{name}: " + ",\r\n ".join(addresses)


def _param(key: str, value: str) -> str:
    """A MIME parameter; RFC 2231 (utf-8'') for a value that is not plain ASCII."""
    value = one_line(value)
    if value.isascii() and '"' not in value and "\\" not in value:
        return f'{key}="{value}"'
    return f"{key}*=utf-8''{quote(value, safe='')}"


def _text_part(subtype: str, body: str) -> bytes:
    data = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = quopri.encodestring(data).replace(b"\n", b"\r\n")
    if not encoded.endswith(b"\r\n"):
        encoded += b"\r\n"
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + encoded


def _file_part(filename: str, content_type: str, pieces: Iterable[bytes]) -> Iterator[bytes]:
    if not _TOKEN_SAFE.match(content_type.replace("/", "", 1)) or content_type.count("/") != 1:
        content_type = "application/octet-stream"
    if content_type.startswith(("message/", "multipart/")):
        # Sent as opaque bytes: a nested message would need its own transfer rules.
        content_type = "application/octet-stream"
    yield (
        f"Content-Type: {content_type}; {_param('name', filename)}\r\n"
        f"Content-Disposition: attachment; {_param('filename', filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    yield from _base64(pieces)


# Bytes per base64 line of 76 characters (RFC 2045 6.8).
_LINE_BYTES = 57


def _base64(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Base64 lines of a file read in pieces, as one encoding of the whole would give."""
    rest = b""
    for piece in pieces:
        data = rest + piece if rest else piece
        whole = len(data) - len(data) % _LINE_BYTES
        if whole:
            yield base64.encodebytes(data[:whole]).replace(b"\n", b"\r\n")
        rest = data[whole:]
    if rest:
        yield base64.encodebytes(rest).replace(b"\n", b"\r\n")


def _boundary() -> str:
    return f"=_mailgate_{uuid.uuid4().hex}"


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    boundary = _boundary()
    # RFC 2046 5.1.1: the CRLF before each delimiter belongs to the delimiter.
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        out.append(f"--{boundary}\r\n".encode())
        out.append(part)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


_MIME_VERSION = b"\r\nMIME-Version: 1.0\r\n"


def build(headers: Sequence[str], text: str, html: str) -> bytes:
    """The whole mail but its files: our header lines, then text and HTML alternatives."""
    body = _multipart("alternative", [_text_part("plain", text), _text_part("html", html)])
    head = "\r\n".join([*headers, "MIME-Version: 1.0"]) + "\r\n"
    return head.encode("utf-8") + body  # utf-8 only for an SMTPUTF8 address


def with_files(raw: bytes, files: Sequence[tuple[str, str, Iterable[bytes]]]) -> Iterator[bytes]:
    """A mail that build() made, with files attached, in pieces: each file is read and
    encoded as it is sent, never held whole."""
    if not files:
        yield raw
        return
    # No header value of ours holds a line break, so the first such line is the one build() wrote.
    cut = raw.index(_MIME_VERSION) + len(_MIME_VERSION)
    boundary = _boundary()
    yield raw[:cut]
    yield f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
    yield f"--{boundary}\r\n".encode()
    yield raw[cut:]
    for filename, content_type, pieces in files:
        yield f"\r\n--{boundary}\r\n".encode()
        yield from _file_part(filename, content_type, pieces)
    yield f"\r\n--{boundary}--\r\n".encode()
