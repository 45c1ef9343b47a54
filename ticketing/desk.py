"""The support desk: settings and collaborators, built once and passed in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from ticketing.blobs import BlobStore, blob_store
from ticketing.clock import Clock, SystemClock
from ticketing.compose import Templates
from ticketing.db import make_engine
from ticketing.dkimcheck import TxtLookup
from ticketing.inbound import Inbound, Outcome
from ticketing.settings import Settings, ensure_secret

log = logging.getLogger(__name__)


@dataclass
class Desk:
    settings: Settings
    engine: Engine
    clock: Clock
    blobs: BlobStore
    templates: Templates
    # Called after each commit that queued mail (and whether it queued pages too), so
    # the workers start at once.
    on_commit: list[Callable[[bool], None]] = field(default_factory=list)
    # Where DKIM keys are looked up (agents.trust = "dkim"); None: the system's DNS.
    txt_lookup: TxtLookup | None = None
    # Told of every mail ingested: how it came, what became of it, the seconds it took.
    on_ingest: list[Callable[[Inbound, Outcome, float], None]] = field(default_factory=list)

    @classmethod
    def create(
        cls, settings: Settings, engine: Engine | None = None, clock: Clock | None = None,
        txt_lookup: TxtLookup | None = None,
    ) -> Desk:
        settings = ensure_secret(settings)
        engine = engine or make_engine(settings.database)
        return cls(
            settings=settings,
            engine=engine,
            clock=clock or SystemClock(),
            blobs=blob_store(settings, engine),
            templates=Templates(settings),
            txt_lookup=txt_lookup,
        )

    def ingest(self, inbound: Inbound) -> Outcome:
        from ticketing.ingest import ingest

        started = time.monotonic()
        outcome = ingest(self, inbound)
        self.ingested(inbound, outcome, started)
        return outcome

    def ingested(self, inbound: Inbound, outcome: Outcome, started: float) -> None:
        """Tell on_ingest of a mail ingested since `started` (time.monotonic())."""
        for callback in self.on_ingest:
            try:
                callback(inbound, outcome, time.monotonic() - started)
            except Exception:  # counting must never undo an acknowledged mail
                log.exception("<%s> counting the ingested mail failed", outcome.message)

    def committed(self, pages: bool) -> None:
        for callback in self.on_commit:
            try:
                callback(pages)
            except Exception:  # a wake-up that fails must not undo an acknowledged mail
                log.exception("wake-up after commit failed")
