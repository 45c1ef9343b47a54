"""The settings file as read: its TOML tables with the environment's overrides, unchecked.

`mailgate deliver` reads its server's address with it before anything else, once a mail,
and ticketing.settings checks and types the same tables. A file written the plain way
(tables, bare keys, strings, numbers, booleans and one-line lists of them, comments) is
read here without loading anything; any other file goes to the standard TOML reader,
whose loading alone costs an MTA's call more than starting Python does.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# What `mailgate deliver` needs to reach `serve` when the file does not say.
SMTP_HOST = "127.0.0.1"
SMTP_PORT = 2525
MAX_MESSAGE_SIZE = 33_554_432
SUPPORT_ADDRESS = "support@localhost"

# Environment variables that override secrets and the usual deployment knobs.
ENVIRONMENT = {
    "MAILGATE_SECRET": ("support", "secret"),
    "MAILGATE_DATABASE_URL": ("database", "url"),
    "MAILGATE_STORAGE_PATH": ("storage", "path"),
    "MAILGATE_RELAY_PASSWORD": ("outbound", "password"),
    "MAILGATE_WEBHOOK_SECRET": ("oncall.webhook", "secret"),
    "MAILGATE_PAGERDUTY_ROUTING_KEY": ("oncall.pagerduty", "routing_key"),
}


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | None:
    """The file named on the command line, else by MAILGATE_CONFIG, else none."""
    chosen = path or env.get("MAILGATE_CONFIG") or None
    return os.fspath(chosen) if chosen else None


def read_config(path: str | None, env: Mapping[str, str]) -> dict[str, Any]:
    """The file's tables (none without a file) with the environment applied."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as file:
                text = file.read().decode()
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        plain = plain_toml(text)
        if plain is not None:
            data = plain
        else:
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for variable, (section, key) in ENVIRONMENT.items():
        if env.get(variable):
            table = data
            for part in section.split("."):
                table = table.setdefault(part, {})
            table[key] = env[variable]
    return data


# What plain_toml() reads. Whitespace is space and tab; a bare key is ASCII letters,
# digits, "_" and "-" (TOML 1.0).
_SPACE = " \t"
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")
_VALUE_END = frozenset(" \t,]#")


def plain_toml(text: str) -> dict[str, Any] | None:
    """The tables of a file written with only: comments, `[table]` and `[table.sub]`
    headers, `[[table]]` at the top, and `key = value` with a bare key and a value that is
    a string without escapes, a decimal integer, a float written `1.5`, true, false, or a
    list of those on one line. None for anything else, valid TOML or not: the standard
    reader decides then. Whatever it returns, tomllib.loads(text) returns too."""
    root: dict[str, Any] = {}
    table = root
    headed: set[tuple[str, ...]] = set()  # tables a [header] made: a second one is an error
    table_lists: set[int] = set()  # the lists [[header]]s make (ids): only those grow
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.replace("\t", "").isprintable():
            return None  # control characters (a lone CR too): TOML refuses most of them
        line = line.strip(_SPACE)
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            many = line.startswith("[[")
            end = line.find("]]" if many else "]")
            if end < 0 or not _only_comment(line[end + (2 if many else 1):]):
                return None
            keys = tuple(key.strip(_SPACE) for key in line[2 if many else 1:end].split("."))
            if not all(_bare(key) for key in keys):
                return None
            if many:
                if len(keys) != 1:
                    return None
                if keys[0] not in root:
                    root[keys[0]] = []
                    table_lists.add(id(root[keys[0]]))
                elif id(root[keys[0]]) not in table_lists:
                    return None  # a table, or a list written as a value
                table = {}
                found = root[keys[0]]
                found.append(table)
                continue
            if keys in headed:
                return None
            headed.add(keys)
            table = root
            for key in keys:
                table = table.setdefault(key, {})
                if not isinstance(table, dict):
                    return None  # a value, or a [[list]] of tables, by that name
            continue
        key, equals, rest = line.partition("=")
        key = key.rstrip(_SPACE)
        if not equals or not _bare(key) or key in table:
            return None
        value = _value(rest.lstrip(_SPACE), top=True)
        if value is None or not _only_comment(value[1]):
            return None
        table[key] = value[0]
    return root


def _bare(key: str) -> bool:
    return bool(key) and _BARE.issuperset(key)


def _only_comment(rest: str) -> bool:
    rest = rest.lstrip(_SPACE)
    return not rest or rest[0] == "#"


def _value(text: str, top: bool = False) -> tuple[Any, str] | None:
    """The value at the start of text and what follows it; None when it is none of the
    plain kinds."""
    if not text:
        return None
    if text[0] in "\"'":
        end = text.find(text[0], 1)
        if end < 0 or (text[0] == '"' and "\\" in text[1:end]):
            return None  # escapes, and strings over several lines, are the reader's
        return text[1:end], text[end + 1:]
    if text[0] == "[":
        if not top:
            return None  # lists in lists
        items: list[Any] = []
        text = text[1:].lstrip(_SPACE)
        while not text.startswith("]"):
            item = _value(text)
            if item is None:
                return None
            items.append(item[0])
            text = item[1].lstrip(_SPACE)
            if text.startswith(","):
                text = text[1:].lstrip(_SPACE)
            elif not text.startswith("]"):
                return None
        return items, text[1:]
    end = 0
    while end < len(text) and text[end] not in _VALUE_END:
        end += 1
    word, rest = text[:end], text[end:]
    if word in ("true", "false"):
        return word == "true", rest
    number = word[1:] if word[:1] in "+-" else word
    whole, dot, fraction = number.partition(".")
    if not (_DIGITS.issuperset(whole) and 0 < len(whole) < 20 and (whole == "0" or whole[0] != "0")):
        return None  # no leading zeros, no underscores, no hex, dates or exponents
    if not dot:
        return int(word), rest
    if not (fraction and _DIGITS.issuperset(fraction)):
        return None
    return float(word), rest
