"""The `mailgate` command's entry: `deliver` to a running server without loading the rest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

# An MTA starts one `mailgate deliver` per mail. When `serve` answers, the call needs
# only the settings, stdin and one SMTP exchange; everything else (the database layer,
# logging, the full command line) loads only when the mail is stored here instead.


class _Refused(Exception):
    pass


class _LightParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def _handover_arguments(argv: Sequence[str]) -> argparse.Namespace | None:
    """`deliver` with a known envelope and nothing else, else None (the full CLI decides)."""
    if "deliver" not in argv:
        return None
    light = _LightParser(add_help=False, allow_abbrev=False)
    light.add_argument("command", choices=["deliver"])
    light.add_argument("--config")
    light.add_argument("--recipient")
    light.add_argument("--sender")
    try:
        args, rest = light.parse_known_args(argv)
    except _Refused:
        return None
    if rest or args.sender is None:
        return None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _handover_arguments(argv)
    if args is not None:
        from mailgate.exitcodes import EX_DATAERR
        from mailgate.handoff import hand_over
        from ticketing.settings import ConfigError, load_settings

        try:
            settings = load_settings(args.config)
        except ConfigError:
            args = None  # the full CLI says what is wrong, with its exit code
        else:
            raw = sys.stdin.buffer.read(settings.smtp.max_message_size + 1)
            if not raw.strip():
                print("mailgate deliver: empty message on stdin", file=sys.stderr)
                return EX_DATAERR
            # Postfix passes an empty ${sender} for the null sender of a bounce.
            sender = "<>" if args.sender == "" else args.sender
            code = hand_over(settings, raw, args.recipient or settings.support.address, sender)
            if code is not None:
                return code
            from mailgate import cli

            return cli.main(argv, stdin=raw)
    from mailgate import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
