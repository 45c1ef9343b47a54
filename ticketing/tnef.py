"""Outlook's winmail.dat (TNEF) unpacked into its real attachments and body."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
logging.getLogger("tnefparse").setLevel(logging.ERROR)


def unpack_tnef(data: bytes) -> tuple[str, str, list[tuple[str, bytes]]] | None:
    """(text, html, [(filename, bytes)]), or None when the blob is not TNEF we can read."""
    try:
        from tnefparse import TNEF

        tnef = TNEF(data)
    except Exception as exc:
        log.info("winmail.dat not readable as TNEF: %s", exc)
        return None
    files = []
    for attachment in tnef.attachments:
        name = attachment.long_filename() or attachment.name or "attachment"
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        files.append((str(name), bytes(attachment.data or b"")))
    text = _as_text(getattr(tnef, "body", None))
    html = _as_text(getattr(tnef, "htmlbody", None))
    return text, html, files


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        for charset in ("utf-8", "cp1252"):
            try:
                return value.decode(charset)
            except UnicodeDecodeError:
                continue
    return str(value)
