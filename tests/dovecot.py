"""A real Dovecot IMAP server on a loopback port, with one test user, for the IMAP tests."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, missing

USER = "support@example.com"
PASSWORD = "imap-test-password"

CONFIG = """\
protocols = imap
# Each imap process's title names what its session is doing ("... IDLE]" while in IDLE),
# so a test can wait for a client to be in IDLE.
verbose_proctitle = yes
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 8
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Dovecot:
    """A running Dovecot: where to reach it, who to log in as, and how to stop and start it."""

    root: Path
    host: str
    port: int
    user: str
    password: str
    binary: str

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log(self) -> Path:
        return self.root / "dovecot.log"

    def start(self) -> None:
        subprocess.run([self.binary, "-c", str(self.config)], check=True, timeout=30)
        self._wait(listening=True)

    def stop(self) -> None:
        """Stop the server and drop its connections; the mail stays for the next start()."""
        self._end(signal.SIGTERM)
        self._wait(listening=False)

    def destroy(self) -> None:
        """End the server at once (its mail is about to be removed) and remove its folder."""
        self._end(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _end(self, sig: signal.Signals) -> None:
        # Not `doveadm stop`: here the master then waits seconds for its children, and
        # some of them (imap, log, stats, or one it spawns meanwhile) outlive it. So:
        # freeze the master so it spawns nothing more, signal each of its own children
        # (an imap process says BYE to its client, as in a real restart), then kill it.
        pid_file = self.root / "run" / "master.pid"
        if not pid_file.exists():
            return
        master = int(pid_file.read_text())
        if not _gone(master, within=0):
            os.kill(master, signal.SIGSTOP)
            _stopped(master)
            _end(_descendants(master), sig)
            _end([master], signal.SIGKILL)
        # A killed master can stay a zombie a while; its pid file would stop start().
        pid_file.unlink(missing_ok=True)

    def idling(self) -> int:
        """How many of this server's IMAP sessions are in IDLE now."""
        pid_file = self.root / "run" / "master.pid"
        try:
            master = int(pid_file.read_text())
        except (OSError, ValueError):
            return 0
        count = 0
        for pid in _descendants(master):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            count += title.replace(b"\0", b" ").rstrip().endswith(b" IDLE]")
        return count

    def running(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def _wait(self, listening: bool) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.running() == listening:
                return
            time.sleep(0.05)
        state = "listen" if listening else "stop"
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        raise RuntimeError(f"Dovecot did not {state} on port {self.port}:\n{log[-2000:]}")


def _descendants(pid: int) -> list[int]:
    """The processes below pid, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    wanted = {pid}
    while wanted:
        below = [child for child, parent in parents.items() if parent in wanted]
        found.extend(below)
        wanted = set(below)
    return found


def _end(pids: list[int], sig: signal.Signals, grace: float = 5.0) -> None:
    """Signal, then SIGKILL what lingers after grace seconds: only processes we started."""
    for each in (sig, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, each)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if not _gone(pid, within=0)]
            time.sleep(0.02)
        if not pids:
            return


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _stopped(pid: int) -> None:
    deadline = time.monotonic() + 5
    while _state(pid) not in ("T", "t", "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.01)


def _gone(pid: int, within: float) -> bool:
    """True once pid has exited (a zombie waiting for init to reap it counts as exited)."""
    deadline = time.monotonic() + within
    while _state(pid) not in ("Z", "X"):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def start_dovecot(extra: str = "") -> Dovecot:
    """Write a config of its own under a fresh folder and start Dovecot on a free port.

    extra: further config lines, e.g. an imap_capability without IDLE or MOVE.
    """
    binary = dovecot_binary()
    if binary is None:
        missing("dovecot is not installed (apt-get install dovecot-imapd)")
        raise AssertionError("unreachable")
    if os.geteuid() != 0:
        missing("the Dovecot tests start Dovecot as root")
    try:
        mail = pwd.getpwnam("mail")
    except KeyError:
        missing("no 'mail' system user for Dovecot's mail processes")
        raise
    # Not under pytest's tmp_path: that is private to root, and the mail processes
    # run as the 'mail' user and must reach the home folder.
    root = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-"))
    root.chmod(0o755)
    home = root / "home" / USER
    home.mkdir(parents=True)
    for path in (root / "home", home):
        os.chown(path, mail.pw_uid, mail.pw_gid)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    server = Dovecot(root, "127.0.0.1", port, USER, PASSWORD, binary)
    server.config.write_text(CONFIG.format(root=root, port=port) + extra)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


@contextmanager
def running_dovecot(extra: str = "") -> Iterator[Dovecot]:
    """A fresh Dovecot with an empty mailbox for USER; stopped and removed afterwards."""
    server = start_dovecot(extra)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(name="dovecot")
def dovecot_server() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server
