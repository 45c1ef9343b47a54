"""How the C heap of a long-running `serve` hands memory back after large mails."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameter for the size from which a block gets pages of its own.
_M_MMAP_THRESHOLD = -3
# A buffer this large or larger (a mail, its attachment, their text) gets pages of its
# own, returned to the system when it is freed. glibc raises the threshold by itself
# up to 32 MiB after the first such free, after which every large mail is carved from
# the heap of the thread that stored it and the process keeps growing.
LARGE = 1 << 20


def return_large_buffers() -> bool:
    """Fix the threshold at LARGE; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc: musl and others keep no such threshold
    if not mallopt(_M_MMAP_THRESHOLD, LARGE):
        log.warning("could not set the C heap's mmap threshold; memory may grow after large mails")
        return False
    return True
