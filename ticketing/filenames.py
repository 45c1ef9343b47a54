"""Attachment names made safe to show and to save, whatever the sender put there."""

from __future__ import annotations

import mimetypes
import re
import unicodedata

_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_MAX_BYTES = 200


def safe_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A name with no path, no control characters, no device name, at most 200 bytes."""
    name = unicodedata.normalize("NFC", name or "")
    # Keep only the last path component, for either separator (../../etc/passwd, C:\x).
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().strip(".").strip()
    if _RESERVED.match(name):
        name = "_" + name
    if not name:
        extension = mimetypes.guess_extension(content_type) or ".bin"
        if content_type == "message/rfc822":
            extension = ".eml"
        name = "attachment" + extension
    while len(name.encode("utf-8")) > _MAX_BYTES:
        stem, dot, extension = name.rpartition(".")
        if dot and len(extension) <= 10 and stem:
            name = stem[:-1] + "." + extension
        else:
            name = name[:-1]
    return name
