"""Several machines on one database: any `serve` sends, releases and replays any mail."""

from __future__ import annotations

import binascii
import email
import email.policy
import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from tests.harness import Received, Relay, request, send, wait_until_sent
from tests.servers import free_port
from tests.test_cli import run, serving_process
from tests.test_oncall_e2e import Pager

SECRET = "shared-by-every-node"
ALICE, BOB = "alice@example.com", "bob@example.com"
CAROL = "carol@customer.test"


def node(tmp_path: Path, name: str, database_url: str, *, relay: str | None,
         templates: Path | None = None, policy: str = "open", blobs: str = "") -> Path:
    """One machine's config: the same database and secret as the others, a data folder of
    its own (on SQLite, one machine: the folder beside the database file)."""
    folder = _folder(tmp_path, name, database_url)
    folder.mkdir(exist_ok=True)
    lines = [
        "[support]", 'address = "support@example.com"', 'name = "Example Support"',
        'status_page = "https://status.example.com"', f'secret = "{SECRET}"',
        f'sender_policy = "{policy}"', 'allowed_domains = ["customer.test"]',
        "[database]", f'url = "{database_url}"',
        "[storage]", f'path = "{folder / "data"}"', f'blobs = "{blobs}"' if blobs else "",
        "[smtp]", f"port = {free_port()}",
        "[web]", f"port = {free_port()}",
        "[monitoring]", f"port = {free_port()}",
        "[outbound]", f'relay = "{relay}"' if relay else "", "retry_base = 0.2", "lease = 2",
        "[agents]", f'addresses = ["{ALICE}", "{BOB}"]',
    ]
    if templates is not None:
        lines += ["[templates]", f'override = "{templates}"']
    config = tmp_path / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _folder(tmp_path: Path, name: str, database_url: str) -> Path:
    return tmp_path / name if database_url.startswith("postgresql") else tmp_path


def _port(config: Path) -> int:
    found = config.read_text().split("[smtp]\nport = ", 1)[1]
    return int(found.split("\n", 1)[0])


def _files(mail: Received | bytes) -> dict[str, bytes]:
    """Each named part's decoded bytes, by name."""
    found: dict[str, bytes] = {}
    _named_parts(mail if isinstance(mail, bytes) else mail.raw, found)
    return found


def _named_parts(entity: bytes, found: dict[str, bytes]) -> None:
    """The stdlib reads each part's headers and decodes each small part; the parts of a
    multipart are cut at their boundaries, and base64 bodies decoded, by bytes and
    binascii calls: the stdlib parser reads a mail line by line, some seconds for twenty
    mails of 12 MB."""
    head, separator, body = entity.partition(b"\r\n\r\n")
    part = email.message_from_bytes(head + separator, policy=email.policy.compat32)
    boundary = part.get_boundary()
    if part.get_content_maintype() == "multipart" and boundary and separator:
        pieces = (b"\r\n" + body).split(b"\r\n--" + boundary.encode())
        for piece in pieces[1:]:
            if piece.startswith(b"--"):
                break  # the closing delimiter
            _named_parts(piece.partition(b"\r\n")[2], found)  # after the delimiter's line
        return
    name = part.get_filename()
    if not name:
        return
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
        found[name] = binascii.a2b_base64(body)
        return
    payload = email.message_from_bytes(entity, policy=email.policy.compat32).get_payload(
        decode=True)
    assert isinstance(payload, bytes)
    found[name] = payload


def _kinds(config: Path) -> Counter[str]:
    outbox = json.loads(run(config, "outbox", "list", "--json").stdout)
    return Counter(f"{o['kind']} {o['status']}" for o in outbox)


def test_a_node_killed_before_sending_leaves_every_mail_to_another_with_its_files(
    tmp_path: Path, database_url: str, engine: Engine, relay: Relay
) -> None:
    first = node(tmp_path, "first", database_url, relay=f"127.0.0.1:{free_port()}")  # unreachable
    second = node(tmp_path, "second", database_url, relay=relay.address)
    assert run(first, "init").returncode == 0
    cc = [f"cc{n}@customer.test" for n in range(1, 6)]
    message = request("[S2] Exports fail", "The log is attached.", cc=", ".join(cc))
    log = os.urandom(300_000)
    message.add_attachment(log, maintype="application", subtype="octet-stream",
                           filename="export.log")
    with serving_process(first) as process:
        assert send(_port(first), message, sender=CAROL) == {}
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert _kinds(second) == Counter({"confirmation pending": 1, "new_ticket pending": 2})
    with serving_process(second) as process:
        relay.wait_for(3, timeout=30)
        wait_until_sent(engine)  # every mail recorded as sent: no second copy can follow
        received = relay.received
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    confirmations = [r for r in received if r.message["Subject"].endswith("] Exports fail")]
    notices = [r for r in received if r not in confirmations]
    assert len(received) == 3
    assert [sorted(r.rcpt_tos) for r in confirmations] == [sorted([CAROL, *cc])]
    assert sorted(r.rcpt_tos for r in notices) == [(ALICE,), (BOB,)]
    assert [_files(r) for r in notices] == [{"export.log": log}] * 2
    assert _kinds(second) == Counter({"confirmation sent": 1, "new_ticket sent": 2})


def test_a_mail_held_or_quarantined_on_one_node_is_released_and_replayed_on_another(
    tmp_path: Path, database_url: str, relay: Relay
) -> None:
    broken = tmp_path / "broken-templates"
    broken.mkdir()
    # The first machine's deploy went wrong: its confirmation names a variable we lack.
    (broken / "confirmation.txt").write_text("Hello {{ no_such_thing.name }}\n")
    first = node(tmp_path, "first", database_url, relay=relay.address, templates=broken,
                 policy="registered")
    second = node(tmp_path, "second", database_url, relay=relay.address, policy="registered")
    assert run(first, "init").returncode == 0
    stranger = request("Invoice question", "Where is my invoice?", sender="dan@elsewhere.test")
    stranger.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf",
                            filename="invoice.pdf")
    customer = request("Printer on fire", "Really.", sender=CAROL)
    for mail, sender in ((stranger, "dan@elsewhere.test"), (customer, CAROL)):
        taken = run(first, "deliver", "--recipient", "support@example.com", "--sender", sender,
                    stdin=mail.as_bytes())
        assert taken.returncode == 0, taken.stderr
    inbound = json.loads(run(second, "inbound", "list", "--json").stdout)
    assert sorted(r["status"] for r in inbound) == ["held", "quarantined"]
    held = next(r["id"] for r in inbound if r["status"] == "held")
    kept = next(r["id"] for r in inbound if r["status"] == "quarantined")

    released = run(second, "inbound", "release", held)
    replayed = run(second, "inbound", "replay", kept)
    assert released.returncode == 0, released.stderr
    assert replayed.returncode == 0, replayed.stderr
    tickets = json.loads(run(second, "tickets", "list", "--json").stdout)
    assert sorted(t["subject"] for t in tickets) == ["Invoice question", "Printer on fire"]
    invoice = next(t for t in tickets if t["subject"] == "Invoice question")
    shown = json.loads(run(second, "tickets", "show", str(invoice["number"]), "--json").stdout)
    assert [a["filename"] for a in shown["messages"][0]["attachments"]] == ["invoice.pdf"]


def test_an_installation_moves_its_folder_files_into_the_database(
    tmp_path: Path, database_url: str, relay: Relay
) -> None:
    first = node(tmp_path, "first", database_url, relay=relay.address, policy="registered",
                 blobs="folder")
    second = node(tmp_path, "second", database_url, relay=relay.address, policy="registered",
                  blobs="database")
    assert run(first, "init").returncode == 0
    held = request("Invoice question", "Where is my invoice?", sender="dan@elsewhere.test")
    held.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf",
                        filename="invoice.pdf")
    taken = run(first, "deliver", "--recipient", "support@example.com",
                "--sender", "dan@elsewhere.test", stdin=held.as_bytes())
    assert taken.returncode == 0, taken.stderr
    blobs = _folder(tmp_path, "first", database_url) / "data" / "blobs"
    assert len([p for p in blobs.rglob("*") if p.is_file()]) == 2  # the mail and its file
    # The upgrade: the first machine's config now keeps files in the database.
    first.write_text(first.read_text().replace('blobs = "folder"', 'blobs = "database"'))
    moved = run(first, "storage", "migrate-blobs", "--remove")
    assert moved.returncode == 0, moved.stderr
    assert b"2 file(s) copied" in moved.stdout
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    again = run(first, "storage", "migrate-blobs")
    assert b"0 file(s) copied" in again.stdout
    (mail,) = json.loads(run(second, "inbound", "list", "--json").stdout)
    released = run(second, "inbound", "release", mail["id"])
    assert released.returncode == 0, released.stderr
    (ticket,) = json.loads(run(second, "tickets", "list", "--json").stdout)
    shown = json.loads(run(second, "tickets", "show", str(ticket["number"]), "--json").stdout)
    assert [a["filename"] for a in shown["messages"][0]["attachments"]] == ["invoice.pdf"]


def _stored_bytes(database_url: str, tmp_path: Path) -> int:
    """What the installation keeps: the PostgreSQL database's size, or the SQLite files
    and every data folder."""
    if database_url.startswith("postgresql"):
        engine = create_engine("postgresql+psycopg://" + database_url.removeprefix("postgresql://"))
        with engine.connect() as connection:
            connection.execute(text("CHECKPOINT"))
            size = connection.execute(text("SELECT pg_database_size(current_database())")).scalar()
        engine.dispose()
        return int(size or 0)
    return sum(p.stat().st_size for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix != ".log" and "outbound" not in p.parts)


def _written(folder: Path, count: int, timeout: float = 300) -> list[bytes]:
    """The mails the folder transport wrote, once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(folder.glob("*.eml")) if folder.exists() else []
        if len(found) >= count or time.monotonic() > deadline:
            return [p.read_bytes() for p in found]
        time.sleep(0.2)


def test_an_answer_with_a_9_mb_file_to_20_readers_stores_one_copy_of_it(
    tmp_path: Path, database_url: str
) -> None:
    # Mail goes to the outbound folder: a relay on loopback takes too long for 180 MB.
    config = node(tmp_path, "only", database_url, relay=None)
    outbound = _folder(tmp_path, "only", database_url) / "data" / "outbound"
    assert run(config, "init").returncode == 0
    readers = [f"reader{n}@customer.test" for n in range(1, 20)]
    with serving_process(config) as process:
        send(_port(config), request("[S2] Exports fail", "Each export fails.",
                                    cc=", ".join(readers)), sender=CAROL)
        assert len(_written(outbound, 3)) == 3  # the confirmation and both agents' notices
        before = _stored_bytes(database_url, tmp_path)
        report = os.urandom(9_000_000)
        answer = request("Re: [#1] Exports fail", "The fixed export is attached.", sender=ALICE)
        answer.add_attachment(report, maintype="application", subtype="zip", filename="export.zip")
        raw = answer.as_bytes(policy=email.policy.SMTP)
        assert send(_port(config), raw, sender=ALICE) == {}
        written = _written(outbound, 23)
        grown = _stored_bytes(database_url, tmp_path) - before
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    replies = [m for m in written if b"fixed export" in m]
    readers_reached = [m.split(b"X-Mailgate-Envelope-To: ", 1)[1].split(b"\r\n", 1)[0].decode()
                       for m in replies]
    assert sorted(readers_reached) == sorted([CAROL, *readers])
    digests = {hashlib.sha256(_files(m)["export.zip"]).hexdigest() for m in replies}
    assert digests == {hashlib.sha256(report).hexdigest()}
    # The raw mail and the file once each (with some room for rows and indexes); a copy
    # per reader would be twenty times the raw mail.
    print(f"\nstored bytes grew by {grown / 2**20:.1f} MiB for a {len(raw) / 2**20:.1f} MiB mail")
    assert grown < 1.5 * (len(raw) + len(report))


def test_two_nodes_serving_at_once_send_each_mail_and_each_page_once(
    tmp_path: Path, database_url: str, engine: Engine, relay: Relay
) -> None:
    with Pager() as pager:
        oncall = ('[limits]\nper_recipient_per_hour = 0\n'
                  '[oncall]\nmax_pages_per_sender = 0\nmax_pages_per_domain = 0\n'
                  f'[oncall.webhook]\nurl = "{pager.url}"\nsecret = "paging"\n')
        nodes = [node(tmp_path, name, database_url, relay=relay.address)
                 for name in ("first", "second")]
        for config in nodes:
            # The default lease: the short one of the other tests runs out on a busy
            # machine while a send is under way, and the other node sends it again.
            config.write_text(config.read_text().replace("lease = 2\n", "lease = 300\n") + oncall)
        assert run(nodes[0], "init").returncode == 0
        mails = [request(f"[S{0 if n % 4 == 0 else 2}] Request {n}", "It broke.",
                         sender=f"customer{n}@customer.test") for n in range(12)]
        with serving_process(nodes[0]), serving_process(nodes[1]):
            # Both take mail at once, each queueing work that either may send.
            senders = [threading.Thread(target=lambda k=k: [
                send(_port(nodes[k]), mail, sender=mail["From"]) for mail in mails[k::2]])
                for k in (0, 1)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            wait_until_sent(engine, timeout=120)
            pages = pager.wait_for(3)
            received = relay.received
    assert _kinds(nodes[0]) == Counter({"confirmation sent": 12, "new_ticket sent": 24})
    assert len(received) == 36
    assert Counter(r.message["Message-ID"] for r in received).most_common(1)[0][1] == 1
    assert sorted(p["ticket"]["subject"] for p in pages) == ["Request 0", "Request 4", "Request 8"]
