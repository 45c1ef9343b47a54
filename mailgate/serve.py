"""`mailgate serve`: the SMTP listener, IMAP fetchers, outbound and paging workers in one process."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any

from mailgate.logs import quiet_mail_parser
from mailgate.outbound import Attempt, Transport, send_due, transport_for
from mailgate.paging import run_paging
from mailgate.waiting import first_of
from ticketing.blobs import clean_temporary
from ticketing.db import StorageError, on_commit
from ticketing.desk import Desk
from ticketing.ingest import ingest
from ticketing.leases import this_process
from ticketing.ratelimit import KEPT, prune_auto_replies

log = logging.getLogger(__name__)

# A half-written file in the data folder this old is no write in progress.
STALE_WRITE = timedelta(hours=1)


def name_os_thread() -> None:
    """Give the calling thread its Python name in the system too (its first 15 bytes), so
    that `top -H`, `ps -L` and /proc/PID/task show which part of serve uses the CPU."""
    # Only a name: whatever fails here must not fail the pool whose threads it names.
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except Exception as exc:  # not Linux: the names stay Python's own
        log.debug("threads keep their names inside Python only: %s", exc)


_PR_SET_NAME = 15


class CannotListen(Exception):
    """A listener could not take its address: the operator's to fix, said in one line."""

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        self.what, self.host, self.port, self.error = what, host, port, error
        super().__init__(f"{what} on {host}:{port}: {error.strerror or error}")


# A relay connection with no mail to carry for this long is closed; while mail keeps
# coming, one connection carries it all.
RELAY_IDLE = 5.0


async def outbound_worker(desk: Desk, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Send due mail as soon as a commit queues it, and check every second for retries;
    return as soon as stop is set (a pass under way finishes first)."""
    transport = transport_for(desk)
    worker = this_process()
    loop = asyncio.get_running_loop()
    unrecorded: list[Attempt] = []  # sent while the database was away: recorded when back
    last_sent = time.monotonic()
    try:
        while not stop.is_set():
            wake.clear()
            sent = await _outbound_pass(desk, transport, worker, unrecorded)
            if sent:
                last_sent = time.monotonic()
                continue
            if time.monotonic() - last_sent > RELAY_IDLE:
                await loop.run_in_executor(None, transport.close)
            await first_of(stop, wake, timeout=1.0)
    finally:
        await loop.run_in_executor(None, transport.close)


async def _outbound_pass(desk: Desk, transport: Transport, worker: str,
                         unrecorded: list[Attempt]) -> int:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, send_due, desk, transport, worker, 50,
                                          unrecorded, True)
    except StorageError as exc:
        # One line a pass, not a traceback: the database is away, not a bug here.
        log.warning("outbound worker: the database is unavailable (%s); %d send(s) "
                    "to record when it is back; trying again shortly", exc,
                    len(unrecorded))
        return 0
    except Exception:
        log.exception("outbound worker: delivery pass failed; trying again shortly")
        return 0


# How often serve deletes what no rule reads any more.
HOUSEKEEPING_EVERY = 3600.0


async def housekeeping(desk: Desk, stop: asyncio.Event) -> None:
    """At start and every HOUSEKEEPING_EVERY seconds: delete the automatic-mail counts no
    rate limit reads any more (each serve does; the deletes are the same)."""
    loop = asyncio.get_running_loop()
    stopping = threading.Event()  # a pass under way ends between two of its batches
    stop_told = asyncio.ensure_future(stop.wait())
    stop_told.add_done_callback(lambda _: stopping.set())
    try:
        while not stop.is_set():
            try:
                removed = await loop.run_in_executor(
                    None, prune_auto_replies, desk.engine, desk.clock.now(), stopping)
                if removed:
                    log.info("deleted %d automatic-mail count(s) older than %s", removed, KEPT)
            except StorageError as exc:
                log.warning("housekeeping: the database is unavailable (%s); next time", exc)
            except Exception:
                log.exception("housekeeping: a pass failed")
            await first_of(stop, timeout=HOUSEKEEPING_EVERY)
    finally:
        stop_told.cancel()


class AcceptFaults:
    """The event loop's error handler: asyncio reports each accept() that fails for want
    of file descriptors (EMFILE) with a traceback, retrying every second while it lasts.
    Said once a minute, with a count; anything else goes to the default handler."""

    RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.last: float | None = None
        self.unsaid = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in self.RESOURCES
                and "accept" in str(context.get("message", ""))):
            loop.default_exception_handler(context)
            return
        self.unsaid += 1
        now = self.clock()
        if self.last is None or now - self.last >= self.every:
            log.error("cannot accept connections: %s (%d time(s) since the last report); "
                      "clients wait in the backlog. Raise the open-files limit (ulimit -n) "
                      "or lower smtp.max_connections", exc.strerror or exc, self.unsaid)
            self.last, self.unsaid = now, 0


async def serve(
    desk: Desk, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM or SIGINT; then stop taking mail, finish what is in hand, return."""
    from mailgate.imap import ImapFetcher
    from mailgate.smtp import smtp_factory

    quiet_mail_parser()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptFaults())
    stop = stop or asyncio.Event()
    wake_outbound = asyncio.Event()
    wake_pages = asyncio.Event()

    def wake(pages: bool) -> None:
        loop.call_soon_threadsafe(wake_outbound.set)
        if pages:
            loop.call_soon_threadsafe(wake_pages.set)

    def written(tables: frozenset[str]) -> None:
        if "outbox" in tables or "page" in tables:
            wake("page" in tables)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    # SQLite takes one writer at a time; a few threads keep the listener answering while
    # one waits on the disk. The SMTP listener's batches are stored by a thread of their
    # own, never queued behind the mails being parsed or the web's requests.
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingest",
                                  initializer=name_os_thread)
    storing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storing",
                                 initializer=name_os_thread)
    # The workers' passes (sending, paging, housekeeping), in threads named for them too.
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="workers",
                                                 initializer=name_os_thread))
    settings = desk.settings
    removed = clean_temporary(settings.storage_path / "blobs", desk.clock.now() - STALE_WRITE)
    if removed:
        log.warning("removed %d half-written file(s) from %s (a full disk or a crash)",
                    removed, settings.storage_path / "blobs")
    from mailgate.monitoring import Monitor
    from mailgate.web.server import listen, run_server, web_app, web_server

    monitor = Monitor(desk)
    # This process's desk: each commit wakes the workers, each mail in is counted.
    desk = replace(desk, wake=wake, observe=monitor.ingested)
    web_socket = None
    monitoring_socket = None
    if settings.monitoring.enabled:
        try:
            monitoring_socket = listen(settings.monitoring.host, settings.monitoring.port)
        except OSError as exc:
            raise CannotListen("monitoring", settings.monitoring.host,
                               settings.monitoring.port, exc) from exc
    if settings.web.enabled:
        try:
            web_socket = listen(settings.web.host, settings.web.port)
        except OSError as exc:
            if monitoring_socket is not None:
                monitoring_socket.close()
            raise CannotListen("web", settings.web.host, settings.web.port, exc) from exc
    try:
        server = await loop.create_server(
            smtp_factory(desk, executor, storing), host=settings.smtp.host, port=settings.smtp.port
        )
    except OSError as exc:
        for sock in (web_socket, monitoring_socket):
            if sock is not None:
                sock.close()
        raise CannotListen("SMTP", settings.smtp.host, settings.smtp.port, exc) from exc
    except BaseException:
        for sock in (web_socket, monitoring_socket):
            if sock is not None:
                sock.close()
        raise
    address = server.sockets[0].getsockname() if server.sockets else (settings.smtp.host, 0)
    log.info("SMTP listening on %s:%s for %s", address[0], address[1], settings.support.address)
    # Mail and pages queued or made due again by any commit in this process, through
    # whichever door (SMTP, IMAP, the web, an operator's retry), go out at once.
    stop_listening = on_commit(desk.engine, written)
    try:
        tasks = [
            asyncio.create_task(outbound_worker(desk, stop, wake_outbound), name="outbound"),
            asyncio.create_task(
                run_paging(desk.engine, settings, desk.clock, stop, wake_pages), name="paging"
            ),
            asyncio.create_task(housekeeping(desk, stop), name="housekeeping"),
        ]
        web_task = None
        if web_socket is not None:
            web_task = asyncio.create_task(
                run_server(web_app(desk, executor, monitor.request), web_socket, stop), name="web")
            log.info("Help Desk on %s", settings.web.url)
        if monitoring_socket is not None:
            tasks.append(asyncio.create_task(
                run_server(web_server(monitor.app()), monitoring_socket, stop), name="monitoring"))
            where = monitoring_socket.getsockname()
            log.info("monitoring on http://%s:%s/metrics", where[0], where[1])
        for box in settings.imap:
            fetcher = ImapFetcher(box, desk.engine, partial(ingest, desk), desk.clock)
            tasks.append(asyncio.create_task(fetcher.run(stop), name=f"imap {box.key}"))
        if ready is not None:
            ready.set()
        print(f"mailgate: listening on {address[0]}:{address[1]}; stop with Ctrl-C", flush=True)
        await stop.wait()
        log.info("stopping: no new connections; finishing mail in hand")
        server.close()
        await server.wait_closed()
        if web_task is not None:
            await web_task  # its requests in hand may still be ingesting
        executor.shutdown(wait=True)
        storing.shutdown(wait=True)
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
    finally:
        stop_listening()
    log.info("stopped")
