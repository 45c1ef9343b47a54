"""A large mail reads as the stdlib reads it, part by part, whatever its lines look like."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import random
from email.message import Message

import pytest

from ticketing.parse import message_from_bytes, parse_mail


def _lines(data: bytes, end: bytes = b"\r\n") -> bytes:
    text = base64.b64encode(data)
    return end.join(text[i : i + 76] for i in range(0, len(text), 76)) + end


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _leaves(message: Message) -> list[tuple[str, str | None, object]]:
    return [(part.get_content_type(), part.get_filename(), part.get_payload(decode=True))
            for part in message.walk() if not part.is_multipart()]


def _assert_read_as_the_stdlib_reads(raw: bytes) -> None:
    ours = message_from_bytes(raw)
    stdlib = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert _leaves(ours) == _leaves(email.message_from_bytes(raw, policy=email.policy.default))
    assert ours.as_bytes(policy=email.policy.compat32) == stdlib.as_bytes(
        policy=email.policy.compat32)


def _file(data: bytes, name: str, end: bytes = b"\r\n") -> bytes:
    return (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=" + name.encode() + b"\r\n\r\n"
            + _lines(data, end))


ONE = _lines(_data(700_000, 1))
TWO = _lines(_data(600_000, 2))
HEAD = b"From: carol@customer.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
MIXED = b"Content-Type: multipart/mixed; boundary=QUFBQUFB\r\n\r\n"

ATTACKS = {
    # Lines that look like a stand-in token of ours, in a header and in a body.
    "marker text": HEAD + b"X-Note: mailgate" + b"0" * 32 + b"x0x\r\n" + MIXED
    + b"--QUFBQUFB\r\nContent-Type: text/plain\r\n\r\nmailgate" + b"f" * 32 + b"x1x\r\n"
    + b"--QUFBQUFB\r\n" + _file(_data(900_000, 3), "a.bin") + b"--QUFBQUFB--\r\n",
    "runs in the preamble and the epilogue": HEAD + MIXED + ONE + b"--QUFBQUFB\r\n"
    + _file(b"small", "a.bin") + b"--QUFBQUFB--\r\n" + TWO,
    "two runs in one part, a line between": HEAD + MIXED + b"--QUFBQUFB\r\n"
    + _file(_data(700_000, 4), "a.bin") + b"!not base64\r\n" + TWO + b"--QUFBQUFB--",
    "padding and stray characters mid-part": HEAD + MIXED + b"--QUFBQUFB\r\n"
    + _file(_data(700_000, 5), "a.bin") + b"QQ==\r\n====\r\nA\r\n" + TWO + b"--QUFBQUFB--\r\n",
    "no close boundary": HEAD + MIXED + b"--QUFBQUFB\r\n" + _file(_data(700_000, 6), "a.bin")
    + TWO,
    "enclosed mail and digest": HEAD + MIXED + b"--QUFBQUFB\r\nContent-Type: message/rfc822\r\n\r\n"
    + b"Subject: inner\r\nContent-Type: multipart/digest; boundary=IN\r\n\r\n--IN\r\n" + ONE
    + b"--IN--\r\n--QUFBQUFB\r\nContent-Type: message/rfc822\r\n\r\n" + TWO + b"--QUFBQUFB--\r\n",
    "lines ended by CR alone": HEAD.replace(b"\r\n", b"\r") + b"Content-Type: text/plain\r\r"
    + _lines(_data(900_000, 7), b"\r"),
    "lines ended by LF": HEAD.replace(b"\r\n", b"\n") + b"Content-Type: text/plain\n\n"
    + _lines(_data(900_000, 8), b"\n"),
    "a lone CR inside a run": HEAD + b"Content-Type: application/pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + ONE[:300_000] + b"QUFB\rQUFB\r\n" + ONE[300_000:]
    + TWO,
}


@pytest.mark.parametrize("name", ATTACKS)
def test_long_base64_runs_leave_every_part_as_the_stdlib_reads_it(name: str) -> None:
    raw = ATTACKS[name]
    assert len(raw) >= 1 << 20
    _assert_read_as_the_stdlib_reads(raw)


def test_hundreds_of_runs_in_one_part_and_in_many_parts_come_back_in_place() -> None:
    line = b"QUJD" * 19 + b"\r\n"
    one_part = b"".join(line * 900 + b"!%d\r\n" % i for i in range(40))
    raw = (HEAD + MIXED + b"--QUFBQUFB\r\nContent-Type: text/plain\r\n\r\n" + one_part
           + b"".join(b"--QUFBQUFB\r\n" + _file(_data(70_000, i), f"f{i}.bin") for i in range(20))
           + b"--QUFBQUFB--\r\n")
    _assert_read_as_the_stdlib_reads(raw)
    files = parse_mail(raw).attachments
    assert [(f.filename, f.data) for f in files] == [
        (f"f{i}.bin", _data(70_000, i)) for i in range(20)]


def test_an_8bit_body_around_a_long_run_keeps_its_text() -> None:
    # A list of checksums pasted between two lines of UTF-8 text sent as 8bit.
    sums = b"".join(hashlib.sha256(b"%d" % i).hexdigest().encode() + b"\n" for i in range(20_000))
    raw = (b"From: carol@customer.test\nSubject: sums\nMIME-Version: 1.0\n"
           b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
           + "Rechnung 100 € — 請求書:\n".encode() + sums + "Grüße\n".encode())
    _assert_read_as_the_stdlib_reads(raw)
    text = parse_mail(raw).text
    assert text.startswith("Rechnung 100 € — 請求書:\n")
    assert text == raw.split(b"\n\n", 1)[1].decode()


def test_an_8bit_byte_between_runs_adds_no_bytes_to_the_file() -> None:
    raw = (b"From: carol@customer.test\r\nSubject: file\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + ONE + b"\xa0\r\n" + TWO)
    _assert_read_as_the_stdlib_reads(raw)
    stdlib = email.message_from_bytes(raw, policy=email.policy.default).get_payload(decode=True)
    (stored,) = parse_mail(raw).attachments
    assert stored.data == stdlib
