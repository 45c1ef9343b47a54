"""How long to wait before trying again: doubling from a base, capped, with jitter."""

from __future__ import annotations

import random


def backoff(
    failures: int, base: float, cap: float, spread: tuple[float, float],
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the failures-th failure in a row: base, 2 x base, 4 x base ...
    up to cap, times a random factor in `spread`, so workers that failed together do not
    all try again at the same moment."""
    delay = min(cap, base * 2.0 ** min(max(0, failures - 1), 32))
    low, high = spread
    return delay * (rng or random).uniform(low, high)
