"""The `mailgate` command's entry: `deliver` to a running server without loading the rest."""

from __future__ import annotations

import gc
import os
import sys

# An MTA starts one `mailgate deliver` per mail. When `serve` answers, the call needs
# only the settings file, stdin and one SMTP exchange; everything else (the checked
# settings, the database layer, logging, the full command line) loads only when the
# mail is stored here instead, or when the call is anything but a plain hand-over.

_OPTIONS = ("--config", "--recipient", "--sender")


def _handover_arguments(argv: list[str]) -> dict[str, str] | None:
    """`deliver` with a known envelope and nothing else, else None (the full CLI decides)."""
    found: dict[str, str] = {}
    words = iter(argv)
    for word in words:
        if word == "deliver" and "deliver" not in found:
            found["deliver"] = word
            continue
        name, equals, value = word.partition("=")
        if name not in _OPTIONS or name in found:
            return None
        if not equals:
            following = next(words, None)
            if following is None or following.startswith("-"):
                return None
            value = following
        found[name] = value
    if "deliver" not in found or "--sender" not in found:
        return None
    return found


def _handover_target(config: str | None) -> tuple[str, int, int, str] | None:
    """Where `serve` listens, the size limit and the support address; None when the file
    cannot say (the full CLI reports why)."""
    from ticketing import config_file

    try:
        data = config_file.read_config(config_file.config_path(config, os.environ), os.environ)
    except config_file.ConfigError:
        return None
    smtp, support = data.get("smtp", {}), data.get("support", {})
    if not isinstance(smtp, dict) or not isinstance(support, dict):
        return None
    host = smtp.get("host", config_file.SMTP_HOST)
    port = smtp.get("port", config_file.SMTP_PORT)
    size = smtp.get("max_message_size", config_file.MAX_MESSAGE_SIZE)
    address = support.get("address", config_file.SUPPORT_ADDRESS)
    if not (isinstance(host, str) and isinstance(address, str) and type(port) is int
            and type(size) is int and 0 < port < 65536 and size > 0):
        return None
    return host, port, size, address


def main(argv: list[str] | None = None) -> int:
    """The process's entry: runs one command, after which the process ends."""
    try:
        return _command(argv)
    finally:
        # Everything the command built goes with the process. Frozen, it is left out of
        # the interpreter's last collections at exit, which otherwise take a command that
        # loaded the application some 0.4 s of CPU (seconds on a busy machine) after its
        # work is done: `serve` would exit that long after logging "stopped".
        gc.freeze()


def _command(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _handover_arguments(argv)
    target = _handover_target(args.get("--config")) if args is not None else None
    if args is not None and target is not None:
        from mailgate.exitcodes import EX_DATAERR
        from mailgate.handoff import hand_over

        host, port, max_size, address = target
        raw = sys.stdin.buffer.read(max_size + 1)
        if not raw.strip():
            print("mailgate deliver: empty message on stdin", file=sys.stderr)
            return EX_DATAERR
        # Postfix passes an empty ${sender} for the null sender of a bounce.
        sender = args["--sender"] or "<>"
        code = hand_over(host, port, raw, args.get("--recipient") or address, sender)
        if code is not None:
            return code
        from mailgate import cli

        return cli.main(argv, stdin=raw)
    from mailgate import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
