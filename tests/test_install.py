"""mailgate as a new operator gets it: a wheel installed into a fresh venv, run from elsewhere."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from tests.harness import request
from tests.servers import free_port

SOURCE = Path(__file__).resolve().parent.parent
# The wheel is built once for all these tests: one worker runs them.
pytestmark = pytest.mark.xdist_group("install")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `mailgate` command of a fresh venv holding only the built wheel.

    The wheel is built from a copy of the source (nothing left in the tree) without
    build isolation, and the fresh venv reads the dependencies from this test run's
    site-packages through a .pth line, so no registry is needed.
    """
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, source / name)
    for package in ("mailgate", "ticketing"):
        shutil.copytree(SOURCE / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mailgate-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "mailgate"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MAILGATE_") and k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "operator"
    folder.mkdir()
    yield folder


def test_the_installed_wheel_runs_the_whole_story_from_another_folder(
    installed: Path, elsewhere: Path
) -> None:
    python = installed.parent / "python"
    where = subprocess.run([str(python), "-c", "import ticketing; print(ticketing.__file__)"],
                           cwd=elsewhere, env=_env(), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed.parent.parent)), where.stdout
    port = free_port()
    config = elsewhere.parent / "mailgate.toml"  # the config lives elsewhere again
    web = free_port()
    config.write_text(f'[support]\naddress = "support@example.com"\n[smtp]\nport = {port}\n'
                      f'[web]\nport = {web}\n[monitoring]\nport = {free_port()}\n')
    init = subprocess.run([str(installed), "--config", str(config), "init"], cwd=elsewhere,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert (elsewhere / "data" / "mailgate.sqlite3").exists()
    outbound = elsewhere / "data" / "outbound"
    with subprocess.Popen([str(installed), "--config", str(config), "serve"], cwd=elsewhere,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as serve:
        try:
            assert serve.stdout is not None and serve.stderr is not None
            line = serve.stdout.readline()
            assert b"listening" in line, serve.stderr.read()
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                client.mail("carol@customer.test")
                client.rcpt("support@example.com")
                code, answer = client.data(
                    request("Printer offline", "Since noon, third floor.").as_bytes())
            confirmation = _first_mail(outbound, serve)
            # The Help Desk's pages and style ship in the wheel too.
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/sign-in", timeout=30) as page:
                assert b"Forgot password" in page.read()
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/static/web.css", timeout=30) as css:
                assert css.headers["Content-Type"].startswith("text/css")
        finally:
            serve.terminate()
            serve.wait(20)
    assert code == 250 and b"ticket #1" in answer and b"quarantined" not in answer, answer
    assert confirmation["To"] == "Carol Customer <carol@customer.test>"
    assert confirmation["Subject"].startswith("[#1]")
    assert "Printer offline" in confirmation["Subject"]
    assert not list(installed.parent.parent.glob("lib/python*/site-packages/data"))


def _first_mail(folder: Path, serve: subprocess.Popen[bytes]) -> Message:
    """The first mail written to the outbound folder, as soon as it is there."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.eml")) if folder.exists() else []
        if files:
            return message_from_bytes(files[0].read_bytes())
        assert serve.poll() is None, serve.stderr.read() if serve.stderr else b""
        time.sleep(0.05)
    raise AssertionError(f"no mail in {folder}")
