"""The listener reads the address of MAIL FROM and RCPT TO exactly as aiosmtpd does."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp import GuardedSMTP

CASES = [
    "", "<>", "<customer@example.org>", "customer@example.org", " <a@b> SIZE=100",
    "<a@b> BODY=8BITMIME SMTPUTF8", "<@relay.example:a@b>", '<"quoted local"@example.org>',
    "<a@b", "a@b>", "<<a@b>>", "<a b@c>", "<x" + "y" * 80 + "@example.org>", "<用户@例子.广告>",
    "<a@[127.0.0.1]>", "<postmaster>", "  <a@b>  ", "<a@b>\tSIZE=1", "<=?utf-8?q?x?=@b>", "<a@b.>",
]


def _read(method: Callable[[Any, str], object], arg: str, limit: int) -> object:
    # The stdlib parser raises on some lines (a lone '"'): the same error from both.
    try:
        return method(SimpleNamespace(local_part_limit=limit), arg)
    except Exception as exc:
        return type(exc)


def both(arg: str, limit: int) -> tuple[object, object]:
    return _read(GuardedSMTP._getaddr, arg, limit), _read(SMTP._getaddr, arg, limit)


def test_the_cases_the_listener_meets_read_as_aiosmtpd_reads_them() -> None:
    for arg in CASES:
        for limit in (0, 64):
            ours, theirs = both(arg, limit)
            assert ours == theirs, arg


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('<>@." \t:,[]()\\ab1=é'), max_size=30),
       st.sampled_from((0, 3, 64)))
def test_any_line_reads_as_aiosmtpd_reads_it(arg: str, limit: int) -> None:
    ours, theirs = both(arg, limit)
    assert ours == theirs
