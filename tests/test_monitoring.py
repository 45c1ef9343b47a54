"""The monitoring address: /healthz, /readyz and /metrics of a running `mailgate serve`."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.harness import Relay, request, send, serving, wait_until_sent
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address})


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_metrics_count_the_mail_in_and_read_the_queues(desk: Desk, relay: Relay) -> None:
    base = f"http://127.0.0.1:{desk.settings.monitoring.port}"
    with serving(desk) as port:
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz") == (200, "ready\n")
        first = request("Printer on fire", "It is on fire.")
        send(port, first)
        send(port, first)  # the same mail again: a duplicate
        send(port, request("VPN down", "Cannot connect."))
        send(port, request("Invoice wrong", "Twice the price."))
        reply = request("Re: Printer on fire", "Still burning.",
                        **{"In-Reply-To": first["Message-ID"]})
        send(port, reply)
        wait_until_sent(desk.engine)
        _get(f"http://127.0.0.1:{desk.settings.web.port}/sign-in")
        status, body = _get(base + "/metrics")
    assert status == 200
    samples = _samples(body)
    inbound = {labels: value for (name, labels), value in samples.items()
               if name == "mailgate_inbound_total"}
    assert inbound == {
        (("outcome", "new_ticket"), ("route", "smtp")): 3,
        (("outcome", "duplicate"), ("route", "smtp")): 1,
        (("outcome", "reply"), ("route", "smtp")): 1,
    }
    assert samples[("mailgate_ingest_seconds_count", ())] == 5
    assert samples[("mailgate_outbox_pending", ())] == 0
    assert samples[("mailgate_outbox_oldest_pending_seconds", ())] == 0
    assert samples[("mailgate_outbox_failed", ())] == 0
    assert samples[("mailgate_pages_pending", ())] == 0
    assert samples[("mailgate_held", ())] == 0
    assert samples[("mailgate_quarantined", ())] == 0
    # Timed under the route's template, not under the path asked for.
    assert samples[("mailgate_http_request_seconds_count", (("route", "/sign-in"),))] == 1


def test_readyz_says_503_when_the_schema_is_not_migrated(desk: Desk) -> None:
    base = f"http://127.0.0.1:{desk.settings.monitoring.port}"
    with serving(desk):
        assert _get(base + "/readyz")[0] == 200
        with transaction(desk.engine) as session:
            session.execute(text("DELETE FROM alembic_version"))
        status, body = _get(base + "/readyz")
        assert _get(base + "/healthz")[0] == 200
    assert status == 503
    assert "mailgate migrate" in body
