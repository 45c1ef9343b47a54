"""`serve` against a careless operator and a hostile network: leftovers, ceilings, faults."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from ticketing.desk import Desk


def test_half_written_files_after_a_full_disk_are_removed_at_start(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 storage={"blobs": "folder"})
    folder = desk.settings.storage_path / "blobs" / "ab" / "cd"
    folder.mkdir(parents=True)
    kept = folder / ("abcd" + "0" * 60)
    kept.write_bytes(b"a stored file")
    # What a write cut short by a full disk leaves: part of a file under a temporary name.
    stale = [folder / f".abcd{'1' * 60}.{n:032x}.tmp" for n in range(3)]
    hour_ago = time.time() - 7200
    for path in stale:
        path.write_bytes(b"half of a mail")
        os.utime(path, (hour_ago, hour_ago))
    in_progress = folder / f".abcd{'2' * 60}.{9:032x}.tmp"
    in_progress.write_bytes(b"being written now")
    with serving(desk) as port:
        assert send(port, request("still taking mail", "hello")) == {}
    assert [p for p in stale if p.exists()] == []
    assert kept.read_bytes() == b"a stored file"
    assert in_progress.exists()  # another process may be writing it
