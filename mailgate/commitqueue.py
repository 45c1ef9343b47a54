"""Mails from many SMTP clients stored in batches, each client waiting for its own answer.

The first mail is stored at once, by itself. Mails whose DATA ends while a batch is
being stored wait for it and then go together in the next one: one commit for all of
them. Each client is answered from its own mail's result, after that commit.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from ticketing.desk import Desk
from ticketing.groupcommit import Result, prepare_ahead, store_together
from ticketing.inbound import Inbound, Outcome
from ticketing.ingest import Prepared

# Mails in one transaction at most: a batch is also what each of its clients waits for.
MOST = 32


class CommitQueue:
    def __init__(self, desk: Desk, executor: Executor, storing: Executor,
                 most: int = MOST) -> None:
        self.desk = desk
        self.executor = executor
        # The batches are stored one at a time, by a thread of their own: a batch never
        # waits for a thread behind the mails being parsed.
        self.storing = storing
        self.most = most
        self._waiting: list[tuple[Prepared, asyncio.Future[Result]]] = []
        self._storing: asyncio.Task[None] | None = None

    async def ingest(self, inbound: Inbound) -> Outcome:
        """Store the mail (parsed, and its files written, in the executor beside the
        batch being stored) and return its Outcome once committed; raise its temporary
        failure."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        prepared = await loop.run_in_executor(self.executor, prepare_ahead, self.desk, inbound)
        if isinstance(prepared, Outcome):
            outcome = prepared
        else:
            future: asyncio.Future[Result] = loop.create_future()
            self._waiting.append((prepared, future))
            if self._storing is None:
                self._storing = asyncio.create_task(self._store())
            result = await asyncio.shield(future)  # a client that leaves takes no mail away
            if isinstance(result, BaseException):
                raise result
            outcome = result
        self.desk.ingested(inbound, outcome, started)
        return outcome

    async def _store(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.most], self._waiting[self.most:]
                try:
                    results = await loop.run_in_executor(
                        self.storing, store_together, self.desk, [p for p, _ in batch])
                except Exception as exc:  # store_together answers for every mail itself
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._storing = None
