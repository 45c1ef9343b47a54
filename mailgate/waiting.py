"""A worker's rest between passes: until any of its events is set, or a timeout."""

from __future__ import annotations

import asyncio


async def first_of(*events: asyncio.Event, timeout: float) -> None:
    """Return as soon as one of `events` is set (at once if one already is), or after
    `timeout` seconds: a worker waits on stop and wake together, so it stops at once."""
    if any(event.is_set() for event in events):
        return
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
