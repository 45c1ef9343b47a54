"""Deliver due pages to the on-call hooks: claim, call the hook outside a transaction, record."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import Engine, case, exists, literal, or_, update
from sqlmodel import Session, col, select

from mailgate.backoff import backoff
from mailgate.hooks import HTTP_TIMEOUT, Hook, HookAnswer, hooks_for
from mailgate.waiting import first_of
from ticketing.audit import SYSTEM, Actor, record
from ticketing.clock import Clock
from ticketing.compose import Templates
from ticketing.db import StorageError, transaction
from ticketing.leases import PAGES, holder_name, this_process
from ticketing.models import Page, PageAttempt
from ticketing.notifications import page_not_delivered
from ticketing.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_BASE = 15.0  # seconds before the second attempt
BACKOFF_CAP = 600.0  # a page is urgent: never wait longer than this between attempts
JITTER = 0.25  # up to a quarter more, so workers that failed together do not retry together
BATCH = 100


def page_backoff(attempts: int, rng: random.Random, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait after the attempts-th failure: never sooner than the doubling
    delay, up to a quarter later."""
    return backoff(attempts, base, BACKOFF_CAP, (1.0, 1.0 + JITTER), rng)


def retry_after_seconds(value: str, now: datetime) -> float | None:
    """RFC 9110 section 10.2.3: delay-seconds or an HTTP-date."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class _Claimed:
    id: int
    ticket_id: int
    hook: str
    action: str
    payload: str


def _lease(settings: Settings) -> timedelta:
    # Short, and renewed while the hook is called: a worker that dies holding a claim
    # loses it within one lease, and another worker takes the page.
    return timedelta(seconds=settings.oncall.lease)


def _longest_call(settings: Settings) -> float:
    """Seconds past which a hook call is stuck, not slow: its lease is renewed no longer."""
    longest = HTTP_TIMEOUT
    if settings.oncall.command is not None:
        longest = max(longest, float(settings.oncall.command.timeout))
    return longest + 60


@contextmanager
def _renewing(engine: Engine, clock: Clock, claimed: _Claimed, worker: str, lease: timedelta,
              longest: float) -> Iterator[None]:
    """Renew the page's lease every third of it while the body (the hook call) runs, for
    at most `longest` seconds: a slow hook never loses the page to another worker, and
    the page of a worker that died is anyone's one lease after its last renewal."""
    done = threading.Event()

    def renew() -> None:
        started = time.monotonic()
        while not done.wait(lease.total_seconds() / 3):
            if time.monotonic() - started > longest:
                log.warning("[#%d] page %d: the %s hook has not answered in %.0f s; its "
                            "lease is no longer renewed", claimed.ticket_id, claimed.id,
                            claimed.hook, longest)
                return
            try:
                with transaction(engine) as session:
                    now = clock.now()
                    renewed = session.execute(
                        update(Page)
                        .where(col(Page.id) == claimed.id, col(Page.status) == "pending",
                               PAGES.held_by(worker), col(Page.claimed_until).is_not(None))
                        .values(PAGES.take(worker, now + lease))
                    )
                    if renewed.rowcount != 1:  # type: ignore[attr-defined]
                        # An operator retried it, or another worker took it: its answer decides.
                        log.warning("[#%d] page %d: no longer held by %s", claimed.ticket_id,
                                    claimed.id, worker)
                        return
            except Exception as exc:  # the next renewal tries again; the lease may run out
                log.warning("[#%d] page %d: could not renew its lease: %s", claimed.ticket_id,
                            claimed.id, exc)

    renewer = threading.Thread(target=renew, name=f"page-{claimed.id}-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def _claimable(now: datetime) -> list[Any]:
    earlier = Page.__table__.alias("earlier")  # type: ignore[attr-defined]
    # A resolve waits for its trigger, so PagerDuty never sees them out of order.
    trigger_pending = exists().where(
        earlier.c.dedup_key == col(Page.dedup_key),
        earlier.c.hook == col(Page.hook),
        earlier.c.action == "trigger",
        earlier.c.status == "pending",
    )
    return [
        col(Page.status) == "pending",
        col(Page.next_attempt_at) <= now,
        PAGES.free(now),
        or_(col(Page.action) == "trigger", ~trigger_pending),
    ]


def _claim_next(
    engine: Engine, now: datetime, worker: str, lease: timedelta, seen: set[int]
) -> _Claimed | None:
    """Take one due page for this worker, or None when nothing is due.

    The UPDATE repeats the conditions, so of several workers that saw the same row
    only the one whose UPDATE matched it owns it until claimed_until.
    """
    with transaction(engine) as session:
        query = (
            select(Page.id)
            .where(*_claimable(now))
            .order_by(col(Page.next_attempt_at), col(Page.id))
            .limit(10)
        )
        if seen:
            query = query.where(col(Page.id).not_in(seen))
        for page_id in session.exec(query).all():
            if page_id is None:
                continue
            claimed = session.exec(
                update(Page)
                .where(col(Page.id) == page_id, *_claimable(now))
                .values(PAGES.take(worker, now + lease))
            )
            if claimed.rowcount == 1:
                page = session.get_one(Page, page_id)
                assert page.id is not None
                return _Claimed(page.id, page.ticket_id, page.hook, page.action, page.payload)
            seen.add(page_id)
    return None


def _record_answer(
    engine: Engine, claimed: _Claimed, worker: str, outcome: HookAnswer, now: datetime,
    rng: random.Random, settings: Settings,
) -> None:
    with transaction(engine) as session:
        page = session.get_one(Page, claimed.id, with_for_update=True)
        session.add(PageAttempt(page_id=claimed.id, at=now, ok=outcome.ok, detail=outcome.detail))
        page.attempts += 1
        label = f"[#{page.ticket_id}] page {page.id} ({page.hook} {page.action})"
        if page.status != "pending":
            log.warning("%s: answered %s after it was already %s", label, outcome.detail,
                        page.status)
            return
        if outcome.ok:
            page.status, page.delivered_at, page.last_error = "delivered", now, ""
            PAGES.let_go_of(page)
            record(session, page.ticket_id, "page", new=f"{page.action} delivered ({page.hook})",
                   detail=outcome.detail, actor=SYSTEM, route="system", now=now)
            log.info("%s delivered on attempt %d: %s", label, page.attempts, outcome.detail)
            return
        if page.claimed_by != worker:
            # Our claim ran out and another worker holds the page now: its answer decides.
            log.warning("%s: %s, and the claim has passed to %s", label, outcome.detail,
                        page.claimed_by)
            return
        PAGES.let_go_of(page)
        page.last_error = outcome.detail
        if not outcome.retry or now >= page.give_up_at:
            page.status = "gave_up"
            what = "ON-CALL NOT PAGED" if page.action == "trigger" else "PAGE NOT RESOLVED"
            why = "refused" if not outcome.retry else "still failing at the give-up time"
            log.error("[#%d] %s: page %d to the %s hook gave up after %d attempts, %s: %s",
                      page.ticket_id, what, page.id, page.hook, page.attempts, why,
                      outcome.detail)
            record(session, page.ticket_id, "page", new=f"{page.action} gave up ({page.hook})",
                   detail=outcome.detail, actor=SYSTEM, route="system", now=now)
            if page.action == "trigger":
                page_not_delivered(session, settings, Templates(settings), page, now)
            return
        delay = page_backoff(page.attempts, rng, settings.oncall.retry_base)
        asked = retry_after_seconds(outcome.retry_after, now)
        if asked is not None:
            delay = max(1.0, asked)
        page.next_attempt_at = min(now + timedelta(seconds=delay), page.give_up_at)
        log.warning("%s attempt %d failed (%s); next at %s", label, page.attempts,
                    outcome.detail, page.next_attempt_at.isoformat())


def send_due_pages(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    worker: str,
    *,
    hooks: Mapping[str, Hook] | None = None,
    rng: random.Random | None = None,
    limit: int = BATCH,
) -> int:
    """One pass over the due pages, each tried once; returns how many were tried.

    No transaction is open while a hook is called: the claim and the record are
    their own short transactions.
    """
    hooks = hooks_for(settings.oncall) if hooks is None else hooks
    rng = rng or random.Random()
    worker = holder_name(worker)
    lease, longest = _lease(settings), _longest_call(settings)
    seen: set[int] = set()
    tried = 0
    while tried < limit:
        claimed = _claim_next(engine, clock.now(), worker, lease, seen)
        if claimed is None:
            break
        seen.add(claimed.id)
        hook = hooks.get(claimed.hook)
        if hook is None:
            outcome = HookAnswer(False, f"the {claimed.hook} hook is no longer configured")
        else:
            try:
                with _renewing(engine, clock, claimed, worker, lease, longest):
                    outcome = hook.send(claimed.payload.encode("utf-8"))
            except Exception as exc:  # a broken hook must not leave the page claimed
                log.exception("[#%d] page %d: the %s hook failed", claimed.ticket_id,
                              claimed.id, claimed.hook)
                outcome = HookAnswer(False, f"{type(exc).__name__}: {exc}", retry=True)
        _record_answer(engine, claimed, worker, outcome, clock.now(), rng, settings)
        tried += 1
    return tried


async def run_paging(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    stop: asyncio.Event,
    wake: asyncio.Event,
    *,
    worker: str | None = None,
    interval: float = 5.0,
) -> None:
    """Deliver pages until stop is set; wake (set after a commit that paged) starts a pass now."""
    name = worker or this_process()
    while not stop.is_set():
        wake.clear()
        try:
            await asyncio.to_thread(send_due_pages, engine, settings, clock, name)
        except StorageError as exc:
            log.warning("paging worker: the database is not answering: %s", exc)
        except Exception:
            log.exception("paging worker: a pass failed")
        await first_of(stop, wake, timeout=interval)


_TIME = Page.__table__.c.give_up_at.type  # type: ignore[attr-defined]


class PageBusy(Exception):
    """The page is being delivered right now: its worker's answer decides what comes next."""

    def __init__(self, page_id: int, holder: str) -> None:
        super().__init__(f"page {page_id} is being delivered by {holder} now; its answer "
                         "decides what comes next (retry it after that if it is needed)")
        self.holder = holder


def retry_page(
    engine: Engine, page_id: int, now: datetime, window: timedelta | None = None,
    by: Actor | None = None,
) -> int:
    """Operator: make a waiting or given-up page due now; returns 1, or 0 when there is none.
    Raises PageBusy for a page a worker is delivering: it is left to that worker.

    With a window the page gets that long again before it gives up; without one it
    gets at least this one more attempt. The retry is on the ticket's audit trail, by `by`.
    """
    by = by or Actor(SYSTEM, route="system")
    # Typed as the column, so it is stored as the column stores every time (UTC).
    at = literal(now, _TIME)
    give_up_at = literal(now + window, _TIME) if window is not None else case(
        (col(Page.give_up_at) < at, at), else_=col(Page.give_up_at))
    with transaction(engine) as session:
        # One conditional UPDATE: a page a worker holds right now is left to it, or a
        # second worker would page the engineer again while the first is at it.
        retried = session.execute(
            update(Page)
            .where(col(Page.id) == page_id, col(Page.status).in_(("pending", "gave_up")),
                   PAGES.free(now))
            .values(status="pending", next_attempt_at=now, give_up_at=give_up_at,
                    **PAGES.let_go())
            .returning(col(Page.ticket_id), col(Page.action), col(Page.hook),
                       col(Page.attempts))
        ).first()
        if retried is None:
            held = session.exec(select(Page.claimed_by).where(
                col(Page.id) == page_id, col(Page.status) == "pending",
                col(Page.claimed_until) > now)).first()
            if held is not None:
                raise PageBusy(page_id, held)
            return 0
        ticket_id, action, hook, attempts = retried
        record(session, ticket_id, "page", new=f"{action} retry ({hook})",
               detail=f"page {page_id} due again after {attempts} attempt(s)",
               actor=by.address, actor_name=by.name, route=by.route, now=now)
        log.info("[#%d] page %d (%s %s) due again, by %s via %s", ticket_id, page_id,
                 hook, action, by.address, by.route)
        return 1


def _masked(payload: str) -> Any:
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(body, dict) and body.get("routing_key"):
        key = str(body["routing_key"])
        body["routing_key"] = "…" + key[-4:] if len(key) > 8 else "…"
    return body


def _stamp(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def list_pages(session: Session, ticket_id: int | None = None) -> list[dict[str, Any]]:
    """Every page, oldest first, for `mailgate pages list --json`.

    "attempts" counts the tries and "history" lists each one (when, accepted, what
    the hook answered). The PagerDuty routing key shows its last four characters only.
    """
    query = select(Page).order_by(col(Page.id))
    if ticket_id is not None:
        query = query.where(Page.ticket_id == ticket_id)
    pages = session.exec(query).all()
    history: dict[int, list[dict[str, Any]]] = {}
    ids = [page.id for page in pages if page.id is not None]
    if ids:
        rows = session.exec(
            select(PageAttempt).where(col(PageAttempt.page_id).in_(ids)).order_by(
                col(PageAttempt.id)
            )
        ).all()
        for attempt in rows:
            history.setdefault(attempt.page_id, []).append(
                {"at": _stamp(attempt.at), "ok": attempt.ok, "detail": attempt.detail}
            )
    return [
        {
            "id": page.id,
            "ticket": page.ticket_id,
            "hook": page.hook,
            "action": page.action,
            "dedup_key": page.dedup_key,
            "status": page.status,
            "attempts": page.attempts,
            "created_at": _stamp(page.created_at),
            "next_attempt_at": _stamp(page.next_attempt_at),
            "give_up_at": _stamp(page.give_up_at),
            "delivered_at": _stamp(page.delivered_at),
            "last_error": page.last_error,
            "payload": _masked(page.payload),
            "history": history.get(page.id or 0, []),
        }
        for page in pages
    ]
