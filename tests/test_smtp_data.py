"""The mail after DATA over raw SMTP: stored byte for byte, dots undone, wherever TCP splits it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable

import pytest
from sqlmodel import select

from tests.harness import Relay, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Message

READER = 4 * 1024 * 1024  # what the listener's reader holds: its line length limit

# How the listener reads DATA does not depend on the database the mail goes to: SQLite only.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address})


class Client:
    """A raw SMTP client: each send is a TCP segment of its own (Nagle off)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        while True:
            while b"\r\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError(self.buffer)
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def start_data(self) -> None:
        assert self.command(b"EHLO client.customer.test").startswith(b"250")
        assert self.command(b"MAIL FROM:<carol@customer.test>").startswith(b"250")
        assert self.command(b"RCPT TO:<support@example.com>").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")

    def send_in_pieces(self, data: bytes, cuts: Iterable[int], pause: float = 0.0) -> None:
        start = 0
        for cut in [*cuts, len(data)]:
            if cut > start:
                self.sock.sendall(data[start:cut])
                start = cut
                if pause:
                    time.sleep(pause)  # paces the client so the server reads each piece apart

    def close(self) -> None:
        self.sock.close()


def undone(data: bytes) -> bytes:
    """The mail in DATA as sent up to the line of one dot, each line's leading dot removed
    (RFC 5321 4.5.2)."""
    if data.startswith(b".\r\n"):
        return b""
    body = data[: data.index(b"\r\n.\r\n") + 2]
    return b"\r\n".join(line[1:] if line.startswith(b".") else line
                        for line in body.split(b"\r\n"))


def headed(number: int, body: bytes) -> bytes:
    return (f"From: carol@customer.test\r\nTo: support@example.com\r\nSubject: data {number}\r\n"
            f"Message-ID: <data-{number}@customer.test>\r\n\r\n").encode() + body


def stored(desk: Desk, number: int) -> list[bytes]:
    with transaction(desk.engine) as session:
        shas = list(session.exec(select(Message.raw_sha256).where(
            Message.message_id == f"data-{number}@customer.test")).all())
    return [desk.blobs.get(sha) for sha in shas]


def deliver(port: int, data: bytes, cuts: Iterable[int] = (), pause: float = 0.0,
            then: bytes = b"") -> tuple[bytes, list[bytes]]:
    """DATA sent split at `cuts`, `then` right behind it; the answer to DATA and to `then`."""
    client = Client(port)
    try:
        client.start_data()
        client.send_in_pieces(data + then, cuts, pause)
        answer = client.reply()
        more = [client.reply() for _ in range(then.count(b"\r\n"))]
    finally:
        client.close()
    return answer, more


BODIES = [
    b"hello\r\n..x\r\n..\r\nmid.dle.\r\n.\r\n",
    b"..\r\n...\r\n.x\r\n\r\n.\r\n",
    b"bare\nlf\n.\nand\r\n\n.\n\r\n.\r\n",
    b"bare\rcr\r.\rx\r\n\r.\r\r\n.\r\n",
    b"nul\x00and\xff\xfe\x80\r\n.\x00\r\n..\xff\r\n.\r\n",
]


def test_every_split_of_the_end_and_of_doubled_dots_stores_the_mail_as_sent(desk: Desk) -> None:
    number = 0
    with serving(desk) as port:
        for body in BODIES:
            splits: list[list[int]] = [[i] for i in range(1, len(body))]
            splits += [list(range(1, len(body))), list(range(2, len(body), 2))]
            for cuts in splits:
                number += 1
                data = headed(number, body)
                offset = len(data) - len(body)
                answer, _ = deliver(port, data, [offset + c for c in cuts])
                assert answer.startswith(b"250"), (body, cuts, answer)
                assert stored(desk, number) == [undone(data)], (body, cuts)


def test_a_mail_that_starts_with_its_end_is_empty_and_answered(desk: Desk) -> None:
    with serving(desk) as port:
        answer, _ = deliver(port, b".\r\n")
        # Nothing to store; whatever the answer, it is one, and the listener goes on.
        assert answer[:1] in (b"2", b"4", b"5"), answer
        number = 1
        answer, _ = deliver(port, headed(number, b"still here\r\n.\r\n"))
        assert answer.startswith(b"250"), answer
        assert stored(desk, number) == [undone(headed(number, b"still here\r\n.\r\n"))]


@pytest.mark.parametrize("tail", [b"\r\n.\r\n", b"\r\n..x\r\n.\r\n", b"\r\r\n.\r\n",
                                  b"x.\r\n.\r\n", b"\r\n.x\r\n.\r\n"])
def test_the_end_split_where_the_reader_is_full_stores_the_mail_as_sent(
    desk: Desk, tail: bytes
) -> None:
    number = 0
    with serving(desk) as port:
        for first in (READER + 2, READER + 3):  # the reader gives up looking past these
            for into in range(len(tail) + 1):
                number += 1
                head = headed(number, b"")
                filler = (b"y" * 998 + b"\r\n") * ((first - into - len(head)) // 1000)
                filler += b"w" * (first - into - len(head) - len(filler))
                data = head + filler + tail
                answer, _ = deliver(port, data, [first], pause=0.05)
                assert answer.startswith(b"250"), (tail, first, into, answer)
                assert stored(desk, number) == [undone(data)], (tail, first, into)


def test_the_next_commands_in_the_segment_that_ends_the_mail_are_answered(desk: Desk) -> None:
    with serving(desk) as port:
        data = headed(1, b"last line.\r\n.\r\n")
        answer, more = deliver(port, data, then=b"RSET\r\nNOOP\r\nQUIT\r\n")
        assert answer.startswith(b"250"), answer
        assert [m[:3] for m in more] == [b"250", b"250", b"221"]
        data = headed(2, b"x\r\n.\r\n")
        answer, more = deliver(port, data, [len(data) - 2],
                               then=b"MAIL FROM:<carol@customer.test>\r\nQUIT\r\n")
        assert answer.startswith(b"250"), answer
        assert [m[:3] for m in more] == [b"250", b"221"]
    assert stored(desk, 1) == [undone(headed(1, b"last line.\r\n.\r\n"))]
    assert stored(desk, 2) == [undone(headed(2, b"x\r\n.\r\n"))]


def test_a_client_that_keeps_sending_its_mail_is_not_timed_out(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    # One second without a byte is idle; this client sends a piece every 0.3 s for 2.4 s.
    desk = desks(smtp={"port": free_port(), "timeout": 1}, outbound={"relay": relay.address})
    data = headed(1, b"".join(b"line %d of a slow mail.\r\n..dot\r\n" % i for i in range(8))
                  + b".\r\n")
    with serving(desk) as port:
        answer, _ = deliver(port, data, range(40, len(data), (len(data) - 40) // 8), pause=0.3)
    assert answer.startswith(b"250"), answer
    assert stored(desk, 1) == [undone(data)]


def test_a_client_gone_in_the_middle_of_its_mail_leaves_nothing(desk: Desk) -> None:
    with serving(desk) as port:
        for number, part in enumerate([b"half a line", b"line\r\n.", b"line\r\n.\r", b"x\r"], 1):
            client = Client(port)
            client.start_data()
            client.send_in_pieces(headed(number, part), [])
            client.close()
        answer, _ = deliver(port, headed(9, b"after them\r\n.\r\n"))
        assert answer.startswith(b"250"), answer
    with transaction(desk.engine) as session:
        assert list(session.exec(select(Message.message_id).where(
            Message.direction == "in")).all()) == ["data-9@customer.test"]
