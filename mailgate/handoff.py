"""`mailgate deliver` through a running `mailgate serve`: one SMTP exchange on loopback.

A new process pays most of a second to load the database layer; `serve` has it loaded.
When it answers, it stores the mail by the same ingest path and its reply decides the
exit code; when nothing answers, `deliver` ingests in its own process.
"""

from __future__ import annotations

import smtplib
import sys

from mailgate.exitcodes import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL
from ticketing.settings import Settings

# The EHLO name `deliver` uses, so the listener records the mail's route as "pipe".
HELO_NAME = "mailgate-deliver"


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host  # noqa: S104


def hand_over(settings: Settings, raw: bytes, recipient: str, sender: str) -> int | None:
    """The exit code once `serve` has answered for the mail; None when no server answers."""
    try:
        client = smtplib.SMTP(_loopback(settings.smtp.host), settings.smtp.port,
                              local_hostname=HELO_NAME, timeout=120)
    except OSError:
        return None
    try:
        with client:
            client.sendmail("" if sender == "<>" else sender, [recipient], raw)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        print(f"mailgate deliver: {code} {text.decode(errors='replace')}", file=sys.stderr)
        return EX_NOUSER if code >= 500 else EX_TEMPFAIL
    except smtplib.SMTPResponseException as exc:
        error: bytes | str = exc.smtp_error
        reason = error.decode(errors="replace") if isinstance(error, bytes) else error
        print(f"mailgate deliver: {exc.smtp_code} {reason}", file=sys.stderr)
        return EX_DATAERR if exc.smtp_code >= 500 else EX_TEMPFAIL
    except (OSError, smtplib.SMTPException) as exc:
        # Cut off before the answer: perhaps stored, perhaps not. The MTA tries again,
        # and a stored copy makes the retry a duplicate, stored once.
        print(f"mailgate deliver: the server stopped answering: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print("mailgate deliver: handed to the running server", file=sys.stderr)
    return EX_OK
