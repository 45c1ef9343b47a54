"""/healthz, /readyz and /metrics for the operator's monitoring, on an address of their own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ticketing.db import current_revision, head_revision
from ticketing.desk import Desk
from ticketing.inbound import Inbound, Outcome
from ticketing.models import MailboxState, Message, Outbox, Page, Quarantine

log = logging.getLogger(__name__)


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None and now.tzinfo is not None:
        now = now.replace(tzinfo=None)
    return max(0.0, (now - then).total_seconds())


def _timestamp(value: datetime) -> float:
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class QueueCollector(Collector):
    """Queue depths read from the database at each scrape: every process sharing the
    database reports the same values."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk

    def collect(self) -> Iterator[Metric]:
        now = self.desk.clock.now()
        try:
            with Session(self.desk.engine) as session:
                yield from self._read(session, now)
        except Exception as exc:  # a scrape must answer even with the database away
            log.warning("metrics: the database could not be read (%s)", exc)

    def _read(self, session: Session, now: datetime) -> Iterable[Metric]:
        families: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            families.append(family)

        pending, oldest = session.exec(
            select(func.count(), func.min(Outbox.created_at)).where(Outbox.status == "pending")
        ).one()
        gauge("mailgate_outbox_pending", "Mails waiting to be sent.", pending)
        gauge("mailgate_outbox_oldest_pending_seconds",
              "Age of the oldest mail waiting to be sent.", _age(now, oldest))
        failed = session.exec(select(func.count()).where(Outbox.status == "failed")).one()
        gauge("mailgate_outbox_failed", "Mails the relay refused for good.", failed)
        pending, oldest = session.exec(
            select(func.count(), func.min(Page.created_at)).where(Page.status == "pending")
        ).one()
        gauge("mailgate_pages_pending", "Pages waiting to reach the on-call hooks.", pending)
        gauge("mailgate_pages_oldest_pending_seconds",
              "Age of the oldest page waiting.", _age(now, oldest))
        held = session.exec(select(func.count()).where(Message.kind == "held")).one()
        gauge("mailgate_held", "Mails from unregistered senders held for release.", held)
        quarantined = session.exec(
            select(func.count()).where(col(Quarantine.replayed_at).is_(None))
        ).one()
        gauge("mailgate_quarantined", "Mails kept whole after a fault, not yet replayed.",
              quarantined)
        fetched = GaugeMetricFamily("mailgate_imap_last_fetch_timestamp_seconds",
                                    "When each IMAP mailbox was last worked.",
                                    labels=["mailbox"])
        for state in session.exec(select(MailboxState)).all():
            fetched.add_metric([state.key], _timestamp(state.updated_at))
        families.append(fetched)
        return families


class Monitor:
    """The process's own counters and the database's queues, in one registry."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.registry = CollectorRegistry()
        self.inbound = Counter("mailgate_inbound", "Mails in, by route and outcome.",
                               ["route", "outcome"], registry=self.registry)
        self.ingest_seconds = Histogram("mailgate_ingest_seconds",
                                        "Time to store one mail and what it causes.",
                                        registry=self.registry)
        self.http_seconds = Histogram("mailgate_http_request_seconds",
                                      "Web requests by route template.", ["route"],
                                      registry=self.registry)
        self.registry.register(QueueCollector(desk))

    def ingested(self, inbound: Inbound, outcome: Outcome, seconds: float) -> None:
        route = inbound.route.partition(":")[0]  # one series per kind of route
        self.inbound.labels(route=route, outcome=outcome.status).inc()
        self.ingest_seconds.observe(seconds)

    def request(self, route: str, seconds: float) -> None:
        self.http_seconds.labels(route=route).observe(seconds)

    def ready(self) -> tuple[bool, str]:
        try:
            current = current_revision(self.desk.engine)
        except Exception as exc:
            return False, f"database unreachable: {str(exc).splitlines()[0]}"
        head = head_revision()
        if current != head:
            return False, f"schema at {current or 'nothing'}, expected {head}: run mailgate migrate"
        return True, "ready"

    def app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def readyz(request: Request) -> Response:
            ok, why = await asyncio.to_thread(self.ready)
            return PlainTextResponse(why + "\n", status_code=200 if ok else 503)

        async def metrics(request: Request) -> Response:
            body = await asyncio.to_thread(generate_latest, self.registry)
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                                 Route("/metrics", metrics)])


class Timing:
    """ASGI middleware timing each request under its route template, never its path (paths
    carry numbers and tokens)."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.observe(_template(scope), time.monotonic() - started)


def _template(scope: Scope) -> str:
    app = scope.get("app")
    for route in getattr(app, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"

