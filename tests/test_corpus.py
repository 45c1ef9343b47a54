"""Every single message of the shared corpus, sent through the SMTP listener, is stored and readable."""

from __future__ import annotations

import csv
import email
import email.parser
import email.policy
import email.utils
import hashlib
import re
import smtplib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from sqlmodel import select
from tnefparse import TNEF

from tests.conftest import BACKENDS, make_settings
from tests.databases import PostgresPool, copy_sqlite
from tests.harness import Relay, request, send, serving
from tests.servers import corpus_dir, free_port, postgres_url
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Attachment, Quarantine
from ticketing.models import Message as MessageRow

# The corpus goes through serve once per backend for all these tests: one worker runs the
# tests of each backend, and the two backends can run on two workers at once.
BACKEND_GROUPS = [pytest.param(backend, marks=pytest.mark.xdist_group(f"corpus-{backend}"))
                  for backend in BACKENDS]

# Files that are no RFC 5322 message (MANIFEST.tsv says so): not sent.
NOT_MESSAGES = {
    "tnef_winmail_blob(not_rfc5322)",
    "body_only(no_headers)",
    "mbox_container(not_single_message)",
    "outlook_msg_cfb(not_rfc5322)",
}


def _manifest(path: Path, column: str) -> dict[str, set[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {row["local_path"]: set(row[column].split(",")) for row in rows}


def corpus_files() -> dict[str, set[str]]:
    """Every single message in the corpus (loops/ too), with its categories."""
    root = corpus_dir()
    files = {path: cats for path, cats in _manifest(root / "MANIFEST.tsv", "category_guess").items()
             if not cats & NOT_MESSAGES}
    for path, kind in _manifest(root / "loops" / "MANIFEST.tsv", "kind").items():
        files["loops/" + path] = kind
    return files


def wire_bytes(raw: bytes) -> bytes:
    """The file as SMTP carries it: CRLF line ends, the last line ended too (smtplib adds
    that CRLF when it is missing, and does the dot-stuffing)."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


@dataclass
class CorpusRun:
    """What one `serve` made of the whole corpus, read back from its database."""

    backend: str
    desk: Desk
    sent: dict[str, bytes]  # corpus path -> the bytes sent
    replies: dict[str, tuple[int, str]]
    seconds: float
    by_sha: dict[str, MessageRow] = field(default_factory=dict)
    quarantined: list[Quarantine] = field(default_factory=list)
    files_of: dict[int, list[Attachment]] = field(default_factory=dict)

    def stored(self, path: str) -> MessageRow:
        """The row that holds this file, or the one it is a duplicate of (same Message-ID)."""
        row = self.by_sha.get(hashlib.sha256(self.sent[path]).hexdigest())
        if row is None:
            message_id = _message_id(self.sent[path])
            row = next((r for r in self.by_sha.values() if message_id and r.message_id == message_id),
                       None)
        assert row is not None, f"{path}: no stored message ({self.replies[path]})"
        return row

    def attachments(self, path: str) -> list[Attachment]:
        row = self.stored(path)
        assert row.id is not None
        return self.files_of.get(row.id, [])

    def names(self, path: str) -> list[str]:
        return [a.filename for a in self.attachments(path)]


def _database(request: pytest.FixtureRequest, tmp: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp / "mailgate.sqlite3"
        copy_sqlite(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    pool: PostgresPool = request.getfixturevalue("postgres_pool")
    name = pool.take("mailgate_corpus")
    try:
        yield postgres_url(name)
    finally:
        pool.give_back(name)


def _send_all(port: int, sent: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """One SMTP session for the whole corpus, as a relay would hold one open."""
    replies: dict[str, tuple[int, str]] = {}
    client: smtplib.SMTP | None = None
    for path, data in sent.items():
        if client is None:
            client = smtplib.SMTP("127.0.0.1", port, timeout=120)
            client.ehlo()
        try:
            client.mail("relay@corpus.test")
            client.rcpt("support@example.com")
            code, reply = client.data(data)
        except smtplib.SMTPResponseException as refused:
            error = refused.smtp_error
            code, reply = refused.smtp_code, error if isinstance(error, bytes) else error.encode()
            try:
                client.rset()
            except smtplib.SMTPException:
                client.close()
                client = None
        except smtplib.SMTPServerDisconnected as lost:
            code, reply = 0, str(lost).encode()
            client = None
        replies[path] = (code, reply.decode("utf-8", "replace"))
    if client is not None:
        client.quit()
    return replies


@pytest.fixture(scope="module", params=BACKEND_GROUPS)
def corpus_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[CorpusRun]:
    """The whole corpus through one `serve` per backend; confirmations go to a relay sink."""
    root = corpus_dir()
    tmp = tmp_path_factory.mktemp(f"corpus-{request.param}")
    sent = {path: wire_bytes((root / path).read_bytes()) for path in sorted(corpus_files())}
    databases = _database(request, tmp)
    url = next(databases)
    with Relay() as relay:
        settings = make_settings(tmp, url, smtp={"port": free_port()},
                                 outbound={"relay": relay.address})
        desk = Desk.create(settings)
        started = time.monotonic()
        with serving(desk) as port:
            replies = _send_all(port, sent)
        run = CorpusRun(request.param, desk, sent, replies, time.monotonic() - started)
    with transaction(desk.engine) as session:
        for row in session.exec(select(MessageRow).where(MessageRow.direction == "in")).all():
            run.by_sha.setdefault(row.raw_sha256, row)
        run.quarantined = list(session.exec(select(Quarantine)).all())
        for attachment in session.exec(select(Attachment)).all():
            run.files_of.setdefault(attachment.message_pk, []).append(attachment)
        session.expunge_all()
    yield run
    desk.engine.dispose()
    next(databases, None)


def _outcome(reply: str) -> str:
    found = re.search(r"\bOK (\w+)", reply)
    return found.group(1) if found else "?"


def _message_id(raw: bytes) -> str:
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = re.search(r"<([^<>\s]+)>", str(parsed.get("Message-ID", "")))
    return found.group(1) if found else ""


def test_every_corpus_message_is_accepted_with_250(corpus_run: CorpusRun) -> None:
    refused = {path: reply for path, reply in corpus_run.replies.items() if reply[0] != 250}
    assert refused == {}
    assert len(corpus_run.sent) > 1000
    figures = Counter(_outcome(reply) for _, reply in corpus_run.replies.values())
    print(f"\n{corpus_run.backend}: {len(corpus_run.sent)} files in {corpus_run.seconds:.1f} s: "
          + ", ".join(f"{count} {status}" for status, count in figures.most_common()))


def test_every_accepted_message_is_accounted_for_none_quarantined(corpus_run: CorpusRun) -> None:
    stored_ids = {row.message_id for row in corpus_run.by_sha.values() if row.message_id}
    quarantined = {q.raw_sha256 for q in corpus_run.quarantined}
    missing_files, duplicates = [], []
    claimed: set[str] = set()
    for path, data in corpus_run.sent.items():  # in the order sent: the first copy is stored
        if corpus_run.replies[path][0] != 250:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if (digest in corpus_run.by_sha or digest in quarantined) and digest not in claimed:
            claimed.add(digest)
        elif digest in claimed or _message_id(data) in stored_ids:
            duplicates.append(path)  # the same bytes, or the same Message-ID, as a stored one
        else:
            missing_files.append(path)
    assert missing_files == [], "\n".join(missing_files)
    accepted = sum(1 for code, _ in corpus_run.replies.values() if code == 250)
    assert len(corpus_run.by_sha) + len(corpus_run.quarantined) + len(duplicates) == accepted
    assert [(q.raw_sha256[:12], q.error) for q in corpus_run.quarantined] == []
    said_duplicate = sorted(p for p, r in corpus_run.replies.items() if _outcome(r[1]) == "duplicate")
    assert said_duplicate == sorted(duplicates)


# mail-parser's known gaps on real mail: each must still come out whole.
NO_BODY_IN_MAIL_PARSER = [
    "sisimai-set-of-emails/lhost-sendgrid-02.eml",  # mail-parser raises AttributeError
    "mimekit/missing-subtype.txt",
    "james-mime4j/badfile.msg",
    "james-mime4j/infinite.msg",
    "sisimai-set-of-emails/lhost-mcafee-01.eml",
]


@pytest.mark.parametrize("path", NO_BODY_IN_MAIL_PARSER)
def test_mail_parser_gaps_still_give_the_text(corpus_run: CorpusRun, path: str) -> None:
    stored = corpus_run.stored(path)
    reference = email.message_from_bytes(corpus_run.sent[path], policy=email.policy.default)
    assert isinstance(reference, EmailMessage)
    body = reference.get_body(("plain", "html"))
    assert body is not None
    first_line = next(line for line in body.get_content().splitlines() if line.strip()).strip()
    assert stored.full_text.strip()
    assert first_line in stored.full_text


def test_the_bogus_file_name_of_a_one_part_mail_leaves_it_the_body(corpus_run: CorpusRun) -> None:
    """james-mime4j/badfile.msg names its only text part "/tmp/whoa": it is the body."""
    path = "james-mime4j/badfile.msg"
    assert corpus_run.stored(path).full_text.strip() == "This had better not end up in /tmp!"
    assert all("/" not in name for name in corpus_run.names(path))


def _enclosed_files() -> list[str]:
    return sorted(p.relative_to(corpus_dir()).as_posix()
                  for p in (corpus_dir() / "flanker").glob("enclosed*.eml"))


def test_enclosed_messages_come_out_as_attachments(corpus_run: CorpusRun) -> None:
    files = _enclosed_files()
    assert len(files) == 5
    for path in files:
        reference = email.message_from_bytes(corpus_run.sent[path], policy=email.policy.default)
        assert isinstance(reference, EmailMessage)
        expected = [part.get_filename() for part in reference.iter_attachments()]
        stored = corpus_run.attachments(path)
        assert len(stored) == len(expected), path
        assert [a.filename for a in stored] == expected == ["thanks.eml"], path
        assert [a.content_type for a in stored] == ["message/rfc822"], path


def _tnef_names(raw: bytes) -> list[str]:
    names: list[str] = []
    for part in email.message_from_bytes(raw, policy=email.policy.compat32).walk():
        if part.get_content_type() in ("application/ms-tnef", "application/vnd.ms-tnef"):
            blob = part.get_payload(decode=True)
            assert isinstance(blob, bytes)
            for attachment in TNEF(blob).attachments:
                name = attachment.long_filename() or attachment.name
                names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def test_winmail_dat_is_unpacked_into_its_real_attachments(corpus_run: CorpusRun) -> None:
    tnef_mails = [p for p, cats in corpus_files().items() if "tnef_winmail" in cats]
    assert len(tnef_mails) >= 6
    unpacked = 0
    for path in tnef_mails:
        inside = _tnef_names(corpus_run.sent[path])
        names = corpus_run.names(path)
        if inside:
            unpacked += 1
            assert Counter(inside) <= Counter(names), path
            assert "winmail.dat" not in names, path
    assert unpacked >= 1
    # Outlook's rich-text mail: the picture inside winmail.dat, by its real name and size.
    kitten = [a for a in corpus_run.attachments("mimekit/rich-text.eml")
              if a.filename == "kitten-playing-with-a-christmas-tree.jpg"]
    assert len(kitten) == 1 and kitten[0].content_type == "image/jpeg"
    assert kitten[0].size == 375081


def test_winmail_dat_with_nothing_readable_inside_is_kept_as_it_came(corpus_run: CorpusRun) -> None:
    path = "sisimai-set-of-emails/lhost-amazonworkmail-01.eml"
    assert _tnef_names(corpus_run.sent[path]) == []
    assert "winmail.dat" in corpus_run.names(path)


def _signed_or_encrypted(corpus_run: CorpusRun) -> list[tuple[str, Message]]:
    found = []
    for path, cats in corpus_files().items():
        if "signed_or_encrypted" not in cats:
            continue
        top = email.message_from_bytes(corpus_run.sent[path], policy=email.policy.compat32)
        if top.get_content_type() in ("multipart/signed", "multipart/encrypted"):
            found.append((path, top))
    return found


def test_signed_and_encrypted_mail_keeps_its_signature_and_encrypted_parts(
    corpus_run: CorpusRun,
) -> None:
    mails = _signed_or_encrypted(corpus_run)
    assert len(mails) >= 20
    for path, top in mails:
        parts = top.get_payload()
        assert isinstance(parts, list) and len(parts) == 2, path
        # RFC 1847: the second part is the signature, or the encrypted data.
        last = parts[1]
        assert isinstance(last, Message)
        data = last.get_payload(decode=True)
        if hashlib.sha256(corpus_run.sent[path]).hexdigest() not in corpus_run.by_sha:
            continue  # a copy of another file's message (same Message-ID), stored as that one
        stored = {(a.content_type, a.size) for a in corpus_run.attachments(path)}
        assert (last.get_content_type(), len(data or b"")) in stored, path


def test_one_part_smime_mail_keeps_its_p7m(corpus_run: CorpusRun) -> None:
    path = "notmuch/pkcs7/smime-onepart-signed.eml"
    types = [a.content_type for a in corpus_run.attachments(path)]
    assert types == ["application/pkcs7-mime"]


# Non-ASCII: what the user reads in the ticket, as the files say it.
SUBJECTS = {
    # RFC 2047 encoded words
    "django-mailbox/message_with_koi8r_filename_attachments.eml": "Предложения от НИУ ВШЭ на 2016 год",
    "mikel-mail/multi_charset/japanese_iso_2022.eml": "まみむめも",
    # raw 8-bit UTF-8 in the header (RFC 6532), and raw windows-1252
    "mikel-mail/rfc6532/utf8_headers.eml": "Säying Hello",
    "mikel-mail/error_emails/invalid_subject_characters.eml":
        "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro",
}

FILENAMES = {
    # RFC 2231 file names, in Latin-1 and UTF-8
    "james-mime4j/attachment-filename-encoding-Latin1.msg": "attachment.äöü",
    "james-mime4j/attachment-filename-encoding-UTF8.msg": "attachment.äöü",
    # RFC 2231 continuations (filename*0*, filename*1*)
    "mikel-mail/multi_charset/japanese_attachment_long_name.eml":
        "かきくけこかきくけこかきくけこかきくけこかきくけこ.txt",
    # RFC 2047 in a koi8-r name parameter
    "django-mailbox/message_with_koi8r_filename_attachments.eml": "Ведомости.pdf",
}

TEXTS = {
    # ISO-2022-JP body
    "mikel-mail/multi_charset/japanese_iso_2022.eml": "すみません。",
    # labelled ISO-2022-JP, written in EUC-JP
    "sisimai-set-of-emails/lhost-ezweb-02.eml": "次のあて先へのメッセージはエラーのため送信できませんでした",
    # labelled utf-8, with Latin-1 bytes mixed in
    "django-mailbox/email_issue_82.eml": "Atención",
    # koi8-r body
    "django-mailbox/message_with_koi8r_filename_attachments.eml": "Добрый день, уважаемые коллеги.",
}


@pytest.mark.parametrize("path", sorted(SUBJECTS))
def test_non_ascii_subjects_read_as_written(corpus_run: CorpusRun, path: str) -> None:
    assert corpus_run.stored(path).subject == SUBJECTS[path]


@pytest.mark.parametrize("path", sorted(FILENAMES))
def test_non_ascii_file_names_read_as_written(corpus_run: CorpusRun, path: str) -> None:
    assert FILENAMES[path] in corpus_run.names(path)


@pytest.mark.parametrize("path", sorted(TEXTS))
def test_non_ascii_bodies_read_as_written(corpus_run: CorpusRun, path: str) -> None:
    stored = corpus_run.stored(path).full_text
    assert TEXTS[path] in stored
    assert "Ã" not in stored and "\x1b" not in stored


MOJIBAKE = re.compile("Ã[\x80-¿]|â€|Â[\xa0-¿]")


def test_no_subject_keeps_encoded_words_or_turns_to_mojibake(corpus_run: CorpusRun) -> None:
    """Across the corpus: no '=?' left, no UTF-8 read as Latin-1, no U+FFFD the stdlib avoids."""
    bad = []
    encoded_word = re.compile(r"=\?[\w.-]+\?[bqBQ]\?")
    for path, data in corpus_run.sent.items():
        row = corpus_run.by_sha.get(hashlib.sha256(data).hexdigest())
        if row is None:
            continue
        subject = row.subject
        try:
            # The header block alone: a Subject reads the same without the body's parts.
            headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
            reference = str(headers["Subject"] or "")
        except Exception:  # the stdlib cannot read it at all: nothing to compare with
            reference = ""
        if encoded_word.search(subject) and not encoded_word.search(reference):
            bad.append((path, subject))
        elif MOJIBAKE.search(subject) and not MOJIBAKE.search(reference):
            bad.append((path, subject))
        elif "\ufffd" in subject and "\ufffd" not in reference:
            bad.append((path, subject))
    assert bad == []


def test_html_only_reply_keeps_only_the_new_text(
    desks: Callable[..., Desk], tmp_path: Path
) -> None:
    """A reply written in HTML quotes the history in <blockquote>: it is cut like "> " lines."""
    with Relay() as relay:
        desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
        with serving(desk) as port:
            send(port, request("Router blinks red", "The router light blinks red since today."))
            (confirmation,) = relay.wait_for(1)
            reply = EmailMessage()
            reply["From"] = "Carol Customer <carol@customer.test>"
            reply["To"] = confirmation.message["Reply-To"]
            reply["Subject"] = "Re: " + str(confirmation.message["Subject"])
            reply["In-Reply-To"] = confirmation.message["Message-ID"]
            reply["Message-ID"] = email.utils.make_msgid(domain="customer.test")
            reply.set_content(
                "<html><body><div>Restarting it fixed the light, thank you.</div>"
                "<blockquote type=\"cite\"><div>Your request has been received."
                "<br>We will answer soon.</div>"
                "<blockquote><p>The router light blinks red since today.</p></blockquote>"
                "</blockquote></body></html>",
                subtype="html",
            )
            assert send(port, reply) == {}
    with transaction(desk.engine) as session:
        stored = session.exec(select(MessageRow).where(MessageRow.kind == "reply")).one()
    assert stored.text == "Restarting it fixed the light, thank you."
    assert "> Your request has been received." in stored.full_text
    assert ">> The router light blinks red since today." in stored.full_text
