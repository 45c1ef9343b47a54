"""The outbound and paging workers, in serve's process or in a process of their own.

`mailgate serve` runs them in a child process (`python -m mailgate.senders`), so
sending mail and calling the on-call hooks take nothing of the core that takes mail
in. The child gets serve's settings on its standard input, then one byte after each
commit that queued mail ("m") or pages too ("p"). It stops, after the mail or page in
hand, when its standard input ends: when serve stops it, and as well when serve is
killed, so no sender outlives its server for long. The leases make two senders on one
database safe (a mail goes out once); on SQLite each waits for the other's write turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mailgate.outbound import Attempt, Transport, send_due, transport_for
from mailgate.paging import run_paging
from mailgate.waiting import first_of
from ticketing.db import StorageError
from ticketing.desk import Desk
from ticketing.leases import this_process
from ticketing.settings import Settings

log = logging.getLogger(__name__)

# A relay connection with no mail to carry for this long is closed; while mail keeps
# coming, one connection carries it all.
RELAY_IDLE = 5.0

MAIL, PAGES = b"m", b"p"  # what a wake-up byte says was queued
_HEADER = struct.Struct("!I")  # the length of the pickled settings before them
READY = b"ready"  # what the child says once it sends
READY_WAIT = 60.0  # seconds serve waits for that before it says it is listening
STOP_WAIT = 20.0  # seconds a stopping sender gets to finish what is in hand
RESTART_PAUSE = 1.0  # seconds before a sender that died is started again
RESTART_PAUSE_MAX = 60.0  # the pause doubles, up to this, while it keeps dying young
RAN_WELL = 60.0  # seconds a sender runs before its death no longer counts as dying young


async def outbound_worker(desk: Desk, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Send due mail as soon as a commit queues it, and check every second for retries;
    return as soon as stop is set (the mail being sent is sent and recorded first)."""
    transport = transport_for(desk)
    worker = this_process()
    loop = asyncio.get_running_loop()
    unrecorded: list[Attempt] = []  # sent while the database was away: recorded when back
    last_sent = time.monotonic()
    try:
        while not stop.is_set():
            wake.clear()
            sent = await _outbound_pass(desk, transport, worker, unrecorded, stop.is_set)
            if sent:
                last_sent = time.monotonic()
                continue
            if time.monotonic() - last_sent > RELAY_IDLE:
                await loop.run_in_executor(None, transport.close)
            await first_of(stop, wake, timeout=1.0)
    finally:
        await loop.run_in_executor(None, transport.close)


async def _outbound_pass(desk: Desk, transport: Transport, worker: str,
                         unrecorded: list[Attempt], stopping: Callable[[], bool]) -> int:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, send_due, desk, transport, worker, 50,
                                          unrecorded, True, stopping)
    except StorageError as exc:
        # One line a pass, not a traceback: the database is away, not a bug here.
        log.warning("outbound worker: the database is unavailable (%s); %d send(s) "
                    "to record when it is back; trying again shortly", exc,
                    len(unrecorded))
        return 0
    except Exception:
        log.exception("outbound worker: delivery pass failed; trying again shortly")
        return 0


def workers(desk: Desk, stop: asyncio.Event, wake_mail: asyncio.Event,
            wake_pages: asyncio.Event) -> list[asyncio.Task[None]]:
    """The outbound and paging workers as tasks of the running loop."""
    return [
        asyncio.create_task(outbound_worker(desk, stop, wake_mail), name="outbound"),
        asyncio.create_task(
            run_paging(desk.engine, desk.settings, desk.clock, stop, wake_pages), name="paging"),
    ]


class SenderProcess:
    """serve's side of the child process that sends: starts it, wakes it after each
    commit, starts it again should it die, and stops it with serve."""

    def __init__(self, settings: Settings, level: int) -> None:
        self.settings = settings
        self.level = level
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # commits in several threads wake it

    def start(self) -> None:
        process = subprocess.Popen([sys.executable, "-m", "mailgate.senders"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin is not None
        told = pickle.dumps((self.settings, self.level))
        process.stdin.write(_HEADER.pack(len(told)) + told)
        process.stdin.flush()
        # From here on a wake-up never waits: a full pipe has wake-ups enough in it.
        os.set_blocking(process.stdin.fileno(), False)
        self._process = process

    def wait_ready(self, timeout: float = READY_WAIT) -> None:
        """Return once the child says it is sending (or has died, or after `timeout`
        seconds: mail waits in the outbox meanwhile, and the child is watched by run)."""
        process = self._process
        assert process is not None and process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout)
        said = process.stdout.readline() if readable else b""
        process.stdout.close()
        if said.strip() == READY:
            log.info("senders started (process %d)", process.pid)
        elif not readable:  # else its output ended: it died before it was ready (run says so)
            log.error("the senders' process %d is not ready after %.0f s; mail waits in "
                      "the outbox until it is", process.pid, timeout)

    def wake(self, pages: bool) -> None:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None or process.stdin.closed:
                return
            try:
                os.write(process.stdin.fileno(), PAGES if pages else MAIL)
            except (BlockingIOError, BrokenPipeError):
                pass  # woken already, or gone (started again by run)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the child running until stop is set; then end its input and wait for
        it to finish what it has in hand."""
        pause = RESTART_PAUSE
        try:
            while not stop.is_set():
                process = self._process
                assert process is not None
                started = time.monotonic()
                ended = asyncio.ensure_future(asyncio.to_thread(process.wait))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    break
                # One that keeps dying as it starts (a broken install, say) is started
                # less and less often, not in a loop that burns the CPU and floods the log.
                if time.monotonic() - started >= RAN_WELL:
                    pause = RESTART_PAUSE
                log.error("the senders' process ended (exit %s); starting it again in %.0f s",
                          process.returncode, pause)
                await first_of(stop, timeout=pause)
                pause = min(pause * 2, RESTART_PAUSE_MAX)
                # A start that fails (the interpreter gone in an upgrade, no memory to
                # fork) is tried again: the senders must not end while serve runs.
                while not stop.is_set() and not self._start_again(pause):
                    await first_of(stop, timeout=pause)
                    pause = min(pause * 2, RESTART_PAUSE_MAX)
                if not stop.is_set():
                    await asyncio.to_thread(self.wait_ready)
        finally:
            await asyncio.to_thread(self.stop)

    def _start_again(self, pause: float) -> bool:
        self._close_input()
        try:
            self.start()
        except OSError as exc:
            log.error("the senders' process could not be started (%s); trying again in "
                      "%.0f s", exc, pause)
            return False
        return True

    def _close_input(self) -> None:
        with self._lock:
            process = self._process
            if process is not None and process.stdin is not None and not process.stdin.closed:
                try:
                    process.stdin.close()
                except OSError:
                    pass  # a child that died leaves a broken pipe: closed all the same

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._close_input()
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.error("the senders' process did not stop in %.0f s; killed", STOP_WAIT)
            process.kill()
            process.wait()


async def _child(desk: Desk) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    wake_mail, wake_pages = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    os.set_blocking(0, False)

    def readable() -> None:
        try:
            told = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            told = b""
        if not told:  # serve stopped, or is gone
            loop.remove_reader(0)
            stop.set()
            return
        wake_mail.set()
        if PAGES in told:
            wake_pages.set()

    loop.add_reader(0, readable)
    tasks = workers(desk, stop, wake_mail, wake_pages)
    os.write(1, READY + b"\n")
    os.close(1)
    await asyncio.gather(*tasks)


def _read_exactly(size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = os.read(0, size - len(data))
        if not piece:
            raise SystemExit(0)  # serve went away before it told us anything
        data += piece
    return data


def main() -> None:
    (size,) = _HEADER.unpack(_read_exactly(_HEADER.size))
    told: Any = pickle.loads(_read_exactly(size))  # noqa: S301 (from serve, our parent)
    settings, level = told
    from mailgate.logs import setup_logging

    setup_logging(level <= logging.DEBUG)
    desk = Desk.create(settings)
    try:
        asyncio.run(_child(desk))
    finally:
        desk.engine.dispose()


if __name__ == "__main__":
    main()
