"""Stored files: in the database (chunked, in the mail's transaction) or in the data folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from mailgate.outbound import send_due, transport_for
from tests.conftest import make_settings
from tests.harness import Relay, request
from ticketing.blobs import CHUNK, DatabaseBlobs, FolderBlobs, MissingBlob, digest
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest
from ticketing.models import Attachment, Blob, BlobChunk, Outbox
from ticketing.settings import ConfigError

ALICE = "alice@example.com"
SUPPORT = "support@example.com"


def _count(desk: Desk, table: type[Blob] | type[BlobChunk]) -> int:
    with transaction(desk.engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_a_large_file_is_kept_in_pieces_and_read_back_whole(desks: Callable[..., Desk]) -> None:
    desk = desks(storage={"blobs": "database"})
    data = hashlib.sha256(b"seed").digest() * (5 * CHUNK // 64) + b"tail"  # 2.5 MiB and a bit
    sha = digest(data)
    with transaction(desk.engine) as session:
        desk.blobs.put(session, sha, data)
        desk.blobs.put(session, sha, data)  # the same file again: kept once
    pieces = list(desk.blobs.chunks(sha))
    assert [len(p) for p in pieces] == [CHUNK, CHUNK, len(data) - 2 * CHUNK]
    assert b"".join(pieces) == data
    assert (_count(desk, Blob), _count(desk, BlobChunk)) == (1, 3)
    with transaction(desk.engine) as session:
        assert desk.blobs.has(session, sha)
        assert not desk.blobs.has(session, digest(b"never stored"))
    with pytest.raises(MissingBlob):
        desk.blobs.get(digest(b"never stored"))


def test_a_file_is_kept_only_if_its_mail_commits(desks: Callable[..., Desk]) -> None:
    desk = desks(storage={"blobs": "database"})
    data = b"attached" * 1000

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction(desk.engine) as session:
        desk.blobs.put(session, digest(data), data)
        raise Abandoned
    assert (_count(desk, Blob), _count(desk, BlobChunk)) == (0, 0)
    with pytest.raises(MissingBlob):
        desk.blobs.get(digest(data))


def test_a_mail_and_its_file_go_into_the_database_not_the_folder(desks: Callable[..., Desk]) -> None:
    desk = desks(storage={"blobs": "database"})
    message = request("[S2] Log attached", "See the log.")
    payload = b"2026-03-03 error 500\n" * 5000
    message.add_attachment(payload, maintype="text", subtype="plain", filename="server.log")
    raw = message.as_bytes()
    outcome = ingest(desk, Inbound(raw, "smtp", "carol@customer.test", ("support@example.com",)))
    assert outcome.status == "new_ticket"
    with transaction(desk.engine) as session:
        (stored,) = session.exec(select(Attachment)).all()
    assert desk.blobs.get(stored.sha256) == payload
    assert desk.blobs.get(digest(raw)) == raw
    assert not (desk.settings.storage_path / "blobs").exists()


def test_files_an_earlier_version_kept_in_the_folder_stay_readable(
    tmp_path: Path, desks: Callable[..., Desk]
) -> None:
    desk = desks(storage={"blobs": "database"})
    old = b"stored before the upgrade"
    FolderBlobs(desk.settings.storage_path / "blobs").put(None, digest(old), old)
    assert isinstance(desk.blobs, DatabaseBlobs)
    assert desk.blobs.get(digest(old)) == old
    with transaction(desk.engine) as session:
        assert desk.blobs.has(session, digest(old))


def test_the_database_keeps_the_files_by_default_on_postgresql_only(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url)
    expected = "folder" if database_url.startswith("sqlite") else "database"
    assert settings.blob_store == expected
    assert make_settings(tmp_path, database_url, storage={"blobs": "folder"}).blob_store == "folder"
    with pytest.raises(ConfigError, match=r"storage\.blobs"):
        make_settings(tmp_path, database_url, storage={"blobs": "s3"})


def test_an_answer_with_a_file_to_twenty_readers_keeps_one_copy_of_it(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    desk = desks(clock=clock, storage={"blobs": "database"}, agents={"addresses": [ALICE]},
                 outbound={"relay": relay.address})
    readers = [f"reader{n}@customer.test" for n in range(1, 20)]
    raw = request("[S2] Exports are slow", "Ten minutes each.", cc=", ".join(readers)).as_bytes()
    assert ingest(desk, Inbound(raw, "smtp", "carol@customer.test", (SUPPORT,))).status == "new_ticket"
    with transaction(desk.engine) as session:
        notice = session.exec(select(Outbox).where(Outbox.kind == "new_ticket")).one()
    payload = hashlib.sha256(b"report").digest() * (2 * CHUNK // 32 + 5)  # 2 MiB and a bit
    answer = request("Re: [#1] Exports are slow", "The report is attached.", sender=ALICE,
                     In_Reply_To=f"<{notice.message_id}>")
    answer.add_attachment(payload, maintype="application", subtype="pdf", filename="report.pdf")
    answer_raw = answer.as_bytes()
    assert ingest(desk, Inbound(answer_raw, "smtp", ALICE, (SUPPORT,))).status == "reply"
    with transaction(desk.engine) as session:
        replies = session.exec(select(Outbox).where(Outbox.kind == "reply")).all()
        stored = int(session.exec(select(func.sum(Blob.size))).one())
    assert len(replies) == 20
    # Each reader's row holds its own text and names the file; the file is stored once.
    assert max(len(row.raw) for row in replies) < 100_000
    assert stored == len(raw) + len(answer_raw) + len(payload)
    while send_due(desk, transport_for(desk), "worker", 50):
        pass
    got = relay.wait_for(20, where=lambda r: "report" in r.text())
    assert sorted(r.rcpt_tos[0] for r in got) == sorted(["carol@customer.test", *readers])
    for mail in got:
        (file,) = mail.message.iter_attachments()
        assert file.get_filename() == "report.pdf"
        assert file.get_content() == payload
