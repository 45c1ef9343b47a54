"""The `mailgate` command: builds settings and collaborators, wires the subcommands."""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from mailgate import exitcodes
from mailgate.logs import setup_logging
from ticketing.inbound import Status
from ticketing.settings import ConfigError, Settings, load_settings

# The database layer takes most of a second to import: each command imports what it
# needs, so `mailgate deliver` can hand a mail to a running server without it.
if TYPE_CHECKING:
    from mailgate.serve import CannotListen
    from ticketing.audit import Actor
    from ticketing.desk import Desk

log = logging.getLogger("mailgate")


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text(data))


def _age(created_at: str | None, now: datetime) -> str:
    """How long ago, in the largest whole unit: 45m, 5h, 3d."""
    if not created_at:
        return "-"
    created = datetime.fromisoformat(created_at)
    if created.tzinfo is None:  # stored in UTC
        created = created.replace(tzinfo=UTC)
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ticket_lines(tickets: list[dict[str, Any]], now: datetime) -> str:
    if not tickets:
        return "no tickets"
    rows = [{**t, "number": f"#{t['number']}", "age": _age(t["created_at"], now)} for t in tickets]
    return _table(rows, (("TICKET", "number"), ("SEV", "severity"), ("STATUS", "status"),
                         ("ASSIGNEE", "assignee"), ("AGE", "age"), ("REQUESTER", "requester"),
                         ("SUBJECT", "subject")))


def _cell(value: Any) -> str:
    """A value as an operator reads it: addresses joined by commas, '-' for nothing."""
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    if value is None or value == "":
        return "-"
    return " ".join(str(value).split())


def _table(records: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A header row and one aligned row per record; the last column runs on."""
    cells = [[header for header, _ in columns]]
    cells += [[_cell(r.get(key)) for _, key in columns] for r in records]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in cells
    )


def _ticket_text(t: dict[str, Any]) -> str:
    from ticketing.audit import describe

    lines = [
        f"Ticket #{t['number']}: {t['subject']}",
        f"  severity {t['severity']}, status {t['status']}, assignee {t['assignee'] or '-'}",
        f"  requester {t['requester']}; participants: {', '.join(t['participants'])}",
        f"  opened {t['created_at']}",
    ]
    for m in t["messages"]:
        lines.append("")
        lines.append(f"--- {m['created_at']} {m['kind']} from {m['from']}")
        lines.append(m["text"] or "(no text)")
        for a in m["attachments"]:
            lines.append(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    if t["audit"]:
        lines.append("")
        lines.append("History:")
        lines.extend(f"  {describe(event)}" for event in t["audit"])
    if t["sent"]:
        lines.append("")
        for o in t["sent"]:
            lines.append(f"sent {o['kind']} to {', '.join(o['recipients'])}: {o['status']}")
    return "\n".join(lines)


def _rows(records: list[dict[str, Any]], keys: Sequence[str]) -> str:
    if not records:
        return "nothing"
    return _table(records, [(k.upper().replace("_", " "), k) for k in keys])


def _desk(settings: Settings, check_schema: bool = True) -> Desk:
    from ticketing.db import schema_state
    from ticketing.desk import Desk

    desk = Desk.create(settings)
    if check_schema:
        state = schema_state(desk.engine)
        if state != "current":
            raise ConfigError(
                f"the database schema is {state} (database.url = {_shown(settings.database)}); "
                "run `mailgate init` to create or upgrade it"
            )
    return desk


def _shown(url: str) -> str:
    """A database URL fit for a log or a bounce: no password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    from ticketing.db import make_engine, migrate, schema_state

    engine = make_engine(settings.database)
    before = schema_state(engine)
    migrate(engine)
    settings.storage_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"mailgate: database {'created' if before == 'empty' else 'up to date'}: "
          f"{_shown(settings.database)}")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.serve import serve

    if settings.agents.addresses and settings.agents.trust == "none":
        log.warning("agents.trust is \"none\": mail claiming to be from an agent address is "
                    "believed without authentication (see README: agent authentication)")
    if settings.agents.trust == "authentication-results" and not settings.smtp.trusted_relays:
        log.warning("agents.trust is \"authentication-results\" and smtp.trusted_relays is "
                    "empty: Authentication-Results on mail to the SMTP listener are ignored "
                    "(only the pipe and IMAP routes are believed)")
    from ticketing.compose import Templates

    problem = Templates(settings).problem()
    if problem is not None:
        # Mail taken in but never answered is worse than a server that does not start.
        raise ConfigError(f"{problem}; not starting")
    from mailgate.heap import return_large_buffers

    return_large_buffers()
    desk = _desk(settings, check_schema=False)
    _wait_for_database(desk)
    asyncio.run(serve(desk))
    return 0


def _wait_for_database(desk: Desk) -> None:
    """Check the schema, waiting first for a database server that does not answer yet
    (it may be starting too): one line says so, not a traceback each time a supervisor
    restarts us. A schema to create or upgrade still stops serve."""
    import time

    from sqlalchemy.exc import DBAPIError

    from ticketing.db import StorageError, schema_state

    url = desk.settings.database
    retry = desk.settings.database_retry
    told = False
    while True:
        try:
            state = schema_state(desk.engine)
            break
        except (DBAPIError, StorageError) as exc:
            if url.startswith("sqlite"):
                raise  # a file, not a server: nothing to wait for
            if not told:
                reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
                log.warning("database not reachable at %s: retrying every %g s (%s)",
                            _shown(url), retry, reason)
                told = True
            time.sleep(retry)
    if told:
        log.info("database reachable at %s: starting", _shown(url))
    if state != "current":
        raise ConfigError(
            f"the database schema is {state} (database.url = {_shown(url)}); "
            "run `mailgate init` to create or upgrade it"
        )


def cmd_deliver(settings: Settings, args: argparse.Namespace) -> int:
    # Postfix passes an empty ${sender} for the null sender of a bounce.
    sender = "<>" if args.sender == "" else (args.sender or "")
    recipient = args.recipient or settings.support.address
    if args.stdin is not None:  # read already, and no server answered for it
        return _deliver_here(settings, io.BytesIO(args.stdin), args.recipient or "", sender)
    if args.sender is not None:  # the envelope is known: a running server can take it
        from mailgate.handoff import hand_over

        raw = sys.stdin.buffer.read(settings.smtp.max_message_size + 1)
        if not raw.strip():
            print("mailgate deliver: empty message on stdin", file=sys.stderr)
            return exitcodes.EX_DATAERR
        code = hand_over(settings.smtp.host, settings.smtp.port, raw, recipient, sender)
        if code is not None:
            return code
        return _deliver_here(settings, io.BytesIO(raw), args.recipient or "", sender)
    return _deliver_here(settings, sys.stdin.buffer, args.recipient or "", sender)


def _deliver_here(settings: Settings, stream: BinaryIO, recipient: str, sender: str) -> int:
    try:
        desk = _desk(settings)
    except ConfigError as exc:
        # Not EX_CONFIG: MTAs bounce that for good, and a deploy's mistake would
        # return every customer's mail. Deferred, it waits in the queue for the fix.
        print(f"mailgate deliver: {exc}", file=sys.stderr)
        return exitcodes.EX_TEMPFAIL
    except Exception as exc:  # the database does not answer: the MTA retries
        print(f"mailgate deliver: storage unavailable: {type(exc).__name__}", file=sys.stderr)
        return exitcodes.EX_TEMPFAIL
    from mailgate import pipe

    return pipe.deliver(desk, stream, recipient, sender)


def cmd_fetch(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.imap import ImapFetcher
    from ticketing.ingest import ingest

    if not settings.imap:
        print("mailgate fetch: no [[imap]] mailbox configured", file=sys.stderr)
        return exitcodes.EX_CONFIG
    desk = _desk(settings)
    fetchers = [ImapFetcher(box, desk.engine, partial(ingest, desk), desk.clock)
                for box in settings.imap]
    if args.once:
        total = 0
        for fetcher in fetchers:
            try:
                total += fetcher.fetch_once()
            finally:
                fetcher.close()
        print(f"mailgate fetch: {total} message(s) ingested")
        for fetcher in fetchers:
            if fetcher.standing_by:
                print(f"mailgate fetch: {fetcher.box.key} is being fetched by another "
                      "process (a running serve?); left to it", file=sys.stderr)
        if any(f.storage_fault for f in fetchers):
            return 1
        return exitcodes.EX_TEMPFAIL if any(f.standing_by for f in fetchers) else 0

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await asyncio.gather(*(f.run(stop) for f in fetchers))

    asyncio.run(run())
    return 0


def cmd_tickets(settings: Settings, args: argparse.Namespace) -> int:
    from ticketing.commands import STATUSES
    from ticketing.db import transaction
    from ticketing.reports import list_tickets, show_ticket

    if args.action == "list" and args.status is not None and args.status not in STATUSES:
        print(f"mailgate: tickets list: --status must be one of {', '.join(STATUSES)}, "
              f"not {args.status!r}", file=sys.stderr)
        return exitcodes.EX_USAGE
    desk = _desk(settings)
    with transaction(desk.engine) as session:
        if args.action == "list":
            now = datetime.now(UTC)
            tickets = list_tickets(session, args.status, severity=args.severity,
                                   assignee=args.assignee)
            _print(tickets, args.json, lambda t: _ticket_lines(t, now))
            return 0
        ticket = show_ticket(session, args.number)
    if ticket is None:
        print(f"mailgate: no ticket #{args.number}", file=sys.stderr)
        return 1
    _print(ticket, args.json, _ticket_text)
    return 0


def _incident_text(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return "no incidents"
    rows = [{**i, "number": f"{i['number']}", "tickets": [f"#{t}" for t in i["tickets"]]}
            for i in incidents]
    return _table(rows, (("INCIDENT", "number"), ("STATE", "state"), ("COMPONENTS", "components"),
                         ("TICKETS", "tickets"), ("UPDATED", "updated_at"), ("TITLE", "title")))


def cmd_incidents(settings: Settings, args: argparse.Namespace) -> int:
    from ticketing.db import transaction
    from ticketing.incident_mail import open_and_tell, update_and_tell
    from ticketing.incidents import IncidentError, NoIncident, list_incidents

    desk = _desk(settings)
    author = os.environ.get("USER", "") or "operator"
    if args.action == "list":
        with transaction(desk.engine) as session:
            _print(list_incidents(session), args.json, _incident_text)
        return 0
    try:
        if args.action == "open":
            components = [c for c in (args.components or "").split(",") if c.strip()]
            shown, told = open_and_tell(desk, args.title, components=components,
                                        state=args.state, message=args.message, author=author)
        else:
            shown, told = update_and_tell(
                desk, args.number,
                state="resolved" if args.action == "resolve" else args.state,
                message=args.message or "", author=author,
                tell_tickets=getattr(args, "tell_tickets", False))
    except NoIncident as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 1
    except IncidentError as exc:
        print(f"mailgate: incidents {args.action}: {exc}", file=sys.stderr)
        return exitcodes.EX_USAGE
    print(f"incident {shown['number']}: {shown['state']}: {shown['title']}")
    print(f"mailed to {told.subscribers} subscriber(s)"
          + (f", {told.withheld} left out (bouncing or over their hourly limit)"
             if told.withheld else ""))
    if told.tickets:
        print("told tickets " + ", ".join(f"#{n}" for n in told.tickets))
    return 0


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from mailgate.outbound import retry_now
    from ticketing.db import transaction
    from ticketing.reports import list_outbox

    desk = _desk(settings)
    if args.action == "retry":
        count = retry_now(desk, None if args.all else args.id, by=_operator())
        print(f"mailgate: {count} mail(s) due now")
        return 0
    with transaction(desk.engine) as session:
        records = list_outbox(session, args.status)
    _print(records, args.json, lambda r: _rows(r, ("id", "ticket", "kind", "status", "attempts",
                                                   "recipients", "last_error")))
    return 0


def cmd_pages(settings: Settings, args: argparse.Namespace) -> int:
    from mailgate.paging import PageBusy, list_pages, retry_page
    from ticketing.db import transaction

    desk = _desk(settings)
    if args.action == "retry":
        try:
            count = retry_page(desk.engine, args.id, desk.clock.now(), by=_operator())
        except PageBusy as exc:
            print(f"mailgate: {exc}", file=sys.stderr)
            return 1
        print(f"mailgate: {count} page(s) due now")
        return 0
    with transaction(desk.engine) as session:
        records = list_pages(session)
    _print(records, args.json, lambda r: _rows(r, ("id", "ticket", "hook", "action", "status",
                                                   "attempts", "last_error")))
    return 0


def cmd_inbound(settings: Settings, args: argparse.Namespace) -> int:
    from ticketing.db import transaction
    from ticketing.ingest import release, replay
    from ticketing.reports import list_inbound

    desk = _desk(settings)
    if args.action == "list":
        with transaction(desk.engine) as session:
            records = list_inbound(session, args.all)
        _print(records, args.json, lambda r: _rows(r, ("id", "status", "kind", "route", "from",
                                                       "subject", "detail", "error")))
        return 0
    ident = args.id.lstrip("qm")
    if not ident.isdigit():
        print(f"mailgate: not an inbound id: {args.id}", file=sys.stderr)
        return 2
    try:
        outcome = replay(desk, int(ident)) if args.action == "replay" else release(desk, int(ident))
    except (LookupError, FileNotFoundError) as exc:  # no such mail, or its file is not here
        print(f"mailgate: {args.id}: {exc}", file=sys.stderr)
        return 1
    print(f"mailgate: {outcome.status}{f' #{outcome.ticket}' if outcome.ticket else ''} "
          f"{outcome.detail}")
    return 0 if outcome.status is not Status.QUARANTINED else 1


def cmd_storage(settings: Settings, args: argparse.Namespace) -> int:
    from ticketing.blobs import FolderBlobs, move_to_database

    desk = _desk(settings)
    folder = FolderBlobs(settings.storage_path / "blobs")
    done = move_to_database(desk.engine, folder, remove=args.remove)
    print(f"mailgate: {done.moved} file(s) copied from {folder.root} into the database, "
          f"{done.present} there already{'; removed from the folder' if args.remove else ''}")
    for sha256 in done.damaged:
        print(f"mailgate: {folder.path(sha256)}: its bytes do not match its name; left "
              "where it is", file=sys.stderr)
    if settings.blob_store != "database":
        print("mailgate: storage.blobs is \"folder\": set it to \"database\" to read and "
              "write files there", file=sys.stderr)
    return 1 if done.damaged else 0


def cmd_people(settings: Settings, args: argparse.Namespace) -> int:
    from sqlmodel import select

    from ticketing.db import transaction
    from ticketing.models import Account, Agent
    desk = _desk(settings)
    now = datetime.now(UTC)
    table: type[Agent] | type[Account] = Agent if args.command == "agents" else Account
    with transaction(desk.engine) as session:
        if args.command == "accounts" and args.action in ("add", "disable"):
            from ticketing.accounts import add_account, disable_account

            if args.action == "disable":
                done = disable_account(session, args.address, now, by=_operator())
                print(f"mailgate: account {args.address} "
                      f"{'disabled; its sessions ended' if done else 'does not exist'}")
                return 0 if done else 1
            try:
                account = add_account(session, args.address, args.name or "", now,
                                      by=_operator())
            except ValueError as exc:
                print(f"mailgate: {exc}", file=sys.stderr)
                return 2
            print(f"mailgate: account {account.address} added; it signs in at "
                  f"{settings.web.url}/sign-in with a link mailed to it")
            return 0
        if args.action == "add":
            from ticketing.roles import add_agent

            try:
                agent = add_agent(session, args.address, args.name or "", now,
                                  operator=args.operator, by=_operator())
            except ValueError as exc:
                print(f"mailgate: {exc}", file=sys.stderr)
                return 2
            print(f"mailgate: agent {agent.address} added"
                  f"{' (an operator)' if agent.operator else ''}")
            return 0
        if args.action == "clear-bounce":
            return _clear_bounce(session, args)
        if table is Account:
            from ticketing.accounts import list_accounts

            records = list_accounts(session)
        else:
            rows = session.exec(select(table).order_by(table.address)).all()
            records = [r.model_dump(mode="json") for r in rows]
    if table is Agent:
        records = _with_configured_agents(settings, records)
    keys = ("address", "name", "operator", "source") if table is Agent else (
        "address", "name", "bouncing_since", "bounce_detail")
    _print(records, args.json, lambda r: _rows(r, keys))
    return 0


def _with_configured_agents(settings: Settings, records: list[dict[str, Any]]
                            ) -> list[dict[str, Any]]:
    """Agents named in agents.addresses as well as those added with `agents add`; an
    operator is one named in agents.operators or added with --operator."""
    configured = {a.strip().lower() for a in settings.agents.addresses}
    operators = {a.strip().lower() for a in settings.agents.operators}
    merged = {r["address"]: {**r, "source": "config" if r["address"] in configured else "added"}
              for r in records}
    for address in configured - merged.keys():
        merged[address] = {"address": address, "name": "", "operator": False, "source": "config"}
    for address, record in merged.items():
        record["operator"] = bool(record["operator"]) or address in operators
    return [merged[a] for a in sorted(merged)]


def _clear_bounce(session: Any, args: argparse.Namespace) -> int:
    from ticketing.accounts import clear_bounces

    if args.all == bool(args.address):
        print("mailgate: accounts clear-bounce takes one address or --all", file=sys.stderr)
        return exitcodes.EX_USAGE
    cleared = clear_bounces(session, args.address, by=_operator())
    if args.address:
        print(f"mailgate: {args.address} {'cleared' if cleared else 'was not bouncing'}")
    else:
        print(f"mailgate: {len(cleared)} address(es) cleared")
    return 0


def _operator() -> Actor:
    """Who runs an operator's command, for the audit trail: the login name."""
    from ticketing.audit import Actor

    return Actor(os.environ.get("USER", "") or "operator", route="cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong argument is one line and EX_USAGE (64), not usage text and 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.EX_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="mailgate",
        description="Email-ingest support ticketing: every support mail a ticket or a reply on one.",
    )
    root.add_argument("--config", help="TOML file (default: $MAILGATE_CONFIG, else built-in)")
    root.add_argument("-v", "--verbose", action="store_true")
    root.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create or upgrade the database").set_defaults(run=cmd_init)
    sub.add_parser("serve", help="SMTP, the web Help Desk, IMAP, outbound, paging").set_defaults(
        run=cmd_serve)
    deliver = sub.add_parser("deliver", help="one mail on stdin (MTA pipe)")
    deliver.add_argument("--recipient", help="envelope recipient")
    deliver.add_argument("--sender", help="envelope sender")
    deliver.set_defaults(run=cmd_deliver)
    fetch = sub.add_parser("fetch", help="IMAP only")
    fetch.add_argument("--once", action="store_true", help="fetch what is there and exit")
    fetch.set_defaults(run=cmd_fetch)

    tickets = sub.add_parser("tickets", help="list and show tickets").add_subparsers(
        dest="action", required=True)
    listing = tickets.add_parser("list")
    listing.add_argument("--status", help="open, pending, solved or closed")
    listing.add_argument("--severity", choices=("S0", "S1", "S2", "S3"), type=str.upper)
    listing.add_argument("--assignee", type=_address_argument,
                         help="an agent's address, or - for tickets nobody has taken")
    show = tickets.add_parser("show")
    show.add_argument("number", type=int)
    for p in (listing, show):
        p.add_argument("--json", action="store_true")
        p.set_defaults(run=cmd_tickets)

    incidents = sub.add_parser("incidents", help="the status page's incidents").add_subparsers(
        dest="action", required=True)
    opening = incidents.add_parser("open", help="open an incident with its first update")
    opening.add_argument("title")
    opening.add_argument("--components", default="", help="comma-separated, from [status]")
    opening.add_argument("--state", default="investigating")
    opening.add_argument("--message", required=True)
    update = incidents.add_parser("update", help="post an update, perhaps with a new state")
    update.add_argument("number", type=int)
    update.add_argument("--state", default=None)
    update.add_argument("--message", default="")
    resolve = incidents.add_parser("resolve", help="mark it resolved")
    resolve.add_argument("number", type=int)
    resolve.add_argument("--message", default="")
    resolve.add_argument("--tell-tickets", action="store_true",
                         help="answer each attached ticket that the incident is resolved")
    listing = incidents.add_parser("list")
    listing.add_argument("--json", action="store_true")
    for p in (opening, update, resolve, listing):
        p.set_defaults(run=cmd_incidents)

    outbox = sub.add_parser("outbox", help="inspect and retry outgoing mail").add_subparsers(
        dest="action", required=True)
    listing = outbox.add_parser("list")
    listing.add_argument("--status", choices=("pending", "sent", "failed"))
    listing.add_argument("--json", action="store_true")
    retry = outbox.add_parser("retry")
    retry.add_argument("id", type=int, nargs="?")
    retry.add_argument("--all", action="store_true")
    for p in (listing, retry):
        p.set_defaults(run=cmd_outbox)

    pages = sub.add_parser("pages", help="inspect and retry on-call pages").add_subparsers(
        dest="action", required=True)
    listing = pages.add_parser("list")
    listing.add_argument("--json", action="store_true")
    retry = pages.add_parser("retry")
    retry.add_argument("id", type=int)
    for p in (listing, retry):
        p.set_defaults(run=cmd_pages)

    inbound = sub.add_parser("inbound", help="quarantined, held and classified mail")
    actions = inbound.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="every stored mail, not only those "
                         "that made no ticket")
    listing.set_defaults(run=cmd_inbound)
    for name, help_text in (("replay", "run a quarantined mail (q<N>) through ingest again"),
                            ("release", "open a ticket from held mail (m<N>)")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("id")
        action.set_defaults(run=cmd_inbound)

    storage = sub.add_parser("storage", help="where raw mail and attachments are kept")
    storage_actions = storage.add_subparsers(dest="action", required=True)
    migrate = storage_actions.add_parser(
        "migrate-blobs", help="copy the files of storage.path/blobs into the database, "
        "so every machine sharing it can read them")
    migrate.add_argument("--remove", action="store_true",
                         help="delete each file from the folder once it is in the database")
    migrate.set_defaults(run=cmd_storage)

    for name in ("agents", "accounts"):
        people = sub.add_parser(name, help=f"list and add {name}").add_subparsers(
            dest="action", required=True)
        add = people.add_parser("add")
        add.add_argument("address")
        add.add_argument("--name")
        if name == "agents":
            add.add_argument("--operator", action=argparse.BooleanOptionalAction, default=None,
                             help="also give the operators' web pages (--no-operator: take "
                             "them away)")
        listing = people.add_parser("list")
        listing.add_argument("--json", action="store_true")
        choices = [add, listing]
        if name == "accounts":
            clear = people.add_parser("clear-bounce", help="mail this address (or --all) again")
            clear.add_argument("address", nargs="?", default="")
            clear.add_argument("--all", action="store_true", help="every bouncing address")
            disable = people.add_parser("disable", help="no more signing in; ends its sessions")
            disable.add_argument("address")
            choices += [clear, disable]
        for p in choices:
            p.set_defaults(run=cmd_people)
    _config_after_the_command(root)
    return root


def _address_argument(value: str) -> str:
    from ticketing.addresses import normalize

    if value == "-":
        return value
    address = normalize(value)
    if not address:
        raise argparse.ArgumentTypeError(f"not an address: {value!r}")
    return address


def _config_after_the_command(parser: argparse.ArgumentParser) -> None:
    """`mailgate tickets list --config FILE` as well as `mailgate --config FILE tickets list`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--config", default=argparse.SUPPRESS, help="TOML file")
                _config_after_the_command(child)


class _Version(argparse.Action):
    """`--version`, looking the version up only when asked: the lookup costs every call."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"mailgate {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailgate")
    except PackageNotFoundError:
        return "unknown"


def _listen_problem(exc: CannotListen) -> tuple[str, int]:
    """One line and an exit code for a listener that cannot take its address."""
    where = f"cannot listen for {exc.what} on {exc.host}:{exc.port}"
    if exc.error.errno == errno.EADDRINUSE:
        return f"{where}: the address is in use (is another mailgate serve running?)", \
            exitcodes.EX_UNAVAILABLE
    if exc.error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges)", \
            exitcodes.EX_NOPERM
    if exc.error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: this machine has no such address", exitcodes.EX_CONFIG
    return f"{where}: {exc.error.strerror or exc.error}", exitcodes.EX_OSERR


def _database_problem(exc: BaseException, settings: Settings | None) -> str | None:
    """One line for a database that does not answer or refuses us, else None."""
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")
    db = sys.modules.get("ticketing.db")
    if db is not None and isinstance(exc, db.StorageError):
        detail = str(exc)
    elif sqlalchemy_errors is not None and isinstance(
        exc, sqlalchemy_errors.OperationalError | sqlalchemy_errors.InterfaceError
    ):
        detail = str(exc.orig or exc).strip()
    else:
        return None
    detail = detail.splitlines()[0] if detail else type(exc).__name__
    where = f" {_shown(settings.database)}" if settings is not None else ""
    return f"database{where}: {detail}"


def main(argv: Sequence[str] | None = None, stdin: bytes | None = None) -> int:
    """Run one command; `stdin` is a mail `deliver` has read already and must store here."""
    args = parser().parse_args(argv)
    args.stdin = stdin
    setup_logging(args.verbose)
    settings: Settings | None = None
    try:
        settings = load_settings(args.config)
        return int(args.run(settings, args))
    except ConfigError as exc:
        print(f"mailgate: configuration: {exc}", file=sys.stderr)
        # `deliver` must never make the MTA bounce a customer's mail over our config.
        return exitcodes.EX_TEMPFAIL if args.command == "deliver" else exitcodes.EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing left to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.EX_IOERR
    except Exception as exc:
        serve = sys.modules.get("mailgate.serve")
        if serve is not None and isinstance(exc, serve.CannotListen):
            line, code = _listen_problem(exc)
            print(f"mailgate: {line}", file=sys.stderr)
            return code
        problem = _database_problem(exc, settings)
        if problem is None:
            raise
        print(f"mailgate: {problem}", file=sys.stderr)
        return exitcodes.EX_TEMPFAIL if args.command == "deliver" else exitcodes.EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
