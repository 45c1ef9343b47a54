"""Content-addressed raw mail and attachments: in the database, or in the data folder."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sqlalchemy import Engine, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from ticketing.db import StorageError, transaction
from ticketing.models import Blob, BlobChunk
from ticketing.settings import Settings

# Rows of the chunk table, and the pieces a reader is handed: a large file is never
# read or written whole in one statement.
CHUNK = 1 << 20


class MissingBlob(FileNotFoundError):
    """No stored file has this hash (in the database, nor in this machine's folder)."""


class BlobStore(Protocol):
    """Files named by their SHA-256; written in the transaction of the row that names them."""

    def put(self, session: Session, sha256: str, data: bytes) -> None:
        """Keep these bytes (whose hash is sha256) by the time `session` commits."""

    def has(self, session: Session, sha256: str) -> bool: ...

    def chunks(self, sha256: str) -> Iterator[bytes]:
        """The file in pieces of at most CHUNK bytes; MissingBlob when there is none."""

    def get(self, sha256: str) -> bytes: ...


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_store(settings: Settings, engine: Engine) -> BlobStore:
    folder = FolderBlobs(settings.storage_path / "blobs")
    if settings.blob_store == "database":
        # Files an earlier version kept in this machine's folder stay readable here
        # until `mailgate storage migrate-blobs` moves them into the database.
        return DatabaseBlobs(engine, fallback=folder)
    return folder


_REMEMBERED = 16384  # files a FolderBlobs remembers having made durable: more than a mail holds


class FolderBlobs:
    """Files under the data folder, written durably before the row that names them commits.

    A file left behind by a rolled-back transaction is harmless: the same bytes would
    be written to the same name again.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        # Fan-out folders whose own names this process has synced to the disk.
        self._synced: set[Path] = set()
        # Files this process wrote and synced, their names too, lately: a second put of
        # one (the mail's transaction, after it was kept ahead of it) has nothing to sync.
        self._durable: dict[str, None] = {}

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, session: Session | None, sha256: str, data: bytes) -> None:
        try:
            self.put_as(sha256, data)
        except OSError as exc:
            raise StorageError(f"data folder: {exc}") from exc

    def put_as(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        folder = target.parent
        if folder not in self._synced:
            # Readable by the owner only, each level (parents=True would give the
            # fan-out levels the umask's mode).
            for level in (self.root, folder.parent, folder):
                level.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.durable:
                # A folder's own name must reach the disk too, or a file in it could
                # vanish with it after a power cut (whichever thread made the folder).
                _fsync_folder(folder.parent)
                _fsync_folder(folder.parent.parent)
            self._synced.add(folder)
        if target.exists():
            if self.durable and sha256 not in self._durable:
                _fsync_folder(folder)  # another writer's rename may not be on the disk yet
            return
        # A name of its own per write: two threads storing the same bytes must not share one.
        temporary = target.with_name(f".{sha256}.{uuid.uuid4().hex}.tmp")
        try:
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                           "wb") as handle:
                handle.write(data)
                if self.durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError:
            temporary.unlink(missing_ok=True)  # a full disk must not keep the half it took
            raise
        if self.durable:
            _fsync_folder(folder)
            self._durable[sha256] = None
            if len(self._durable) > _REMEMBERED:
                del self._durable[next(iter(self._durable))]

    def has(self, session: Session | None, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def chunks(self, sha256: str) -> Iterator[bytes]:
        try:
            handle = open(self.path(sha256), "rb")  # closed by _read, when it is read through
        except FileNotFoundError as exc:
            raise MissingBlob(f"no stored file {sha256} in {self.root}") from exc
        return _read(handle)

    def get(self, sha256: str) -> bytes:
        return b"".join(self.chunks(sha256))

    def stored(self) -> Iterator[tuple[str, Path]]:
        """(hash, path) of every file in the folder, for moving them elsewhere."""
        for path in sorted(self.root.glob("??/??/*")):
            if path.is_file() and not path.name.startswith(".") and len(path.name) == 64:
                yield path.name, path


def _read(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while piece := handle.read(CHUNK):
            yield piece


class DatabaseBlobs:
    """Files as rows of the database itself, so every machine sharing it reads every file.

    A file is one `blob` row and its bytes in `blobchunk` rows of CHUNK bytes, written
    in the caller's transaction: they commit with the mail that names them, or not at all.
    """

    def __init__(self, engine: Engine, fallback: FolderBlobs | None = None) -> None:
        self.engine = engine
        self.fallback = fallback

    def put(self, session: Session, sha256: str, data: bytes) -> None:
        view = memoryview(data)
        self.put_pieces(session, sha256, len(data),
                        (bytes(view[i:i + CHUNK]) for i in range(0, len(data), CHUNK)))

    def put_pieces(self, session: Session, sha256: str, size: int, pieces: Iterable[bytes]) -> bool:
        """Store a file given in pieces of at most CHUNK bytes; False when it was there."""
        # A concurrent writer of the same file makes this wait for its commit, then skip.
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        claimed = session.execute(
            dialect.insert(Blob).values(sha256=sha256, size=size)
            .on_conflict_do_nothing(index_elements=["sha256"]).returning(Blob.sha256)
        ).first()
        if claimed is None:
            return False
        written = 0
        for seq, piece in enumerate(pieces):
            session.execute(BlobChunk.__table__.insert(),  # type: ignore[attr-defined]
                            {"sha256": sha256, "seq": seq, "data": piece})
            written += len(piece)
        if written != size:
            raise StorageError(f"{sha256}: {written} bytes stored of {size}")
        return True

    def has(self, session: Session, sha256: str) -> bool:
        found = session.exec(select(Blob.sha256).where(col(Blob.sha256) == sha256)).first()
        if found is not None:
            return True
        return self.fallback is not None and self.fallback.has(session, sha256)

    def chunks(self, sha256: str) -> Iterator[bytes]:
        with self.engine.connect() as connection:
            size = connection.execute(
                select(Blob.size).where(col(Blob.sha256) == sha256)).scalar()
        if size is None:
            if self.fallback is not None and self.fallback.has(None, sha256):
                return self.fallback.chunks(sha256)
            raise MissingBlob(f"no stored file {sha256} in the database (on a machine that "
                              "keeps it in its folder, run `mailgate storage migrate-blobs`)")
        return self._pieces(sha256)

    def _pieces(self, sha256: str) -> Iterator[bytes]:
        # One short read a piece: a slow reader (a download) holds no transaction open,
        # and a stored file never changes.
        query = select(BlobChunk.data).where(
            col(BlobChunk.sha256) == sha256, col(BlobChunk.seq) == bindparam("seq"))
        seq = 0
        while True:
            with self.engine.connect() as connection:
                piece = connection.execute(query, {"seq": seq}).scalar()
            if piece is None:
                return
            yield bytes(piece)
            seq += 1

    def get(self, sha256: str) -> bytes:
        return b"".join(self.chunks(sha256))


def clean_temporary(root: Path, before: datetime) -> int:
    """Remove half-written files (".<hash>.<id>.tmp") last written before `before`: what
    a full disk or a killed process left behind. A write in progress is younger, and
    no row names a temporary file. Returns how many were removed."""
    removed = 0
    for path in root.glob("??/??/.*.tmp"):
        try:
            if path.stat().st_mtime < before.timestamp():
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process cleaned or finished it
            continue
    return removed


@dataclass(frozen=True)
class Moved:
    moved: int = 0
    present: int = 0  # in the database already
    damaged: tuple[str, ...] = ()  # files whose bytes no longer match their name: left


def move_to_database(engine: Engine, folder: FolderBlobs, *, remove: bool = False) -> Moved:
    """Copy each file of the folder into the database, one transaction a file, checking
    its hash on the way; with `remove`, delete each file once its copy is committed."""
    database = DatabaseBlobs(engine)
    moved = present = 0
    damaged: list[str] = []
    for sha256, path in folder.stored():
        hasher = hashlib.sha256()

        def pieces(path: Path = path, hasher: Any = hasher) -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while piece := handle.read(CHUNK):
                    hasher.update(piece)
                    yield piece

        try:
            with transaction(engine) as session:
                added = database.put_pieces(session, sha256, path.stat().st_size, pieces())
                if added and hasher.hexdigest() != sha256:
                    raise _Damaged(sha256)
        except _Damaged:
            damaged.append(sha256)
            continue
        moved += added
        present += not added
        if remove:
            path.unlink()
    return Moved(moved, present, tuple(damaged))


class _Damaged(Exception):
    pass


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
