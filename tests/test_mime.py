"""The mails we write read back right in a standard parser, whatever went into them."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import make_settings
from ticketing import mime
from ticketing.addresses import Address
from ticketing.blobs import FolderBlobs, digest
from ticketing.compose import FileToSend, compose


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_hostile_subject_and_names_cannot_inject_headers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    mail = compose(
        settings,
        to=[Address("carol@customer.test", "Carol\r\nBcc: victim@evil.test")],
        subject="Help\r\nBcc: victim@evil.test\r\n\r\nInjected body",
        text="body", html="<p>body</p>", now=datetime(2026, 3, 3, tzinfo=UTC),
    )
    message = _parse(mail.raw)
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"]
    assert message["Subject"] == "Help Bcc: victim@evil.test Injected body"
    assert mail.recipients == ("carol@customer.test",)
    assert all(len(line) <= 998 for line in mail.raw.split(b"\r\n"))


def test_non_ascii_everywhere_round_trips(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    data = bytes(range(256)) * 10
    blobs = FolderBlobs(tmp_path / "blobs", durable=False)
    for content in (data, b"hello\n"):
        blobs.put(None, digest(content), content)
    long_subject = "Überweisung fehlgeschlagen: " + "sehr lange Betreffzeile " * 12
    mail = compose(
        settings,
        to=[Address("jose@customer.test", "José Müller, Jr.")],
        cc=[Address("li@customer.test", "李雷")],
        subject=long_subject,
        text="Grüße aus Köln\nZeile zwei\n", html="<p>Grüße</p>",
        now=datetime(2026, 3, 3, tzinfo=UTC),
        references=[f"id{i}@x.test" for i in range(40)],
        attachments=[FileToSend("Größe \"quoted\" 報告.pdf", "application/pdf", digest(data)),
                     FileToSend("plain.txt", "text/plain", digest(b"hello\n"))],
    )
    raw = b"".join(mime.with_files(mail.raw, [
        (f.filename, f.content_type, blobs.chunks(f.sha256)) for f in mail.files]))
    message = _parse(raw)
    assert message["Subject"] == " ".join(long_subject.split())
    assert message["To"].addresses[0].display_name == "José Müller, Jr."
    assert message["Cc"].addresses[0].display_name == "李雷"
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Grüße aus Köln\nZeile zwei\n"
    files = {part.get_filename(): part.get_payload(decode=True) for part in message.iter_attachments()}
    assert files["Größe \"quoted\" 報告.pdf"] == data
    assert files["plain.txt"] == b"hello\n"
    refs = message["References"].split()
    assert len(refs) == 20 and refs[0] == "<id0@x.test>" and refs[-1] == "<id39@x.test>"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
