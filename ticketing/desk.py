"""The support desk: settings and collaborators, built once and passed in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from ticketing.blobs import BlobStore, blob_store
from ticketing.clock import Clock, SystemClock
from ticketing.compose import Templates
from ticketing.db import make_engine
from ticketing.dkimcheck import TxtLookup
from ticketing.inbound import Inbound, Outcome
from ticketing.settings import Settings, ensure_secret

log = logging.getLogger(__name__)


def _nobody_to_wake(pages: bool) -> None:
    pass


def _nobody_counts(inbound: Inbound, outcome: Outcome, seconds: float) -> None:
    pass


@dataclass(frozen=True)
class Desk:
    """What every part of the desk works with. Built once; a process that runs workers
    (serve) makes its own copy with `wake` and `observe` set, by dataclasses.replace."""

    settings: Settings
    engine: Engine
    clock: Clock
    blobs: BlobStore
    templates: Templates
    # Where DKIM keys are looked up (agents.trust = "dkim"); None: the system's DNS.
    txt_lookup: TxtLookup | None = None
    # Called after each commit that queued mail (and whether it queued pages too), so
    # the workers start at once.
    wake: Callable[[bool], None] = _nobody_to_wake
    # Told of every mail ingested: how it came, what became of it, the seconds it took.
    observe: Callable[[Inbound, Outcome, float], None] = _nobody_counts

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

    def ingested(self, inbound: Inbound, outcome: Outcome, started: float) -> None:
        """Tell the observer of a mail ingested since `started` (time.monotonic())."""
        try:
            self.observe(inbound, outcome, time.monotonic() - started)
        except Exception:  # counting must never undo an acknowledged mail
            log.exception("<%s> counting the ingested mail failed", outcome.message)

    def committed(self, pages: bool) -> None:
        try:
            self.wake(pages)
        except Exception:  # a wake-up that fails must not undo an acknowledged mail
            log.exception("wake-up after commit failed")
