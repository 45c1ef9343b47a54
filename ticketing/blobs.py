"""Content-addressed files in the data folder: raw mail and attachments."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


class BlobStore:
    """Files named by their SHA-256, written durably before the row that names them commits.

    A file left behind by a rolled-back transaction is harmless: the same bytes would
    be written to the same name again.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        # Fan-out folders whose own names this process has synced to the disk.
        self._synced: set[Path] = set()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.put_as(digest, data)
        return digest

    def put_as(self, digest: str, data: bytes) -> None:
        target = self.path(digest)
        folder = target.parent
        if folder not in self._synced:
            folder.mkdir(parents=True, exist_ok=True)
            if self.durable:
                # A folder's own name must reach the disk too, or a file in it could
                # vanish with it after a power cut (whichever thread made the folder).
                _fsync_folder(folder.parent)
                _fsync_folder(folder.parent.parent)
            self._synced.add(folder)
        if target.exists():
            if self.durable:
                _fsync_folder(folder)  # another writer's rename may not be on the disk yet
            return
        # A name of its own per write: two threads storing the same bytes must not share one.
        temporary = target.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            if self.durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, target)
        if self.durable:
            _fsync_folder(folder)

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
