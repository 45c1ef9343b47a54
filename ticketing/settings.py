"""Settings: frozen values read once from one TOML file and the environment."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ticketing.config_file import (
    MAX_MESSAGE_SIZE,
    SMTP_HOST,
    SMTP_PORT,
    SUPPORT_ADDRESS,
    config_path,
    read_config,
)
from ticketing.config_file import ConfigError as ConfigError  # raised by every check here


@dataclass(frozen=True)
class SupportSettings:
    address: str = SUPPORT_ADDRESS
    name: str = "Support"
    status_page: str = ""  # none: our mails name no status page
    secret: str = ""
    # Further addresses we answer for (aliases). The main address is always served.
    aliases: tuple[str, ...] = ()
    sender_policy: str = "open"
    allowed_domains: tuple[str, ...] = ()
    # From domains of the abuse-report feedback loops signed up for (RFC 5965): only
    # their reports stop mail to a complainant.
    feedback_loops: tuple[str, ...] = ()
    # Copied (To/Cc) addresses one mail may add to a ticket; the rest are kept on the
    # message and named to the agents, and get no mail (0: no ceiling).
    max_copied: int = 20
    # Who reads mail to postmaster@ our domain; unset: the team list, else the agents.
    operator_address: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0].lower()


@dataclass(frozen=True)
class SmtpSettings:
    host: str = SMTP_HOST
    port: int = SMTP_PORT
    max_message_size: int = MAX_MESSAGE_SIZE
    max_recipients: int = 100
    timeout: int = 60
    max_connections_per_client: int = 20
    # All clients together; keep it well under the open-files limit (ulimit -n). 0: none.
    max_connections: int = 500
    tls_cert: str = ""
    tls_key: str = ""
    # Border mail servers (addresses or networks) whose Authentication-Results we believe.
    trusted_relays: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboundSettings:
    relay: str = ""
    starttls: bool = False
    tls: bool = False
    username: str = ""
    password: str = ""
    directory: str = ""
    max_attachment_size: int = 10_000_000
    max_attempts: int = 20
    give_up_after: int = 2 * 86_400
    retry_base: float = 30.0  # first retry after this many seconds, doubling each time
    lease: int = 300  # a claimed mail whose worker died is taken again after this


@dataclass(frozen=True)
class AgentSettings:
    addresses: tuple[str, ...] = ()
    # Agents who also run the service: the operators' web pages (outbox, pages, held and
    # quarantined mail, accounts) are theirs alone. Each is an agent too.
    operators: tuple[str, ...] = ()
    team_address: str = ""
    trust: str = "none"
    trusted_authserv_id: str = ""


@dataclass(frozen=True)
class TicketSettings:
    reopen_days: int = 14
    # What the confirmation promises for each severity, in the desk's own words.
    response_s0: str = "1 hour, any day or time"
    response_s1: str = "4 business hours"
    response_s2: str = "1 business day"
    response_s3: str = "2 business days"


@dataclass(frozen=True)
class HoursSettings:
    timezone: str = "America/Los_Angeles"
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    start: str = "06:00"
    end: str = "18:00"


@dataclass(frozen=True)
class WebhookHook:
    url: str
    secret: str = ""


@dataclass(frozen=True)
class PagerDutyHook:
    routing_key: str
    url: str = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class CommandHook:
    argv: tuple[str, ...]
    timeout: int = 30


PAGE_LEASE_MIN = 2  # seconds: the shortest page lease (oncall.lease)
OUTBOX_LEASE_MIN = 2  # seconds: the shortest hold on a mail being sent (outbound.lease)


@dataclass(frozen=True)
class OncallSettings:
    page_on: tuple[str, ...] = ("S0",)
    s1_outside_hours: bool = False
    give_up_after: int = 3600
    retry_base: float = 15.0  # seconds before the second attempt, doubling after
    # A page being sent is held this long, renewed while its hook is called: a page whose
    # worker died is taken again after this.
    lease: int = 30
    # Pages one requester, and one requester's domain, may cause an hour (0: no limit).
    max_pages_per_sender: int = 3
    max_pages_per_domain: int = 10
    webhook: WebhookHook | None = None
    pagerduty: PagerDutyHook | None = None
    command: CommandHook | None = None


@dataclass(frozen=True)
class ImapMailbox:
    host: str
    user: str
    port: int = 993
    security: str = "tls"
    password: str = ""
    password_env: str = ""
    oauth2_token_command: tuple[str, ...] = ()
    oauth2_token_file: str = ""
    folder: str = "INBOX"
    move_to: str = ""
    poll_interval: float = 30.0
    batch_size: int = 50

    @property
    def key(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.folder}"


@dataclass(frozen=True)
class LimitSettings:
    # Sliding windows for mail the system sends on its own (RFC 3834 section 2).
    per_recipient_per_hour: int = 10
    per_ticket_recipient_per_hour: int = 3
    # All of them together, to anyone: far above what a real desk sends, low enough that
    # a flood of requests cannot make the desk a spam cannon (0: no ceiling).
    overall_per_hour: int = 2000


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""  # the address customers reach us at; default http://<host>:<port>
    idle_timeout: int = 86_400  # seconds a session lasts without being used
    max_files: int = 10  # attachments in one form
    # Sign-in and reset mails, per address and per client address, in any hour.
    mails_per_address_per_hour: int = 5
    mails_per_client_per_hour: int = 20

    @property
    def url(self) -> str:
        """The Help Desk's own address, without a trailing slash."""
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")


@dataclass(frozen=True)
class MonitoringSettings:
    """/healthz, /readyz and /metrics, on an address for the operator's network only."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9125


@dataclass(frozen=True)
class StatusSettings:
    # The parts of the service the status page shows, in order; incidents name them.
    components: tuple[str, ...] = ()
    # Subscription mails (confirmation links) per address and per client address per hour.
    subscribe_per_address_per_hour: int = 3
    subscribe_per_client_per_hour: int = 10


@dataclass(frozen=True)
class Settings:
    support: SupportSettings = field(default_factory=SupportSettings)
    database_url: str = ""
    # Seconds between tries while the database server does not answer when serve starts.
    database_retry: float = 5.0
    # Relative to the working directory unless the config file names another place.
    storage_path: Path = field(default_factory=lambda: Path.cwd() / "data")
    storage_blobs: str = ""  # "database" | "folder"; unset: as blob_store says
    # None: the templates shipped inside the package.
    templates_path: Path | None = None
    templates_override: Path | None = None
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    tickets: TicketSettings = field(default_factory=TicketSettings)
    hours: HoursSettings = field(default_factory=HoursSettings)
    oncall: OncallSettings = field(default_factory=OncallSettings)
    imap: tuple[ImapMailbox, ...] = ()
    limits: LimitSettings = field(default_factory=LimitSettings)
    web: WebSettings = field(default_factory=WebSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    status: StatusSettings = field(default_factory=StatusSettings)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.storage_path / 'mailgate.sqlite3'}"

    @property
    def blob_store(self) -> str:
        """Where raw mail and attachments are kept: in the database when it is PostgreSQL
        (every machine sharing it reads every file), else in storage.path/blobs."""
        if self.storage_blobs:
            return self.storage_blobs
        return "folder" if self.database.startswith("sqlite") else "database"

    @property
    def outbound_directory(self) -> Path:
        if self.outbound.directory:
            return Path(self.outbound.directory)
        return self.storage_path / "outbound"

    def clone(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "support": SupportSettings,
    "smtp": SmtpSettings,
    "outbound": OutboundSettings,
    "agents": AgentSettings,
    "tickets": TicketSettings,
    "hours": HoursSettings,
    "limits": LimitSettings,
    "web": WebSettings,
    "monitoring": MonitoringSettings,
    "status": StatusSettings,
}

def _coerce(key: str, expected: Any, value: Any) -> Any:
    """Turn a TOML value into the field's type, or raise naming the key."""
    if isinstance(expected, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(expected, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if isinstance(expected, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(expected, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(expected, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported value {value!r}")


def _build(cls: type, prefix: str, table: Any, required: tuple[str, ...] = ()) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix}: expected a table")
    known = {f.name: f for f in fields(cls)}
    for name in table:
        if name not in known:
            raise ConfigError(f"{prefix}.{name}: unknown key")
    for name in required:
        if name not in table:
            raise ConfigError(f"{prefix}.{name}: required")
    defaults = cls(**{r: _placeholder(known[r].type) for r in required})
    values = {
        name: _coerce(f"{prefix}.{name}", getattr(defaults, name), value)
        for name, value in table.items()
    }
    return replace(defaults, **values)


def _placeholder(annotation: Any) -> Any:
    return () if "tuple" in str(annotation) else ""


def _at_least(key: str, seconds: float, least: float) -> None:
    if seconds < least:
        raise ConfigError(f"{key}: at least {least} seconds, got {seconds}")


def _check_address(key: str, value: str) -> None:
    local, _, domain = value.rpartition("@")
    if not local or not domain or any(c.isspace() for c in value):
        raise ConfigError(f"{key}: not a mail address: {value!r}")


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (or nothing) and the environment into Settings."""
    env = os.environ if env is None else env
    chosen = config_path(path, env)
    data = read_config(chosen, env)
    return settings_from_mapping(data, base=Path(chosen).parent if chosen else None)


def settings_from_mapping(data: Mapping[str, Any], base: Path | None = None) -> Settings:
    known_top = {*_SECTIONS, "database", "storage", "templates", "oncall", "imap"}
    for name in data:
        if name not in known_top:
            raise ConfigError(f"{name}: unknown section")
    values: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        if section in data:
            values[section] = _build(cls, section, data[section])
    support: SupportSettings = values.get("support", SupportSettings())
    _check_address("support.address", support.address)
    if support.operator_address:
        _check_address("support.operator_address", support.operator_address)
    for i, alias in enumerate(support.aliases):
        _check_address(f"support.aliases[{i}]", alias)
    if support.sender_policy not in ("open", "registered"):
        raise ConfigError("support.sender_policy: must be \"open\" or \"registered\"")
    agents: AgentSettings = values.get("agents", AgentSettings())
    for i, address in enumerate(agents.addresses):
        _check_address(f"agents.addresses[{i}]", address)
    for i, address in enumerate(agents.operators):
        _check_address(f"agents.operators[{i}]", address)
    known = {a.lower() for a in agents.addresses}
    agents = replace(agents, addresses=(
        *agents.addresses, *(a for a in agents.operators if a.lower() not in known)))
    values["agents"] = agents
    if agents.trust not in ("none", "authentication-results", "dkim"):
        raise ConfigError("agents.trust: must be \"none\", \"authentication-results\" or \"dkim\"")
    if agents.trust == "authentication-results" and not agents.trusted_authserv_id:
        raise ConfigError("agents.trusted_authserv_id: required when agents.trust is set")
    smtp: SmtpSettings = values.get("smtp", SmtpSettings())
    for i, network in enumerate(smtp.trusted_relays):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"smtp.trusted_relays[{i}]: not an address or network: {network!r}") from exc
    hours: HoursSettings = values.get("hours", HoursSettings())
    _check_hours(hours)
    web: WebSettings = values.get("web", WebSettings())
    if web.base_url and not re.fullmatch(r"https?://[^/\s?#@]+/?", web.base_url):
        raise ConfigError(f"web.base_url: expected http(s)://host[:port], got {web.base_url!r}")
    if web.port > 65535:
        raise ConfigError(f"web.port: not a port: {web.port}")
    monitoring: MonitoringSettings = values.get("monitoring", MonitoringSettings())
    if not 0 <= monitoring.port <= 65535:
        raise ConfigError(f"monitoring.port: not a port: {monitoring.port}")
    outbound: OutboundSettings = values.get("outbound", OutboundSettings())
    if outbound.relay:
        host, _, port = outbound.relay.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"outbound.relay: expected host:port, got {outbound.relay!r}")
    # A mail is held only this long while it is sent: with less, a second worker would
    # take a mail the first is still handing to the relay, and it would go out twice.
    _at_least("outbound.lease", outbound.lease, OUTBOX_LEASE_MIN)

    database = data.get("database", {})
    if database:
        if not isinstance(database, dict):
            raise ConfigError("database: expected a table")
        database = dict(database)
        if "retry" in database:
            retry = database.pop("retry")
            if isinstance(retry, bool) or not isinstance(retry, int | float) or retry <= 0:
                raise ConfigError(f"database.retry: expected seconds above 0, got {retry!r}")
            values["database_retry"] = float(retry)
        database = _plain_table("database", database, {"url"})
        values["database_url"] = database.get("url", "")
    storage = _plain_table("storage", data.get("storage", {}), {"path", "blobs"})
    if "path" in storage:
        values["storage_path"] = _resolve(storage["path"], base)
    if "blobs" in storage:
        if storage["blobs"] not in ("database", "folder"):
            raise ConfigError("storage.blobs: must be \"database\" or \"folder\"")
        values["storage_blobs"] = storage["blobs"]
    templates = _plain_table("templates", data.get("templates", {}), {"path", "override"})
    if "path" in templates:
        values["templates_path"] = _resolve(templates["path"], base)
    if "override" in templates:
        values["templates_override"] = _resolve(templates["override"], base)
    if "oncall" in data:
        values["oncall"] = _oncall(data["oncall"])
    if "imap" in data:
        values["imap"] = _imap(data["imap"])
    return Settings(**values)


def _plain_table(prefix: str, table: Any, keys: set[str]) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix}: expected a table")
    for name, value in table.items():
        if name not in keys:
            raise ConfigError(f"{prefix}.{name}: unknown key")
        if not isinstance(value, str):
            raise ConfigError(f"{prefix}.{name}: expected a string, got {value!r}")
    return dict(table)


def _resolve(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else (base / path).resolve()


def _check_hours(hours: HoursSettings) -> None:
    try:
        ZoneInfo(hours.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"hours.timezone: unknown time zone {hours.timezone!r}") from exc
    for name in ("start", "end"):
        value = getattr(hours, name)
        hh, _, mm = value.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ConfigError(f"hours.{name}: expected HH:MM, got {value!r}")
    if not hours.days:
        raise ConfigError("hours.days: name at least one working day")
    for day in hours.days:
        if day not in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
            raise ConfigError(f"hours.days: unknown day {day!r}")


def _oncall(table: Any) -> OncallSettings:
    if not isinstance(table, dict):
        raise ConfigError("oncall: expected a table")
    flat = {k: v for k, v in table.items() if k not in ("webhook", "pagerduty", "command")}
    oncall: OncallSettings = _build(OncallSettings, "oncall", flat)
    for level in oncall.page_on:
        if level not in ("S0", "S1", "S2", "S3"):
            raise ConfigError(f"oncall.page_on: unknown severity {level!r}")
    # Renewed every third of it: shorter, and a slow renewal would hand the page to
    # another worker while the hook is still being called.
    _at_least("oncall.lease", oncall.lease, PAGE_LEASE_MIN)
    hooks: dict[str, Any] = {}
    if "webhook" in table:
        hooks["webhook"] = _build(WebhookHook, "oncall.webhook", table["webhook"], ("url",))
    if "pagerduty" in table:
        hooks["pagerduty"] = _build(
            PagerDutyHook, "oncall.pagerduty", table["pagerduty"], ("routing_key",)
        )
    for name in ("webhook", "pagerduty"):
        url = hooks[name].url if name in hooks else "http://localhost"
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            # A page sent there would fail for good at the worst moment: say so at start.
            raise ConfigError(f"oncall.{name}.url: expected an http:// or https:// URL, "
                              f"got {url!r}")
    if "command" in table:
        hooks["command"] = _build(CommandHook, "oncall.command", table["command"], ("argv",))
        if not hooks["command"].argv:
            raise ConfigError("oncall.command.argv: must name a program")
    return replace(oncall, **hooks)


def _imap(value: Any) -> tuple[ImapMailbox, ...]:
    if not isinstance(value, list):
        raise ConfigError("imap: expected [[imap]] blocks")
    boxes = []
    for i, table in enumerate(value):
        box: ImapMailbox = _build(ImapMailbox, f"imap[{i}]", table, ("host", "user"))
        if box.security not in ("tls", "starttls", "none"):
            raise ConfigError(f"imap[{i}].security: must be tls, starttls or none")
        if "port" not in table and box.security != "tls":
            box = replace(box, port=143)
        boxes.append(box)
    return tuple(boxes)


def ensure_secret(settings: Settings) -> Settings:
    """Settings with a server secret: configured, or (SQLite only) made once and kept.

    Every machine sharing a database must sign reply addresses alike, so a shared
    database needs the secret in the config or the environment.
    """
    if settings.support.secret:
        return settings
    if not settings.database.startswith("sqlite"):
        raise ConfigError(
            "support.secret: required with a shared database; set it (or MAILGATE_SECRET) "
            "to the same value on every machine"
        )
    path = settings.storage_path / "secret"
    settings.storage_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked into place: a reader never sees
        # a half-written secret, and of two racing writers the first one's wins.
        temporary = path.with_name(f".secret.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    secret = path.read_text().strip()
    return settings.clone(support=replace(settings.support, secret=secret))
