"""Finding the real servers the tests use; a missing one fails on CI and skips elsewhere."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


POSTGRES_URL = os.environ.get("MAILGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
