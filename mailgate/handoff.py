"""`mailgate deliver` through a running `mailgate serve`: one SMTP exchange on loopback.

A new process pays most of a second to load the database layer; `serve` has it loaded.
When it answers, it stores the mail by the same ingest path and its reply decides the
exit code; when nothing answers, `deliver` ingests in its own process.

An MTA starts one process per mail, so this path loads only the interpreter's own
socket type: the SMTP client here is the few commands one mail needs (smtplib would
load TLS, the email package and more, for nothing on loopback), and the socket module's
wrapper around that type (enums of its constants, selectors) takes longer to load than
the whole exchange takes.
"""

from __future__ import annotations

import _socket
import sys

from mailgate.exitcodes import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL

# The EHLO name `deliver` uses, so the listener records the mail's route as "pipe".
HELO_NAME = "mailgate-deliver"
TIMEOUT = 120.0  # seconds for each answer; storing a large mail takes a while


class _Refused(Exception):
    """The server answered a command with something else than the expected code."""

    def __init__(self, code: int, text: str, recipient: bool = False) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text, self.recipient = code, text, recipient


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host  # noqa: S104


def data_lines(raw: bytes) -> bytes:
    """The mail as DATA carries it: CRLF line ends, a dot doubled at a line's start,
    ended by a line holding one dot."""
    body = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class _Client:
    """One SMTP conversation, a command and its (possibly multiline) reply at a time."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            while b"\n" not in self.pending:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the connection closed")
                self.pending += chunk
            line, _, self.pending = self.pending.partition(b"\n")
            line = line.rstrip(b"\r")
            if len(line) < 3 or not line[:3].isdigit():
                raise ConnectionError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def send(self, data: bytes, expect: int, recipient: bool = False) -> str:
        self.sock.sendall(data)
        code, text = self.reply()
        if code != expect:
            raise _Refused(code, text, recipient)
        return text


def _exchange(client: _Client, raw: bytes, recipient: str, sender: str) -> None:
    client.send(f"EHLO {HELO_NAME}\r\n".encode(), 250)
    envelope = "" if sender == "<>" else sender
    options = f" SIZE={len(raw)}"
    if not (envelope + recipient).isascii():
        options += " SMTPUTF8"
    client.send(b"MAIL FROM:<" + envelope.encode() + b">" + options.encode() + b"\r\n", 250)
    client.send(b"RCPT TO:<" + recipient.encode() + b">\r\n", 250, recipient=True)
    client.send(b"DATA\r\n", 354)
    client.send(data_lines(raw), 250)


def _connect(host: str, port: int) -> _socket.socket:
    """A connection to the first of the host's addresses that takes one, as
    socket.create_connection makes it."""
    # An ASCII name as bytes: a str is encoded by the IDNA codec, which loads the
    # Unicode tables, to reach 127.0.0.1.
    name: str | bytes = host.encode() if host.isascii() else host
    error = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0,
                                                               _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(TIMEOUT)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def hand_over(host: str, port: int, raw: bytes, recipient: str, sender: str) -> int | None:
    """The exit code once `serve` has answered for the mail; None when no server answers."""
    try:
        sock = _connect(_loopback(host), port)
    except OSError:
        return None
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        client = _Client(sock)
        try:
            greeting, _ = client.reply()
        except OSError:
            return None
        if greeting != 220:  # e.g. too many connections: stored here instead
            return None
        try:
            _exchange(client, raw, recipient, sender)
        except _Refused as exc:
            print(f"mailgate deliver: {exc.code} {exc.text}", file=sys.stderr)
            if exc.recipient:
                return EX_NOUSER if exc.code >= 500 else EX_TEMPFAIL
            return EX_DATAERR if exc.code >= 500 else EX_TEMPFAIL
        except OSError as exc:
            # Cut off before the answer: perhaps stored, perhaps not. The MTA tries again,
            # and a stored copy makes the retry a duplicate, stored once.
            print(f"mailgate deliver: the server stopped answering: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
        try:
            client.send(b"QUIT\r\n", 221)
        except (OSError, _Refused):
            pass  # the mail is stored; how the server says goodbye changes nothing
    finally:
        sock.close()
    print("mailgate deliver: handed to the running server", file=sys.stderr)
    return EX_OK
