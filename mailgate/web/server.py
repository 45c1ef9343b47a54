"""uvicorn inside `mailgate serve`: the same process and event loop, stopped by serve's own stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

import uvicorn
from starlette.types import ASGIApp

from mailgate.web.app import create_app
from ticketing.desk import Desk

log = logging.getLogger(__name__)


class WebServer(uvicorn.Server):
    """serve owns SIGTERM and SIGINT: uvicorn must not take them over while it runs.
    It stops as soon as it is told to (stop()), where uvicorn looks every 0.1 s and then
    gives its connections a fixed 0.1 s more: a fifth of a second at every stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._told = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._told.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn's on_tick renews the Date header on every tenth tick of 0.1 s: here each
        # tick is a second, or ends when told to stop.
        ticks = 0
        while not await self.on_tick(ticks):
            ticks = (ticks + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._told.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # As uvicorn's: no new connections, idle ones closed, the requests in hand
        # finished (cancelled after timeout_graceful_shutdown), then the lifespan's end;
        # without sleeping a tenth of a second when nothing is left to wait for.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        limit = self.config.timeout_graceful_shutdown
        deadline = loop.time() + limit if limit is not None else math.inf
        while self.server_state.connections or self.server_state.tasks:
            if loop.time() > deadline or self.force_exit:
                log.error("cancelling %d request(s) still running at shutdown",
                          len(self.server_state.tasks))
                for task in self.server_state.tasks:
                    task.cancel()
                break
            await asyncio.sleep(0.01)
        if not self.force_exit:
            await self.lifespan.shutdown()


def listen(host: str, port: int) -> socket.socket:
    """Bind before anything starts, so a port in use is the operator's error at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Named TCP, and without Nagle's delay: asyncio turns the delay off only on sockets
    # whose protocol says TCP, and with it on, every answer after the first on a kept-alive
    # connection waits some 40 ms for the browser's delayed acknowledgement.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def web_app(desk: Desk, ingest_executor: Executor,
            observe: Callable[[str, float], None] | None = None) -> WebServer:
    """The Help Desk's server, ready to run."""
    return web_server(create_app(desk, ingest_executor, observe))


def web_server(app: ASGIApp) -> WebServer:
    """A server for one app with everything it imports already loaded: at start-up, not
    once serving, when the open-files limit may already be reached."""
    config = uvicorn.Config(
        app, log_config=None, lifespan="off",
        # Tokens travel in paths: no access log. Forwarded headers are not believed,
        # so the per-client limits count the real peer.
        access_log=False, proxy_headers=False, server_header=False, date_header=True,
        timeout_graceful_shutdown=10,
    )
    config.load()
    return WebServer(config)


async def run_server(server: WebServer, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve on a bound socket until `stop` is set; requests in hand are finished first."""
    task = asyncio.create_task(server.serve(sockets=[sock]), name="web")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    server.stop()
    stopping.cancel()
    await task
