"""How the program logs: its own lines at INFO, the libraries' chatter kept down.
Set up by each entry point (the command line, and serve when run on its own)."""

from __future__ import annotations

import logging
import sys


def quiet_mail_parser() -> None:
    """mail-parser logs a warning for every part type it does not handle (report,
    rfc822-headers, related); ticketing.parse handles those parts itself."""
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    logging.getLogger("mailparser.core").setLevel(logging.ERROR)


def setup_logging(verbose: bool) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-command chatter
    # aiosmtpd's protocol chatter (every connection, every QUIT) drowns ours at INFO.
    logging.getLogger("mail").setLevel(logging.DEBUG if verbose else logging.WARNING)
    quiet_mail_parser()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
