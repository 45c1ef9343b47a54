"""IMAP fetcher: new mail by UID -> ingest -> move or flag it, only after the commit."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from mailgate.backoff import backoff
from ticketing.clock import Clock
from ticketing.db import StorageError, transaction
from ticketing.inbound import Inbound, Outcome
from ticketing.leases import MAILBOXES, holder_name, this_process
from ticketing.models import MailboxState
from ticketing.settings import ConfigError, ImapMailbox

log = logging.getLogger(__name__)

Ingest = Callable[[Inbound], Outcome]

# A dropped or refused connection: imaplib's error/abort, sockets, TLS.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (IMAPClientError, OSError, EOFError)

TIMEOUT = 60.0  # seconds for connecting and for each server answer
LEASE_MIN = 120.0  # seconds a fetcher holds its mailbox past each pass, at the least
# The longest wait between passes; IDLE is issued again after it, well inside the
# 29 minutes after which a server may log us off (RFC 2177 section 3).
MAX_WAIT = 300.0
STANDBY = 60.0  # at most this long between looks at a mailbox another fetcher holds
TOKEN_COMMAND_TIMEOUT = 60.0


class Halt(threading.Event):
    """A fetcher's stop flag that a wait in select() sees at once: setting it also makes
    a socket of its own readable."""

    def __init__(self) -> None:
        super().__init__()
        self._reader, self._writer = socket.socketpair()

    def set(self) -> None:
        super().set()
        with suppress(OSError):
            self._writer.send(b"\0")

    def fileno(self) -> int:
        return self._reader.fileno()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def mailbox_password(box: ImapMailbox, env: Mapping[str, str] | None = None) -> str:
    """The password from the environment variable named by password_env, or the configured one."""
    if box.password_env:
        env = os.environ if env is None else env
        value = env.get(box.password_env, "")
        if not value:
            raise ConfigError(f"imap password_env: {box.password_env} is not set ({box.key})")
        return value
    return box.password


def oauth2_token(box: ImapMailbox) -> str:
    """An XOAUTH2 access token: the standard output of oauth2_token_command, or the token file."""
    if box.oauth2_token_command:
        result = subprocess.run(
            list(box.oauth2_token_command),
            capture_output=True,
            check=True,
            timeout=TOKEN_COMMAND_TIMEOUT,
        )
        token = result.stdout.decode("utf-8", "replace").strip()
    else:
        token = Path(box.oauth2_token_file).expanduser().read_text(encoding="utf-8").strip()
    if not token:
        raise OSError(f"empty OAuth2 token for {box.key}")
    return token


def message_id(raw: bytes) -> str:
    """The Message-ID for log lines, read from the header block only."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    header = raw if end < 0 else raw[:end]
    value = BytesHeaderParser(policy=compat32).parsebytes(header).get("Message-ID")
    text = " ".join(str(value or "").split())[:200]
    return text or "(no Message-ID)"


class ImapFetcher:
    """One mailbox: fetch what is new by UID, ingest it, then move or flag it on the server."""

    reconnect_base = 1.0  # seconds before the first reconnect; doubles up to reconnect_cap
    reconnect_cap = 300.0

    def __init__(self, box: ImapMailbox, engine: Engine, ingest: Ingest, clock: Clock,
                 holder: str = "") -> None:
        self.box = box
        self.engine = engine
        self.ingest = ingest
        self.clock = clock
        self.route = f"imap:{box.key}"
        self.holder = holder_name(holder or this_process())
        # The longest wait between passes, and the lease: a few of those waits, renewed
        # at each pass and before each message.
        self.between = max(0.1, min(box.poll_interval or MAX_WAIT, MAX_WAIT))
        self.lease = timedelta(seconds=max(LEASE_MIN, 3 * self.between))
        # True when the last fetch_once found the mailbox held by another fetcher.
        self.standing_by = False
        self._told_held: str | None = None
        # True when the last fetch_once stopped at a storage fault: the rest waits for a retry.
        self.storage_fault = False
        self._client: Any = None
        self._move_to_ready = False

    # -- one pass -------------------------------------------------------------------------

    def fetch_once(self) -> int:
        """Connect if needed and ingest every message past the last UID done; how many.

        Nothing when another process holds the mailbox: several `serve` processes on one
        database take turns, one at a time, so no message is fetched twice.
        """
        self.storage_fault = False
        if not self._holding():
            return 0
        client = self._connect()
        status = client.select_folder(self.box.folder)
        uidvalidity = int(status[b"UIDVALIDITY"])
        last = self._position(uidvalidity)
        uidnext = status.get(b"UIDNEXT")
        if uidnext is not None and int(uidnext) <= last + 1:
            return 0
        ingested = 0
        while True:
            # "N:*" always matches the highest UID, even one below N (RFC 3501 section 6.4.8).
            uids = sorted(int(u) for u in client.search(["UID", f"{last + 1}:*"]) if u > last)
            if not uids:
                return ingested
            batch = uids[: max(1, self.box.batch_size)]
            sizes = client.fetch(batch, ["RFC822.SIZE"])
            for uid in batch:
                # A long pass (a backlog, large mails) renews its lease as it goes, and
                # stops if another fetcher took the mailbox meanwhile.
                if not self._holding():
                    return ingested
                size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
                taken = self._take(client, uidvalidity, uid, size)
                if taken is None:
                    self.storage_fault = True
                    return ingested
                ingested += taken
                last = uid

    def _take(self, client: Any, uidvalidity: int, uid: int, size: int) -> int | None:
        """One message: 1 ingested, 0 skipped, None for a storage fault (left for a retry)."""
        # Bodies one at a time so several large messages are never held together;
        # BODY.PEEK leaves \Seen alone until the mail is stored (RFC 3501 section 6.4.5).
        data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {})
        raw = data.get(b"BODY[]")
        if raw is None:
            log.info("%s: uid %d vanished before it was fetched", self.box.key, uid)
            self._record_position(uidvalidity, uid)
            return 0
        mid = message_id(raw)
        # A large mail on a slow link takes a while: hold on, or leave it to whoever
        # took the mailbox meanwhile.
        if not self._holding():
            return 0
        try:
            outcome = self.ingest(Inbound(bytes(raw), route=self.route))
        except StorageError as exc:
            log.warning("%s: uid %d in %s: storage fault, left for a retry: %s",
                        mid, uid, self.box.key, exc)
            return None
        except Exception:
            # Ingest quarantines bad mail itself; this is a bug. Leave the message where it
            # is for an operator and go on, so it never blocks the mail behind it.
            log.exception("%s: uid %d in %s: ingest failed; the message is left in the folder",
                          mid, uid, self.box.key)
            self._record_position(uidvalidity, uid)
            return 0
        del raw, data
        self._settle(client, uid)
        self._record_position(uidvalidity, uid)
        log.info("%s: uid %d (%d bytes) from %s: %s%s", mid, uid, size, self.box.key,
                 outcome.status, f" #{outcome.ticket}" if outcome.ticket else "")
        return 1

    def _settle(self, client: Any, uid: int) -> None:
        """After the commit: move the message to move_to, or mark it \\Seen and leave it."""
        target = self.box.move_to
        if not target:
            client.add_flags([uid], [SEEN], silent=True)
            return
        self._ensure_move_to(client)
        if client.has_capability("MOVE"):
            client.move([uid], target)  # RFC 6851
            return
        client.copy([uid], target)
        client.add_flags([uid], [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge([uid])  # RFC 4315: only this message
        else:
            client.expunge()

    def _ensure_move_to(self, client: Any) -> None:
        if self._move_to_ready:
            return
        if not client.folder_exists(self.box.move_to):
            try:
                client.create_folder(self.box.move_to)
            except IMAPClientError:
                if not client.folder_exists(self.box.move_to):  # made meanwhile by another client?
                    raise
        self._move_to_ready = True

    # -- who works the mailbox --------------------------------------------------------------

    def _holding(self) -> bool:
        """Take or renew the lease; without it, let go of the connection and stand by."""
        self.standing_by = not self._hold()
        if self.standing_by:
            self._drop()
        return not self.standing_by

    def _hold(self) -> bool:
        """Take or renew the mailbox's lease; False while another fetcher holds it."""
        now = self.clock.now()
        key = self.box.key
        try:
            with transaction(self.engine) as session:
                taken = session.execute(
                    update(MailboxState)
                    .where(col(MailboxState.key) == key,
                           or_(MAILBOXES.held_by(self.holder), MAILBOXES.free(now)))
                    .values(MAILBOXES.take(self.holder, now + self.lease))
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    self._told_held = None
                    return True
                state = session.get(MailboxState, key)
                if state is None:
                    session.add(MailboxState(key=key, updated_at=now,
                                             **MAILBOXES.take(self.holder, now + self.lease)))
                    self._told_held = None
                    return True
                holder, until = state.held_by, state.held_until
        except IntegrityError:
            return False  # another fetcher made the row this moment: it holds the mailbox
        if self._told_held != holder:
            log.info("%s: worked by %s (lease until %s); standing by", key, holder, until)
            self._told_held = holder
        return False

    def _release(self) -> None:
        """Let another fetcher take the mailbox at once (on a clean stop)."""
        try:
            with transaction(self.engine) as session:
                session.execute(
                    update(MailboxState)
                    .where(col(MailboxState.key) == self.box.key,
                           MAILBOXES.held_by(self.holder))
                    .values(MAILBOXES.let_go())
                )
        except Exception:  # stopping anyway: the lease runs out on its own
            log.warning("%s: could not release the mailbox", self.box.key, exc_info=True)

    # -- where we stand -------------------------------------------------------------------

    def _position(self, uidvalidity: int) -> int:
        """The last UID done under this UIDVALIDITY; a new UIDVALIDITY starts over at 1."""
        with transaction(self.engine) as session:
            state = session.get(MailboxState, self.box.key)
            if state is None:
                session.add(MailboxState(key=self.box.key, uidvalidity=uidvalidity, last_uid=0,
                                         updated_at=self.clock.now()))
                return 0
            if state.uidvalidity != uidvalidity:
                # RFC 3501 section 2.3.1.1: the old UIDs mean nothing now. Reading everything
                # again is safe: ingest stores a Message-ID once. (0: never read yet.)
                if state.uidvalidity:
                    log.warning("%s: UIDVALIDITY changed from %d to %d; reading the folder "
                                "again", self.box.key, state.uidvalidity, uidvalidity)
                state.uidvalidity = uidvalidity
                state.last_uid = 0
                state.updated_at = self.clock.now()
                session.add(state)
            return state.last_uid

    def _record_position(self, uidvalidity: int, uid: int) -> None:
        """Where we stand, and the lease renewed; only while we hold the mailbox, so a
        fetcher that lost it in a long take never moves the new holder's place back."""
        now = self.clock.now()
        with transaction(self.engine) as session:
            done = session.execute(
                update(MailboxState)
                .where(col(MailboxState.key) == self.box.key, MAILBOXES.held_by(self.holder))
                .values(uidvalidity=uidvalidity, last_uid=uid, updated_at=now,
                        **MAILBOXES.take(self.holder, now + self.lease))
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                log.warning("%s: uid %d done, but another fetcher took the mailbox "
                            "meanwhile; it goes on from its own place", self.box.key, uid)

    # -- the connection -------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        box = self.box
        context = ssl.create_default_context()
        client = IMAPClient(box.host, box.port, ssl=box.security == "tls",
                            ssl_context=context if box.security == "tls" else None,
                            timeout=TIMEOUT)
        try:
            if box.security == "starttls":
                client.starttls(context)
            if box.oauth2_token_command or box.oauth2_token_file:
                client.oauth2_login(box.user, oauth2_token(box))
            else:
                client.login(box.user, mailbox_password(box))
        except BaseException:
            _shutdown(client)
            raise
        self._client = client
        self._move_to_ready = False
        return client

    def close(self) -> None:
        """Log out and close the connection, if there is one, and let the mailbox go."""
        self._release()
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            _shutdown(client)

    def _drop(self) -> None:
        """Close a connection that failed, without a LOGOUT that could wait on a dead peer."""
        client, self._client = self._client, None
        if client is not None:
            _shutdown(client)

    # -- the long run ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, then wait for new mail (IDLE, or polling) until stop is set; reconnect on loss."""
        halt = Halt()
        loop = asyncio.get_running_loop()
        # A thread of its own: the blocking client never holds up the event loop, and a
        # fetcher waiting in IDLE never takes a slot in the loop's shared executor.
        with ThreadPoolExecutor(1, thread_name_prefix="imap") as pool:
            worker = loop.run_in_executor(pool, self._serve, halt)
            stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([worker, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                halt.set()
                stopper.cancel()
                try:
                    await worker
                finally:
                    halt.close()

    def _serve(self, halt: Halt) -> None:
        failures = 0
        try:
            while not halt.is_set():
                try:
                    self.fetch_once()
                    if self.storage_fault:
                        failures += 1
                        delay = self._backoff(failures)
                        log.warning("%s: storage fault; fetching again in %.1f s",
                                    self.box.key, delay)
                        halt.wait(delay)
                        continue
                    failures = 0
                    self._wait_for_mail(halt)
                except ConfigError:
                    raise
                except StorageError as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("%s: storage fault (%s); fetching again in %.1f s",
                                self.box.key, exc, delay)
                    halt.wait(delay)
                except CONNECTION_ERRORS as exc:
                    self._drop()
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("%s: connection lost (%s); reconnecting in %.1f s (attempt %d)",
                                self.box.key, exc or type(exc).__name__, delay, failures)
                    halt.wait(delay)
                except Exception:
                    self._drop()
                    failures += 1
                    delay = self._backoff(failures)
                    log.exception("%s: fetcher failed; reconnecting in %.1f s (attempt %d)",
                                  self.box.key, delay, failures)
                    halt.wait(delay)
        finally:
            self.close()

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter, so many fetchers do not reconnect in step."""
        return backoff(failures, self.reconnect_base, self.reconnect_cap, (0.5, 1.0))

    def _wait_for_mail(self, halt: Halt) -> None:
        """Return when new mail may be there: IDLE where the server has it, else a poll."""
        # Even with IDLE, look again every poll_interval: a notice that arrives with the
        # IDLE continuation is read into the client's buffer where select() cannot see it.
        timeout = self.between
        client = self._client
        if client is None:  # another fetcher holds the mailbox: look again in a while
            halt.wait(min(self.between, STANDBY))
            return
        if not client.has_capability("IDLE"):
            halt.wait(self.between)
            return
        client.idle()  # RFC 2177
        sock = client.socket()
        deadline = time.monotonic() + timeout
        while not halt.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([sock, halt], [], [], remaining)
            if sock not in readable:
                continue
            responses = client.idle_check(timeout=0)
            if not responses:
                raise ConnectionError("the server closed the connection")
            if any(_is_bye(r) for r in responses):
                raise ConnectionError(f"the server said goodbye: {responses!r}")
            if any(_is_news(r) for r in responses):
                break
        client.idle_done()


def _is_news(response: Any) -> bool:
    # "* n EXISTS" means mail arrived (RFC 3501 section 7.3.1).
    return len(response) >= 2 and response[1] == b"EXISTS"


def _is_bye(response: Any) -> bool:
    return len(response) >= 1 and response[0] == b"BYE"


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: S110 - closing a socket that may be gone already
        pass
