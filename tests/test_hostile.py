"""Hostile mail through the SMTP listener: a clear outcome for each, nothing acknowledged is lost."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import itertools
import re
import resource
import smtplib
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Attachment, Message, Quarantine, Ticket

RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address})


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


def transmit(port: int, raw: bytes, sender: str = "carol@customer.test") -> tuple[int, str]:
    """One mail over SMTP; the server's reply to DATA (a refusal is a reply too)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt("support@example.com")
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPResponseException as refused:
            error = refused.smtp_error
            code, reply = refused.smtp_code, error if isinstance(error, bytes) else error.encode()
    return code, reply.decode("utf-8", "replace")


def as_received(raw: bytes) -> bytes:
    """The bytes the server gets: smtplib ends the last line when the mail does not."""
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def stored_row(desk: Desk, raw: bytes) -> Message | None:
    digest = hashlib.sha256(as_received(raw)).hexdigest()
    with transaction(desk.engine) as session:
        row = session.exec(select(Message).where(Message.raw_sha256 == digest)).first()
        session.expunge_all()
        return row


def attachments_of(desk: Desk, row: Message) -> list[Attachment]:
    with transaction(desk.engine) as session:
        found = list(session.exec(select(Attachment).where(Attachment.message_pk == row.id)).all())
        session.expunge_all()
        return found


def _is_safe(name: str) -> bool:
    return (bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")
            and not any(unicodedata.category(c)[0] == "C" for c in name)
            and not RESERVED.match(name) and len(name.encode()) <= 255)


HOSTILE_NAMES = {
    # (how the name is written in the part header) -> what must survive of it
    'filename="../../../etc/passwd"': "passwd",
    'filename="/etc/shadow"': "shadow",
    'filename="C:\\\\Windows\\\\System32\\\\evil.exe"': "evil.exe",
    "filename*=utf-8''..%2F..%2Fhome%2Fa%00b.txt": "ab.txt",
    "filename*=utf-8''bell%07%1B%5B31mred%0D%0Ax.txt": "bell[31mredx.txt",
    'filename="CON"': None,
    'filename="con.txt"': None,
    'filename="LPT1.log"': None,
    'filename="aux"': None,
    'filename="   ...   "': None,
    'filename="=?utf-8?q?=2E=2E=2Fsecret=00=2Ekey?="': "secret.key",
}


def test_hostile_file_names_are_stored_under_safe_names(desk: Desk) -> None:
    parts = "".join(
        f"--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; {header}\n"
        f"Content-Transfer-Encoding: base64\n\n{base64.b64encode(header.encode()).decode()}\n"
        for header in HOSTILE_NAMES
    )
    raw = crlf(f"""
From: Mallory <mallory@customer.test>
To: support@example.com
Subject: names
Message-ID: <names@customer.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

see attached
{parts}--b--
""")
    with serving(desk) as port:
        code, _ = transmit(port, raw)
    assert code == 250
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is not None
    names = [a.filename for a in attachments_of(desk, row)]
    assert len(names) == len(HOSTILE_NAMES)
    assert [n for n in names if not _is_safe(n)] == []
    for name, (written, kept) in zip(names, HOSTILE_NAMES.items(), strict=True):
        if kept is not None:
            assert name == kept, written


def _many_attachments(count: int) -> bytes:
    lines = ["From: carol@customer.test", "To: support@example.com", "Subject: many files",
             "Message-ID: <many@customer.test>", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="sep"', "", "--sep",
             "Content-Type: text/plain", "", "ten thousand files follow"]
    for i in range(count):
        lines += ["--sep", f'Content-Type: text/csv; name="row-{i}.csv"',
                  f'Content-Disposition: attachment; filename="row-{i}.csv"', "", f"{i},value"]
    lines += ["--sep--", ""]
    return "\r\n".join(lines).encode()


def test_ten_thousand_attachments_are_all_stored(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    # Storing them takes longer than a five-second idle timeout: a client waiting for
    # our answer to DATA is not idle, and must get its 250.
    desk = desks(smtp={"port": free_port(), "timeout": 5}, outbound={"relay": relay.address})
    raw = _many_attachments(10_000)
    with serving(desk) as port:
        code, reply = transmit(port, raw)
        confirmations = relay.wait_for(1, timeout=30)
    assert code == 250, reply
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is not None
    stored = attachments_of(desk, row)
    assert len(stored) == 10_000
    assert {a.filename for a in stored} == {f"row-{i}.csv" for i in range(10_000)}
    assert len(confirmations) == 1


def _with_file(message: email.message.EmailMessage, data: bytes, filename: str) -> bytes:
    """The mail with data attached as application/octet-stream in base64 lines of 76
    characters, as a mail program writes it. The part is written here, not by the
    email package, whose encoder and generator take seconds a copy of 50 MB."""
    boundary = "=" * 15 + hashlib.sha256(data).hexdigest()[:24]
    message.make_mixed()
    message.set_boundary(boundary)
    head = message.as_bytes(policy=email.policy.SMTP)
    closing = f"--{boundary}--\r\n".encode()
    assert head.endswith(closing)
    part = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    return (head[: -len(closing)] + part + base64.encodebytes(data).replace(b"\n", b"\r\n")
            + closing)


def test_a_50_mb_attachment_is_stored_whole_with_bounded_memory(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port(), "max_message_size": 100_000_000},
                 outbound={"relay": relay.address})
    payload = hashlib.sha256(b"seed").digest() * (50 * 1024 * 1024 // 32)
    raw = _with_file(request("[S2] big log", "the log is attached"), payload, "server.log")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with serving(desk) as port:
        code, reply = transmit(port, raw)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert code == 250, reply
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is not None
    (stored,) = attachments_of(desk, row)
    assert stored.filename == "server.log"
    assert stored.size == len(payload)
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert desk.blobs.get(stored.sha256) == payload
    # The raw mail is ~68 MB on the wire: the listener, parser and store together may hold
    # a few copies of it, not dozens.
    grown = max(0, peak - before)
    print(f"\npeak resident memory grew by {grown / 2**20:.0f} MiB for a 50 MiB attachment")
    assert grown < 1200 * 2**20


def test_a_one_megabyte_header_line_gets_a_clear_outcome(desk: Desk) -> None:
    long_subject = "Printer on fire " + "x" * (1024 * 1024)
    raw = crlf(f"""
From: carol@customer.test
To: support@example.com
Subject: {long_subject}
X-Junk: {"y" * (1024 * 1024)}
Message-ID: <long@customer.test>

body after a megabyte of header
""")
    with serving(desk) as port:
        code, reply = transmit(port, raw)
        # The server still answers afterwards.
        assert send(port, request("still there?", "hello")) == {}
    if code == 250:
        row = stored_row(desk, raw)
        assert row is not None
        assert row.subject.startswith("Printer on fire xxx")
        assert "body after a megabyte of header" in row.full_text
    else:
        assert 500 <= code < 600, reply


def test_cr_lf_in_subject_and_name_cannot_inject_confirmation_headers(
    desk: Desk, relay: Relay
) -> None:
    raw = crlf("""
From: =?utf-8?q?Eve=0D=0ABcc:_victim@evil.test?= <eve@customer.test>
To: support@example.com
Subject: =?utf-8?q?Help=0D=0ABcc:_victim@evil.test=0D=0AX-Injected:_yes?=
Message-ID: <inject@customer.test>

please help
""")
    with serving(desk) as port:
        code, _ = transmit(port, raw, "eve@customer.test")
        (confirmation,) = relay.wait_for(1)
    assert code == 250
    assert confirmation.rcpt_tos == ("eve@customer.test",)
    message = email.message_from_bytes(confirmation.raw, policy=email.policy.compat32)
    assert message["X-Injected"] is None and message["Bcc"] is None
    header_block = confirmation.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nX-Injected" not in header_block and b"\nBcc" not in header_block
    subject = str(email.message_from_bytes(confirmation.raw, policy=email.policy.default)["Subject"])
    assert "\r" not in subject and "\n" not in subject
    assert subject.endswith("Help Bcc: victim@evil.test X-Injected: yes")


def test_broken_base64_and_quoted_printable_keep_what_can_be_read(desk: Desk) -> None:
    raw = crlf("""
From: carol@customer.test
To: support@example.com
Subject: broken encodings
Message-ID: <broken-encodings@customer.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Caf=C3=A9 is =ZZ broken =3 and a soft break=
 here=
--b
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK!!!not*base64@@@===
QUJD=
RE
--b
Content-Type: text/plain; charset=utf-8; name="notes.txt"
Content-Disposition: attachment; filename="notes.txt"
Content-Transfer-Encoding: base64

bm90ZXM
--b--
""")
    with serving(desk) as port:
        code, _ = transmit(port, raw)
    assert code == 250
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is not None
    assert "Café is" in row.full_text and "broken" in row.full_text
    files = {a.filename: a for a in attachments_of(desk, row)}
    assert set(files) == {"report.pdf", "notes.txt"}
    assert desk.blobs.get(files["report.pdf"].sha256).startswith(b"%PDF-1.4")


def test_a_large_mail_with_8bit_bytes_near_long_base64_runs_is_stored_as_sent(
        desk: Desk) -> None:
    # A UTF-8 body sent as 8bit around a pasted list of checksums, and a file whose base64
    # holds a stray 8-bit byte: the text reads as written, the file as the stdlib decodes it.
    sums = "".join(hashlib.sha256(b"%d" % i).hexdigest() + "\r\n" for i in range(20_000))
    data = hashlib.sha256(b"file").digest() * 30_000
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = crlf(f"""
From: carol@customer.test
To: support@example.com
Subject: sums and a file
Message-ID: <eight-bit-runs@customer.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Rechnung 100 € — 請求書:
{sums}Grüße
--b
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64

""") + encoded[:500_000] + b"\xa0\r\n" + encoded[500_000:] + b"--b--\r\n"
    assert len(raw) > 2**20
    with serving(desk) as port:
        code, reply = transmit(port, raw)
    assert code == 250, reply
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is not None
    assert "Rechnung 100 € — 請求書:\n" in row.full_text and "Grüße" in row.full_text
    assert hashlib.sha256(b"19999").hexdigest() in row.full_text
    (stored,) = attachments_of(desk, row)
    parts = list(email.message_from_bytes(raw, policy=email.policy.default).iter_attachments())
    expected = parts[0].get_payload(decode=True)
    assert expected == data
    assert (stored.filename, stored.size) == ("report.pdf", len(data))
    assert desk.blobs.get(stored.sha256) == data


def test_mail_without_from_is_kept_and_classified(desk: Desk, relay: Relay) -> None:
    raw = crlf("""
To: support@example.com
Subject: who am I
Message-ID: <nofrom@customer.test>

no From header and no envelope sender
""")
    with serving(desk) as port:
        code, reply = transmit(port, raw, sender="")
        received = relay.settle()
    assert code == 250 and "classified" in reply
    row = stored_row(desk, raw)
    assert row is not None and row.ticket_id is None and row.kind != "request"
    assert received == []


def test_mail_without_message_id_is_deduplicated_by_its_bytes(desk: Desk) -> None:
    first = crlf("""
From: carol@customer.test
To: support@example.com
Subject: no id

once
""")
    second = first.replace(b"once", b"twice")
    with serving(desk) as port:
        replies = [transmit(port, first), transmit(port, first), transmit(port, second)]
    assert [code for code, _ in replies] == [250, 250, 250]
    assert "duplicate" in replies[1][1]
    with transaction(desk.engine) as session:
        assert len(session.exec(select(Message).where(Message.direction == "in")).all()) == 2
        assert len(session.exec(select(Ticket)).all()) == 2


def test_duplicated_headers_take_the_first_and_keep_the_mail(desk: Desk) -> None:
    raw = crlf("""
From: Carol <carol@customer.test>
From: Mallory <mallory@evil.test>
To: support@example.com
Subject: first subject
Subject: second subject
Message-ID: <dup-1@customer.test>
Message-ID: <dup-2@customer.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Type: text/html

the body
""")
    with serving(desk) as port:
        code, _ = transmit(port, raw)
    assert code == 250
    row = stored_row(desk, raw)
    assert row is not None
    assert (row.from_address, row.subject, row.message_id) == (
        "carol@customer.test", "first subject", "dup-1@customer.test")
    assert "the body" in row.full_text


def test_raw_8bit_headers_are_read_as_text(desk: Desk) -> None:
    raw = (b"From: =?utf-8?q?Jos=C3=A9?= <jose@customer.test>\r\n"
           b"To: support@example.com\r\n"
           b"Subject: Caf\xc3\xa9 au lait, Gr\xf6\xdfe 42\r\n"
           b"Message-ID: <8bit@customer.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
           b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
           b"--b\r\nContent-Type: text/plain\r\n"
           b'Content-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.txt"\r\n'
           b"\r\nCV\r\n--b--\r\n")
    with serving(desk) as port:
        code, _ = transmit(port, raw, "jose@customer.test")
    assert code == 250
    row = stored_row(desk, raw)
    assert row is not None
    # UTF-8 where it is UTF-8, and the Latin-1 bytes read as such, in one header.
    assert row.subject == "Café au lait, Größe 42"
    assert row.from_name == "José"
    assert [a.filename for a in attachments_of(desk, row)] == ["résumé.txt"]


# Property tests: generated hostile mail. Each example gets 250 and is stored, or a clear refusal.

_BYTES_WITH_BREAKS = st.binary(max_size=80).map(lambda b: b.replace(b"\x00", b""))
_VALUE = st.one_of(
    _BYTES_WITH_BREAKS,
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"=?utf-8?q?a=0D=0Ab?=", b"=?x-bogus?b?////?=", b"=?utf-8?b?", b"\r\n\tfolded",
                     b"\xff\xfe", b"a\rb\nc", b"", b"<>", b"\"unterminated"]),
)
_NAME = st.one_of(
    st.sampled_from(["Subject", "From", "To", "Cc", "Content-Type", "Content-Transfer-Encoding",
                     "Content-Disposition", "In-Reply-To", "References", "Reply-To", "Date",
                     "Auto-Submitted", "Received", "MIME-Version"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255, exclude_characters=":"),
            min_size=1, max_size=20).map(lambda t: t),
)
_CHARSETS = st.sampled_from(["utf-8", "iso-8859-1", "x-unknown", "utf-7", "iso-2022-jp",
                             "gb2312", "\"\"", "utf-8\"; x=\"", "windows-1252", ""])
_ENCODINGS = st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", "binary", "x-uue", ""])


def _header_bytes(name: str, value: bytes) -> bytes:
    return name.encode("utf-8", "surrogatepass") + b": " + value + b"\r\n"


@st.composite
def _mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
    if kind == "multipart":
        boundary = draw(st.one_of(st.text(min_size=0, max_size=70).map(
            lambda t: t.encode("utf-8", "surrogatepass")), st.just(b"b")))
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"signed", b"report",
                                        b"encrypted", b"digest"]))
        children = draw(st.lists(_mime_part(depth + 1), max_size=4))
        body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
        if draw(st.booleans()):
            body += b"--" + boundary + b"--\r\n"
        head = b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n'
        return head + b"\r\n" + body
    if kind == "message":
        return b"Content-Type: message/rfc822\r\n\r\n" + draw(_mime_part(depth + 1))
    ctype = draw(st.sampled_from([b"text/plain", b"text/html", b"application/octet-stream",
                                  b"application/ms-tnef", b"image/png", b"message/delivery-status",
                                  b"text/rfc822-headers", b"bogus", b"text/"]))
    charset = draw(_CHARSETS).encode()
    head = b"Content-Type: " + ctype + b"; charset=" + charset
    if draw(st.booleans()):
        head += b'; name="' + draw(_BYTES_WITH_BREAKS) + b'"'
    head += b"\r\nContent-Transfer-Encoding: " + draw(_ENCODINGS).encode() + b"\r\n"
    if draw(st.booleans()):
        head += b"Content-Disposition: attachment; filename*=utf-8''" + draw(
            st.sampled_from([b"..%2F..%2Fx", b"%00%01", b"CON", b"%FF%FE", b"a%ZZb"])) + b"\r\n"
    return head + b"\r\n" + draw(_BYTES_WITH_BREAKS | st.just(b"SGVsbG8=\r\n!!\r\n=4"))


_COUNTER = itertools.count()


def _assert_clear_outcome(desk: Desk, raw: bytes, code: int, reply: str) -> None:
    if code != 250:
        assert 400 <= code < 600, (code, reply)
        return
    digest = hashlib.sha256(as_received(raw)).hexdigest()
    with transaction(desk.engine) as session:
        kept = session.exec(select(Message.id).where(Message.raw_sha256 == digest)).first() or \
            session.exec(select(Quarantine.id).where(Quarantine.raw_sha256 == digest)).first()
    assert kept is not None, f"250 ({reply}) but nothing stored for {raw[:200]!r}"


def _server_still_works(port: int, desk: Desk) -> None:
    assert send(port, request("after the storm", "are you still there?")) == {}
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket).where(Ticket.subject == "after the storm")).all()
    assert len(tickets) == 1


def test_generated_hostile_headers_get_a_clear_outcome(desk: Desk) -> None:
    with serving(desk) as port:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(headers=st.lists(st.tuples(_NAME, _VALUE), max_size=12), body=_BYTES_WITH_BREAKS)
        def check(headers: list[tuple[str, bytes]], body: bytes) -> None:
            raw = _header_bytes("Message-ID", f"<gen-{next(_COUNTER)}@fuzz.test>".encode())
            raw += b"".join(_header_bytes(name, value) for name, value in headers)
            raw += b"\r\n" + body
            code, reply = transmit(port, raw)
            _assert_clear_outcome(desk, raw, code, reply)

        check()
        _server_still_works(port, desk)


def test_generated_hostile_mime_trees_get_a_clear_outcome(desk: Desk) -> None:
    with serving(desk) as port:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(tree=_mime_part(), subject=_VALUE, cut=st.one_of(st.none(), st.integers(0, 4000)))
        def check(tree: bytes, subject: bytes, cut: int | None) -> None:
            raw = _header_bytes("Message-ID", f"<tree-{next(_COUNTER)}@fuzz.test>".encode())
            raw += b"From: fuzz@customer.test\r\nTo: support@example.com\r\n"
            raw += _header_bytes("Subject", subject) + b"MIME-Version: 1.0\r\n" + tree
            if cut is not None:
                raw = raw[:cut]  # a body truncated in transit
            code, reply = transmit(port, raw)
            _assert_clear_outcome(desk, raw, code, reply)

        check()
        _server_still_works(port, desk)


def test_a_10_mib_attachment_over_smtp_arrives_whole(desk: Desk) -> None:
    payload = hashlib.sha256(b"noise").digest() + bytes(itertools.islice(
        itertools.cycle(range(256)), 10 * 2**20 - 7))  # every byte value, no round size
    message = request("[S2] crash dump", "The dump is attached.\n.profile was\n..and this\n")
    message.add_attachment(payload, maintype="application", subtype="octet-stream",
                           filename="core.dump")
    raw = message.as_bytes(policy=email.policy.SMTP)
    with serving(desk) as port:
        code, reply = transmit(port, raw)
    assert code == 250, reply
    row = stored_row(desk, raw)  # found by the SHA-256 of the mail as sent
    assert row is not None and row.ticket_id is not None
    assert "\n.profile was\n..and this" in row.full_text
    (stored,) = attachments_of(desk, row)
    assert (stored.filename, stored.size) == ("core.dump", len(payload))
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert hashlib.sha256(desk.blobs.get(stored.sha256)).digest() == hashlib.sha256(payload).digest()


def test_too_much_data_or_a_line_too_long_is_refused_once_the_mail_is_in(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port(), "max_message_size": 200_000},
                 outbound={"relay": relay.address})
    too_much = request("too much", ("x" * 70 + "\n") * 3000).as_bytes()
    too_long = crlf(f"""
From: carol@customer.test
To: support@example.com
Subject: too long
Message-ID: <too-long@customer.test>

{"z" * (5 * 2**20)}
""")
    with serving(desk) as port:
        # No SIZE declared: the listener finds out while the data comes.
        assert transmit(port, too_much)[0] == 552
        assert transmit(port, too_long)[0] == 500
        code, reply = transmit(port, request("[S3] after those", "fine").as_bytes())
    assert code == 250, reply
    with transaction(desk.engine) as session:
        assert [t.subject for t in session.exec(select(Ticket)).all()] == ["after those"]
