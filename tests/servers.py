"""Finding the real servers the tests use; a missing one fails on CI and skips elsewhere."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROJECT = Path(__file__).resolve().parent.parent


def missing(reason: str) -> None:
    """Skip on a developer machine that lacks a server or the corpus; fail on CI."""
    if ON_CI:
        pytest.fail(f"{reason} (required on CI)")
    pytest.skip(reason)


def corpus_dir() -> Path:
    """The shared corpus of public test mail: MAILGATE_CORPUS, or ../shared/corpus."""
    path = Path(os.environ.get("MAILGATE_CORPUS", PROJECT.parent / "shared" / "corpus"))
    if not (path / "MANIFEST.tsv").exists():
        missing(f"the mail corpus is not at {path} (set MAILGATE_CORPUS)")
    return path


def _ephemeral_start() -> int:
    """The first port the kernel gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# The tests' own servers listen on ports below the kernel's ephemeral range: any outgoing
# connection on the machine (a database client, an SMTP client, another worker's) takes
# its local port from that range, and could take a port picked there before the server
# meant for it binds it. Each pytest worker hands out ports from a block of its own,
# from a random place in it, so that two runs side by side rarely meet either.
_BLOCK = 3000
_LOWEST = 10000
_BLOCKS = (_ephemeral_start() - _LOWEST) // _BLOCK  # 0: no room below the range
# A process that is no pytest worker (a run without workers, a test's own child) takes
# a block at random.
_WORKER = (int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw") or 0)
           if "PYTEST_XDIST_WORKER" in os.environ else int.from_bytes(os.urandom(2), "big"))
_FIRST = _LOWEST + (_WORKER % max(1, _BLOCKS)) * _BLOCK
_next_port = _FIRST + int.from_bytes(os.urandom(2), "big") % _BLOCK
_port_lock = threading.Lock()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server the test starts."""
    global _next_port
    if not _BLOCKS:  # no room below the kernel's range: ask the kernel
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    with _port_lock:
        for _ in range(_BLOCK):
            port = _next_port
            _next_port = _FIRST + (_next_port + 1 - _FIRST) % _BLOCK
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in {_FIRST}-{_FIRST + _BLOCK - 1}")


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes no access log to the test's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpServer:
    """A real HTTP server on loopback answering with `handler`, in a thread once started.
    Its port is bound at once, so its URL can go into settings before it starts."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        # It looks for shutdown() every 20 ms, so stopping it takes no noticeable time.
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        """The base URL: http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the port (also when it never started)."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (name.crt, name.key), made with openssl."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed (Debian package openssl)")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=mailgate test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert, key


def dkim_key(folder: Path, name: str) -> tuple[bytes, bytes]:
    """An RSA key for DKIM made with openssl: (its PEM, the TXT record that publishes it)."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed (Debian package openssl)")
    key = folder / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
                   check=True, capture_output=True, timeout=60)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                            check=True, capture_output=True, timeout=60).stdout
    return key.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


POSTGRES_URL = os.environ.get("MAILGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_url(database: str, password: str | None = None) -> str:
    """The test server's URL for one database (a password is carried, never checked)."""
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL).set(database=database)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def without_waiting_for_disk(database: str) -> str:
    """The statement that lets a test database's commits return before PostgreSQL has
    flushed them to disk. What the tests check stays the same: a commit is visible to every
    other connection at once and outlives the client (a killed `serve` included); only a
    crash of the PostgreSQL server itself could lose it, and the tests never crash it. The
    product's own connections keep the server's setting."""
    return f'ALTER DATABASE "{database}" SET synchronous_commit = off'


@contextmanager
def scratch_database(prefix: str, template: str | None = None,
                     migrated: bool = False) -> Iterator[str]:
    """A PostgreSQL database of its own for a test, dropped afterwards; yields its name."""
    from sqlalchemy import create_engine, text

    from ticketing.db import make_engine, migrate

    admin = create_engine("postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
                          isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        try:
            with admin.connect() as connection:
                like = f' TEMPLATE "{template}"' if template else ""
                connection.execute(text(f'CREATE DATABASE "{name}"{like}'))
                connection.execute(text(without_waiting_for_disk(name)))
        except Exception as exc:
            missing(f"PostgreSQL does not answer at {POSTGRES_URL}: {exc}")
        if migrated:
            engine = make_engine(postgres_url(name))
            migrate(engine)
            engine.dispose()
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
