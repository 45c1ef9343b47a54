"""`mailgate serve`: the SMTP listener, the web desk, IMAP fetchers, and the outbound and
paging workers (in a process of their own, or in this one: mailgate/senders.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any

from mailgate.logs import quiet_mail_parser
from mailgate.senders import SenderProcess, workers
from ticketing.blobs import clean_temporary
from ticketing.desk import Desk
from ticketing.ingest import ingest

log = logging.getLogger(__name__)

# A half-written file in the data folder this old is no write in progress.
STALE_WRITE = timedelta(hours=1)


class CannotListen(Exception):
    """A listener could not take its address: the operator's to fix, said in one line."""

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        self.what, self.host, self.port, self.error = what, host, port, error
        super().__init__(f"{what} on {host}:{port}: {error.strerror or error}")


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
    desk: Desk, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
    senders_apart: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT; then stop taking mail, finish what is in hand, return.

    `senders_apart`: the outbound and paging workers run in a child process, which
    stops with this one (`mailgate serve` does so; its settings are all the child
    needs). Else they run here, on this desk and its clock."""
    quiet_mail_parser()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptFaults())
    stop = stop or asyncio.Event()
    wake_outbound = asyncio.Event()
    wake_pages = asyncio.Event()

    senders = SenderProcess(desk.settings, logging.getLogger().getEffectiveLevel()) \
        if senders_apart else None

    def wake(pages: bool) -> None:
        if senders is not None:
            senders.wake(pages)
            return
        loop.call_soon_threadsafe(wake_outbound.set)
        if pages:
            loop.call_soon_threadsafe(wake_pages.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    # SQLite takes one writer at a time; a few threads keep the listener answering while
    # one waits on the disk.
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingest")
    settings = desk.settings
    removed = clean_temporary(settings.storage_path / "blobs", desk.clock.now() - STALE_WRITE)
    if removed:
        log.warning("removed %d half-written file(s) from %s (a full disk or a crash)",
                    removed, settings.storage_path / "blobs")
    if senders is not None:
        senders.start()  # it loads what it needs while this process loads the rest
        try:
            return await _serve(desk, ready, stop, executor, wake, senders, wake_outbound,
                                wake_pages)
        finally:
            await asyncio.to_thread(senders.stop)
    await _serve(desk, ready, stop, executor, wake, senders, wake_outbound, wake_pages)


async def _serve(desk: Desk, ready: asyncio.Event | None, stop: asyncio.Event,
                 executor: ThreadPoolExecutor, wake: Callable[[bool], None],
                 senders: SenderProcess | None, wake_outbound: asyncio.Event,
                 wake_pages: asyncio.Event) -> None:
    from mailgate.imap import ImapFetcher
    from mailgate.monitoring import Monitor
    from mailgate.smtp import smtp_factory
    from mailgate.web.server import listen, run_server, web_app, web_server

    loop = asyncio.get_running_loop()
    settings = desk.settings
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
            smtp_factory(desk, executor), host=settings.smtp.host, port=settings.smtp.port
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
    if senders is None:
        tasks = workers(desk, stop, wake_outbound, wake_pages)
    else:
        await asyncio.to_thread(senders.wait_ready)
        tasks = [asyncio.create_task(senders.run(stop), name="senders")]
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
    for task in tasks:
        try:
            await asyncio.wait_for(task, timeout=10 if senders is None else 30)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
    log.info("stopped")
