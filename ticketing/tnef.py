"""Outlook's winmail.dat (TNEF) unpacked into its real attachments and body."""

from __future__ import annotations

import logging
import mimetypes

log = logging.getLogger(__name__)
logging.getLogger("tnefparse").setLevel(logging.ERROR)


def unpack_tnef(data: bytes) -> tuple[str, str, list[tuple[str, str, bytes]]] | None:
    """(text, html, [(filename, content type, bytes)]), or None when the blob is not TNEF
    we can read."""
    try:
        from tnefparse import TNEF

        tnef = TNEF(data)
    except Exception as exc:
        log.info("winmail.dat not readable as TNEF: %s", exc)
        return None
    files = []
    for attachment in tnef.attachments:
        name = _as_text(attachment.long_filename() or attachment.name) or "attachment"
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        files.append((name, kind, bytes(attachment.data or b"")))
    text = _as_text(getattr(tnef, "body", None))
    html = _as_text(getattr(tnef, "htmlbody", None))
    rtf = getattr(tnef, "rtfbody", None)
    if not (text or html) and isinstance(rtf, bytes) and rtf:
        files.append(("message.rtf", "application/rtf", rtf))  # Outlook's only copy of the body
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
