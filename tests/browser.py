"""A real browser for the web tests: Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers import missing

CHROMIUM = os.environ.get("MAILGATE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One browser for the run; each test opens its own context (cookies of its own)."""
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"chromium is not installed at {CHROMIUM} (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def person(chromium: Any) -> Iterator[Callable[[], Any]]:
    """Each call is a new person at a browser of their own (a profile with no cookies)."""
    contexts: list[Any] = []

    def new_page() -> Any:
        context = chromium.new_context()
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield new_page
    for context in contexts:
        context.close()
