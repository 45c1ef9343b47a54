"""The one retry delay used by outbound mail, pages and IMAP reconnects."""

from __future__ import annotations

import random

from mailgate.backoff import backoff


def test_the_delay_doubles_from_the_base_and_stops_at_the_cap() -> None:
    still = (1.0, 1.0)
    assert [backoff(n, 30, 3600, still) for n in range(1, 9)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600]
    # A mail that failed ten thousand times still waits only the cap, without overflow.
    assert backoff(10_000, 30, 3600, still) == 3600


def test_jitter_stays_inside_its_spread_and_spreads_the_retries() -> None:
    rng = random.Random(7)
    delays = [backoff(3, 15, 600, (1.0, 1.25), rng) for _ in range(200)]
    assert all(60 <= d <= 75 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150
