"""The Help Desk under attack, with plain HTTP clients and a hostile page in a real browser."""

from __future__ import annotations

import http.client
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlmodel import select

from tests.harness import Relay, request, send
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import HttpServer, QuietHandler, free_port
from tests.test_threads import envelope_to, reply_to
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Attachment, Message, Ticket

CAROL = "carol@client.test"
DAN = "dan@other.test"
ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def _desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})


def _counts(hd: HelpDesk) -> tuple[int, int, int]:
    with transaction(hd.desk.engine) as session:
        return tuple(session.exec(select(func.count()).select_from(table)).one()  # type: ignore[return-value]
                     for table in (Ticket, Message, Attachment))


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[str, list[bytes]]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f'{value}\r\n'.encode())
    for filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="attachments"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode())
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", parts


def _post_raw(client: WebClient, path: str, content_type: str, parts: list[bytes],
              chunked: bool = False) -> tuple[int, bytes]:
    """POST a body as the client's own bytes; the answer even when we stop reading early."""
    where = urlsplit(client.base)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    cookies = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", content_type)
    connection.putheader("Cookie", cookies)
    connection.putheader("Origin", client.base)
    if chunked:
        connection.putheader("Transfer-Encoding", "chunked")
    else:
        connection.putheader("Content-Length", str(sum(len(p) for p in parts)))
    connection.endheaders()
    try:
        for part in parts:
            for i in range(0, len(part), 1 << 20):
                piece = part[i:i + (1 << 20)]
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end: read what it said
    response = connection.getresponse()
    try:
        return response.status, response.read()
    finally:
        connection.close()


def _signed_in(hd: HelpDesk, address: str) -> WebClient:
    hd.add_account(address, password=PASSWORD)
    client = WebClient(hd.url)
    client.sign_in(address, PASSWORD)
    return client


def _request_fields(client: WebClient, subject: str) -> dict[str, str]:
    _, _, page = client.get("/requests/new")
    csrf = re.search(rb'name="csrf" value="([0-9a-f]+)"', page)
    nonce = re.search(rb'name="nonce" value="([0-9a-f]+)"', page)
    assert csrf and nonce
    return {"csrf": csrf.group(1).decode(), "nonce": nonce.group(1).decode(), "cc": "",
            "subject": subject, "description": "Nothing works.", "severity": "S3"}


@contextmanager
def _hostile_site(target: str) -> Iterator[str]:
    """Another origin on the same host (so the same site, cookies and all), serving a form
    that posts a request to the Help Desk as whoever is signed in there."""
    page = (f'<form method="post" action="{target}/requests/new">'
            '<input name="subject" value="Forged request"><input name="description" value="x">'
            '<input name="severity" value="S0"><input name="confirm" value="yes">'
            '<button type="submit">Win a prize</button></form>').encode()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

    with HttpServer(Handler) as server:
        yield f"{server.url}/"


def test_a_post_without_our_form_token_or_from_elsewhere_is_refused(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        client = _signed_in(hd, CAROL)
        fields = _request_fields(client, "Exports are slow")
        # No token at all, as a plain HTTP client or a forged form sends it.
        status, _, body = client.post("/requests/new", {**fields, "csrf": ""}, {"Origin": hd.url})
        assert status == 403
        assert b"This page had expired" in body and b'value="Exports are slow"' in body
        # The right token, but from another origin or another site.
        for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": f"http://127.0.0.1:{free_port()}"}):
            assert client.post("/requests/new", fields, headers)[0] == 403
        # Another browser's token does not fit this browser's cookie.
        other = WebClient(hd.url)
        assert client.post("/requests/new", {**fields, "csrf": other.token("/sign-in")},
                           {"Origin": hd.url})[0] == 403
        # A sign-in form posted by a stranger's page: refused too.
        assert WebClient(hd.url).post("/sign-in", {"email": CAROL, "password": PASSWORD})[0] == 403
        assert _counts(hd) == (0, 0, 0)

        # A hostile page in a real browser where Carol is signed in.
        page = person()
        page.goto(hd.url + "/sign-in")
        page.fill("#email", CAROL)
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        page.wait_for_selector("h1:has-text('My requests')")
        with _hostile_site(hd.url) as evil:
            page.goto(evil)
            with page.expect_navigation() as landed:
                page.click("text=Win a prize")
            assert landed.value.status == 403
        assert _counts(hd) == (0, 0, 0)
        # Her own form, sent properly, works.
        status, headers, _ = client.post("/requests/new", fields, {"Origin": hd.url})
        assert status == 303 and headers["location"] == "/requests/1"


def test_a_60_mb_upload_is_refused_with_413_and_nothing_is_stored(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any], tmp_path: Path
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        client = _signed_in(hd, CAROL)
        big = b"\x00" * (60 << 20)
        # Said up front (Content-Length), and streamed without a length (chunked).
        for chunked in (False, True):
            content_type, parts = _multipart(_request_fields(client, "Huge file"), [("dump.bin", big)])
            status, body = _post_raw(client, "/requests/new", content_type, parts, chunked)
            assert status == 413, body[:200]
        # More files than a form may carry.
        content_type, parts = _multipart(_request_fields(client, "Many files"),
                                         [(f"f{i}.txt", b"x") for i in range(11)])
        assert _post_raw(client, "/requests/new", content_type, parts)[0] in (400, 413)
        # And from a browser.
        dump = tmp_path / "dump.bin"
        dump.write_bytes(big)
        page = person()
        page.goto(hd.url + "/sign-in")
        page.fill("#email", CAROL)
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        page.click("nav >> text=Submit a request")
        page.get_by_label("Subject", exact=True).fill("Huge file")
        page.get_by_label("Description", exact=True).fill("Attached.")
        page.get_by_label("Attachments", exact=True).set_input_files(str(dump))
        with page.expect_navigation() as landed:
            page.click("button:has-text('Submit')")
        assert landed.value.status == 413
        assert "Too large" in page.content()
        assert _counts(hd) == (0, 0, 0)
        blobs = hd.desk.settings.storage_path / "blobs"
        assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


def test_a_ticket_and_its_files_are_404_to_anyone_not_on_it(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        mail = request("Invoice question", "See the attached invoice.",
                       sender=f"Carol <{CAROL}>")
        mail.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf",
                            filename="invoice.pdf")
        send(hd.smtp_port, mail)
        carol, dan = _signed_in(hd, CAROL), _signed_in(hd, DAN)
        status, _, page = carol.get("/requests/1")
        assert status == 200 and b"See the attached invoice." in page
        link = re.search(rb'href="(/requests/1/files/\d+/[^"]+)"', page)
        assert link
        status, headers, data = carol.get(link.group(1).decode())
        assert status == 200 and data == b"%PDF-1.4 invoice"
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith("attachment;")
        assert headers["X-Content-Type-Options"] == "nosniff"
        nowhere = dan.get("/requests/999")
        for path in ("/requests/1", link.group(1).decode(), "/requests/999/files/1/x",
                     "/requests/1/files/999/invoice.pdf"):
            status, _, body = dan.get(path)
            assert status == 404 and b"Invoice" not in body and b"invoice" not in body
            assert body == nowhere[2]  # the same as for a ticket that does not exist
        status, _, _ = dan.post("/requests/1/reply", {"csrf": dan.token("/requests"),
                                                      "text": "Let me in", "nonce": "0" * 32},
                                {"Origin": hd.url})
        assert status == 404
        assert b"Invoice question" not in dan.get("/requests")[2]
        with transaction(hd.desk.engine) as session:
            assert session.exec(select(func.count()).select_from(Message)).one() == 1


def test_the_page_shows_mail_as_text_and_never_the_agents_notes(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hostile = request("Layout broken", '<img src=x onerror="alert(1)"> <b>bold</b> & co',
                          sender=f"Carol <{CAROL}>")
        send(hd.smtp_port, hostile)
        notice = hd.mails_to(ALICE, "[#1]")[0]
        send(hd.smtp_port, reply_to(notice, ALICE, "#note\nThe customer is on the old plan."),
             sender=ALICE, recipients=envelope_to(notice))
        send(hd.smtp_port, reply_to(notice, ALICE, "Fixed in today's release."),
             sender=ALICE, recipients=envelope_to(notice))
        hd.mails_to(CAROL, "Re: [#1]")
        client = _signed_in(hd, CAROL)
        status, headers, page = client.get("/requests/1")
        assert status == 200
        assert b"&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &lt;b&gt;bold&lt;/b&gt; &amp; co" in page
        assert b"<img" not in page and b"<b>" not in page
        assert b"Fixed in today&#39;s release." in page
        assert b"old plan" not in page
        assert "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_same_form_sent_twice_makes_one_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        client = _signed_in(hd, CAROL)
        fields = _request_fields(client, "Double click")
        first = client.post("/requests/new", fields, {"Origin": hd.url})
        second = client.post("/requests/new", fields, {"Origin": hd.url})
        assert first[0] == second[0] == 303
        assert first[1]["location"] == second[1]["location"] == "/requests/1"
        assert _counts(hd)[:2] == (1, 1)
        confirmation = hd.mails_to(CAROL, "[#1]")
        assert len(confirmation) == 1
        # A new form is a new request.
        assert client.post("/requests/new", _request_fields(client, "Another"),
                           {"Origin": hd.url})[1]["location"] == "/requests/2"


def test_cookies_are_http_only_same_site_and_secure_behind_https(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    port = free_port()
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 web={"port": port, "base_url": "https://help.example.com"})
    with helpdesk(desk, relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        client = WebClient(f"http://127.0.0.1:{port}")  # as the TLS proxy passes it on
        _, headers, page = client.get("/sign-in")
        csrf = re.search(rb'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf
        cookie = headers["Set-Cookie"]
        status, headers, _ = _post_with_cookie(client, cookie, {
            "csrf": csrf.group(1).decode(), "email": CAROL, "password": PASSWORD},
            "https://help.example.com")
        assert status == 303
        session = headers["Set-Cookie"]
        for made in (cookie, session):
            flags = {part.strip().lower() for part in made.split(";")[1:]}
            assert {"httponly", "secure", "samesite=lax"} <= flags, made
        # The proxy's own address is not ours: a form posted from there is refused.
        assert _post_with_cookie(client, cookie, {"csrf": csrf.group(1).decode(), "email": CAROL,
                                                  "password": PASSWORD},
                                 client.base)[0] == 403


def _post_with_cookie(client: WebClient, cookie: str, fields: dict[str, str],
                      origin: str) -> tuple[int, Any, bytes]:
    """A cookie marked Secure is not sent back over plain HTTP by urllib: send it by hand."""
    return client.post("/sign-in", fields, {"Origin": origin, "Cookie": cookie.split(";")[0]})
