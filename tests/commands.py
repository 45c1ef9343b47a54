"""`mailgate` commands for the tests: each one a forked child of a process that has already
imported everything the command imports.

Why: a fresh interpreter running `python -m mailgate` spends 1.2 to 1.9 s of CPU before the
command does anything, nearly all of it importing (the model classes, SQLAlchemy, aiosmtpd,
the web app), and the suite starts about a hundred of them on a two-core machine. What the
command does is the same in a forked child: the child runs the `mailgate` module as
`python -m mailgate` runs it, with its own argv, environment, working directory and
standard streams, the signal dispositions a fresh interpreter has, and the exit code and
stdout/stderr bytes the command gives. It is a real process of its own: tests signal its
pid, and its sockets, files and threads are its own.

How: each pytest process (each xdist worker has its own) starts one *starter* on first use,
with close_fds, so it holds none of the pytest process's descriptors. The starter imports
the command's modules once, checks that this left no thread, database connection, event
loop or other descriptor open (a fork copies them), and then waits on a control socket.
For each command it receives the request and the child's stdin/stdout/stderr descriptors
(socket.send_fds), forks, and sends back the child's pid and a pidfd (so a signal can never
reach a process that took over a reaped pid); it reaps the child and sends its returncode
as subprocess gives it (minus the signal number when a signal ended it). A starter that died
is replaced on the next command; it ends when the pytest process closes the control socket.

What a fork cannot show, so these still start a fresh interpreter:
- what a call imports or does at interpreter start: `run(..., trace_imports=True)` in
  tests/test_cli.py, and any call whose environment sets a PYTHON*, LANG or LC_* variable
  differently from the starter's (`run` below falls back to subprocess for those);
- tests/test_install.py, which runs the installed wheel's own `mailgate` script.
Every forked child shares the starter's string hash seed, where fresh interpreters each
draw their own; `random` is reseeded in each child, as os.fork does for it.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import os
import pkgutil
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

MAILGATE = [sys.executable, "-m", "mailgate"]
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
ROOT = Path(__file__).resolve().parent.parent

# Read at interpreter start: a call that sets one of these differently needs a fresh one.
_AT_START = ("PYTHON", "LANG", "LC_")

_MESSAGE = 1 << 20  # the largest request: argv and environment as JSON


def operator_env() -> dict[str, str]:
    """This process's environment without MAILGATE_ settings: a command reads only the
    config file a test wrote for it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}


def needs_fresh_start(env: Mapping[str, str], starter_env: Mapping[str, str]) -> bool:
    names = {n for n in (*env, *starter_env) if n.startswith(_AT_START)}
    return any(env.get(n) != starter_env.get(n) for n in names)


# ---------------------------------------------------------------------------------------
# The pytest side


class Command:
    """A `mailgate` command running as a forked child; what tests use of subprocess.Popen."""

    def __init__(self, args: Sequence[str], *, stdin: Any = None, stdout: Any = None,
                 stderr: Any = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None,
                 rlimits: Mapping[int, tuple[int, int]] | None = None) -> None:
        self.args = [*MAILGATE, *args]
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        env = dict(os.environ if env is None else env)
        request = {"argv": list(args), "env": env, "cwd": os.path.abspath(cwd or os.getcwd()),
                   "rlimits": {str(k): list(v) for k, v in (rlimits or {}).items()}}
        sent: list[int] = []
        ours: list[int] = []  # our copies of what only the child keeps
        try:
            for number, spec in enumerate((stdin, stdout, stderr)):
                sent.append(self._child_end(number, spec, ours))
            self._status, child_status = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.append(child_status.detach())
            _send(env, json.dumps(request).encode(), [ours[-1], *sent])
        finally:
            for fd in ours:
                os.close(fd)
        self._status.settimeout(300)  # a starter still importing, on a loaded machine
        try:
            message, fds, _, _ = socket.recv_fds(self._status, 64, 1)
        except TimeoutError:
            raise RuntimeError("the command starter did not answer") from None
        if not message:
            raise RuntimeError("the command starter ended before starting the command")
        self.pid: int = json.loads(message)["pid"]
        self._pidfd: int | None = fds[0]

    def _child_end(self, number: int, spec: Any, ours: list[int]) -> int:
        if spec is None:
            return number  # this process's own stream
        if spec == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            ours.append(fd)
            return fd
        if spec == PIPE:
            read, write = os.pipe()
            if number == 0:
                self.stdin = open(write, "wb")
                ours.append(read)
                return read
            stream = open(read, "rb")
            if number == 1:
                self.stdout = stream
            else:
                self.stderr = stream
            ours.append(write)
            return write
        if isinstance(spec, int):
            return spec
        return int(spec.fileno())

    def _finish(self, message: bytes) -> None:
        if not message:
            raise RuntimeError(f"the command starter ended while {self.args} ran")
        self.returncode = json.loads(message)["returncode"]
        self._status.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._status.settimeout(0)
            try:
                message = self._status.recv(64)
            except BlockingIOError:
                return None
            self._finish(message)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._status.settimeout(timeout)
            try:
                message = self._status.recv(64)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            self._finish(message)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: bytes | None = None,
                    timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        read: dict[str, bytes] = {}

        def feed(stream: IO[bytes]) -> None:
            try:
                if input:
                    stream.write(input)
                stream.close()
            except BrokenPipeError:
                pass  # the command stopped reading, as it may

        def drain(name: str, stream: IO[bytes]) -> None:
            read[name] = stream.read()
            stream.close()

        threads = []
        if self.stdin is not None:
            threads.append(threading.Thread(target=feed, args=(self.stdin,), daemon=True))
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                threads.append(threading.Thread(target=drain, args=(name, stream), daemon=True))
        for thread in threads:
            thread.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0, deadline - time.monotonic()))
        return read.get("stdout"), read.get("stderr")

    def __enter__(self) -> Command:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        try:
            if self.stdin is not None:
                try:
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        finally:
            self.wait()


def run(args: Sequence[str], *, input: bytes | None = None,
        env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    """`subprocess.run([*MAILGATE, *args], input=..., capture_output=True)`, forked."""
    env = dict(os.environ if env is None else env)
    if needs_fresh_start(env, _starter_env()):
        return subprocess.run([*MAILGATE, *args], input=input, capture_output=True, env=env,
                              cwd=cwd, timeout=timeout, check=False)
    with Command(args, stdin=PIPE, stdout=PIPE, stderr=PIPE, env=env, cwd=cwd) as command:
        try:
            out, err = command.communicate(input, timeout)
        except subprocess.TimeoutExpired:
            command.kill()
            command.wait()
            raise
    assert out is not None and err is not None
    return subprocess.CompletedProcess(command.args, command.wait(), out, err)


class _Starter:
    """The starter of this pytest process, and the control socket to it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = dict(os.environ)
        self.pid = os.getpid()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from tests.commands import serve; serve()",
                 str(theirs.fileno())],
                stdin=DEVNULL, stdout=DEVNULL, cwd=ROOT, env=self.env, close_fds=True,
                pass_fds=(theirs.fileno(),))
        self.control = ours

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.process.poll() is None

    def send(self, message: bytes, fds: list[int]) -> None:
        socket.send_fds(self.control, [message], fds)

    def close(self) -> None:
        self.control.close()  # the starter ends when it reads the end of this socket
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_lock = threading.Lock()
_current: _Starter | None = None


def _starter_env() -> dict[str, str]:
    with _lock:
        return dict(_current.env) if _current is not None and _current.alive() else dict(os.environ)


def _send(env: Mapping[str, str], message: bytes, fds: list[int]) -> None:
    """Hand one request to this process's starter, starting one when there is none alive."""
    global _current
    with _lock:
        if _current is None or not _current.alive():
            _current = _Starter()
            atexit.register(_current.close)
        if needs_fresh_start(env, _current.env):
            raise ValueError("this environment acts at interpreter start: use subprocess")
        try:
            _current.send(message, fds)
        except OSError:  # it died since the check: once more with a new one
            _current = _Starter()
            atexit.register(_current.close)
            _current.send(message, fds)


# ---------------------------------------------------------------------------------------
# The starter


def _modules() -> list[str]:
    """Every module of the command's packages: what any of its subcommands imports."""
    names = []
    for package in ("mailgate", "ticketing"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            # mailgate.__main__ is run, never imported: runpy warns of one already imported.
            if not info.name.startswith(("ticketing.migrations", "mailgate.__main__")):
                names.append(info.name)
    # What `init` loads of alembic to migrate (the migration scripts it reads from files).
    names += ["alembic.command", "alembic.config", "alembic.runtime.migration",
              "alembic.script", "alembic.operations"]
    return names


def _own_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def serve() -> None:
    """The starter's main loop: `python -c '...serve()' CONTROL_FD`."""
    control = socket.socket(fileno=int(sys.argv[1]))
    # As the interpreter started: what each child gets back before it runs the command.
    dispositions = {s: signal.getsignal(s) for s in signal.valid_signals()
                    if s not in (signal.SIGKILL, signal.SIGSTOP)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    before = _own_descriptors()
    for name in _modules():
        importlib.import_module(name)
    # A fork copies threads' locks but not the threads, and shares every descriptor.
    leftover = _own_descriptors() - before
    if threading.active_count() != 1 or leftover:
        raise SystemExit(f"importing the command left {threading.active_count()} threads "
                         f"and descriptors {sorted(leftover)} open: a fork would share them")
    import asyncio.events

    if asyncio.events._get_running_loop() is not None:
        raise SystemExit("importing the command started an event loop")
    with selectors.DefaultSelector() as selector:
        selector.register(control, selectors.EVENT_READ, None)
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    message, fds, _, _ = socket.recv_fds(control, _MESSAGE, 4)
                    if not message:
                        return
                    status = socket.socket(fileno=fds[0])
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        _child(json.loads(message), fds[1:], dispositions, mask)
                    for fd in fds[1:]:
                        os.close(fd)
                    pidfd = os.pidfd_open(pid)
                    try:
                        socket.send_fds(status, [json.dumps({"pid": pid}).encode()], [pidfd])
                    except OSError:
                        pass  # the pytest side went away; the child is still reaped
                    selector.register(pidfd, selectors.EVENT_READ, (pid, status))
                else:
                    pid, status = key.data
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    _, code = os.waitpid(pid, 0)
                    try:
                        status.send(json.dumps(
                            {"returncode": os.waitstatus_to_exitcode(code)}).encode())
                    except OSError:
                        pass
                    status.close()


_kept: list[object] = []  # the starter's own streams: never collected (and closed) in a child


def _stream(fd: int, like: io.TextIOWrapper) -> io.TextIOWrapper:
    """A standard stream on fd as the interpreter makes one (buffered, as no PYTHON* variable
    differs), with the starter's encoding, which came from the same environment."""
    raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
    buffer: io.BufferedIOBase = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffer, encoding=like.encoding, errors=like.errors, newline="\n",
                            line_buffering=fd == 2 or raw.isatty())


def _child(request: dict[str, Any], stdio: list[int], dispositions: dict[int, Any],
           mask: set[int]) -> NoReturn:
    try:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # The control socket, the selector, other commands' sockets and pidfds, and the
        # received copies: none of them is the command's.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        for signum, handler in dispositions.items():
            if handler is not None and signal.getsignal(signum) != handler:
                signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for name, (soft, hard) in request["rlimits"].items():
            resource.setrlimit(int(name), (soft, hard))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-m", *request["argv"]]
        sys.path[0] = os.getcwd()  # as `python -m` puts it first
        _kept.extend((sys.stdin, sys.stdout, sys.stderr))
        sys.stdin = sys.__stdin__ = _stream(0, sys.stdin)  # type: ignore[arg-type]
        sys.stdout = sys.__stdout__ = _stream(1, sys.stdout)  # type: ignore[arg-type]
        sys.stderr = sys.__stderr__ = _stream(2, sys.stderr)  # type: ignore[arg-type]
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(_run_module())


def _run_module() -> int:
    """Run `mailgate` as `python -m mailgate` does, and end as the interpreter ends."""
    import runpy

    interrupted = False
    code = 0
    try:
        runpy.run_module("mailgate", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        interrupted = isinstance(error, KeyboardInterrupt)
        code = 1
    # At exit the interpreter waits for its threads, runs the atexit callbacks, and then
    # flushes stdout and stderr: a flush that fails makes the exit code 120.
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            try:
                print(f"Exception ignored on flushing sys.{'stdout' if stream is sys.stdout else 'stderr'}:",
                      file=sys.stderr)
                traceback.print_exc()
                sys.stderr.flush()
            except Exception:
                pass
            code = 120
    if interrupted:  # an uncaught KeyboardInterrupt ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code
