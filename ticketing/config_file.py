"""The settings file as read: its TOML tables with the environment's overrides, unchecked.

It loads nothing but the TOML reader: `mailgate deliver` reads its server's address with
it before anything else, and ticketing.settings checks and types the same tables.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
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
                data = tomllib.load(file)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for variable, (section, key) in ENVIRONMENT.items():
        if env.get(variable):
            table = data
            for part in section.split("."):
                table = table.setdefault(part, {})
            table[key] = env[variable]
    return data
