"""Screening: real auto-replies, bounces and lists from the corpus, each rule, agent trust."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from textwrap import dedent

import pytest

from tests.servers import corpus_dir
from ticketing.authresults import sender_authenticated
from ticketing.identity import LOOP_HEADER, new_message_id
from ticketing.inbound import Inbound
from ticketing.parse import parse_mail
from ticketing.screening import Verdict, screen
from ticketing.settings import ConfigError, Settings, settings_from_mapping

SETTINGS = settings_from_mapping({"support": {"address": "support@example.com"}})


def _screen(raw: bytes, route: str = "imap:INBOX", envelope_sender: str = "") -> Verdict:
    return screen(parse_mail(raw), Inbound(raw, route, envelope_sender), SETTINGS)


def _mail(text: str) -> bytes:
    return dedent(text).lstrip().replace("\n", "\r\n").encode()


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# --- the corpus ---------------------------------------------------------------

# What each kind of the loops/ manifest must come out as.
LOOP_KINDS = {
    "vacation": "auto_reply",
    "ooo_exchange": "auto_reply",
    "auto_reply": "auto_reply",
    "autoresponder_other": "auto_reply",
    "mdn": "auto_reply",
    "mailing_list": "list",
    "control_human": "human",
}
LOOP_EXCEPTIONS = {
    # Boxbe's challenge goes out as a multipart/report delivery-status report of
    # a 4.7.0 delay: by its structure a delivery report, with nothing failed.
    "rjbs-bounceparser/boxbe-cr2.msg": "bounce",
}


def test_loops_corpus_is_classified_as_its_manifest_says() -> None:
    loops = corpus_dir() / "loops"
    rows = _manifest(loops / "MANIFEST.tsv")
    wrong = {}
    kinds: Counter[str] = Counter()
    for row in rows:
        path = row["local_path"]
        expected = LOOP_EXCEPTIONS.get(path, LOOP_KINDS[row["kind"]])
        verdict = _screen((loops / path).read_bytes())
        kinds[row["kind"]] += 1
        if verdict.kind != expected:
            wrong[path] = f"{row['kind']}: got {verdict.kind} ({verdict.rule}: {verdict.reason})"
        if row["kind"] != "control_human":
            assert verdict.kind != "human", path
        if expected != "bounce":
            assert verdict.failed_recipients == (), path
    assert wrong == {}
    assert sum(kinds.values()) == len(rows) >= 30
    assert kinds["control_human"] >= 5


def _bounce_set() -> list[str]:
    corpus = corpus_dir()
    return [
        row["local_path"]
        for row in _manifest(corpus / "MANIFEST.tsv")
        if "bounce_dsn" in row["category_guess"].split(",")
        or row["local_path"].startswith(("sisimai-set-of-emails/", "bounceparser-perl/"))
    ]


# Files of the bounce sets that are not bounces, and what they are instead.
NOT_BOUNCES = {
    # RFC 3834 auto-replies kept beside the bounces by the bounce parsers.
    **{f"sisimai-set-of-emails/rfc3834-0{n}.eml": "auto_reply" for n in range(1, 7)},
    "bounceparser-perl/aol-vacation.msg": "auto_reply",
    "bounceparser-perl/polish-autoreply.msg": "auto_reply",  # Precedence: junk
    "bounceparser-perl/warning-6.msg": "auto_reply",  # Lotus Notes "AUTO: ... out of the office"
    "bounceparser-perl/bluebottle.msg": "auto_reply",  # challenge-response
    # Read receipts (RFC 8098), one with its report-type anonymized away.
    "mimekit/disposition-notification.anonymized.eml": "auto_reply",
    "mimekit/disposition-notification.txt": "auto_reply",
    "flanker/disposition-notification.eml": "auto_reply",
    # Abuse feedback reports (RFC 5965).
    "flanker/complaints/aol.eml": "auto_reply",
    "flanker/complaints/yahoo.eml": "auto_reply",
    "sisimai-set-of-emails/arf-01.eml": "auto_reply",
    "sisimai-set-of-emails/arf-02.eml": "auto_reply",
    "sisimai-set-of-emails/arf-11.eml": "auto_reply",
    "sisimai-set-of-emails/arf-12.eml": "auto_reply",
    # fml list manager notices to a poster ("not member", "Loop Alert"), with the
    # list's own headers: list mail, not a delivery failure.
    "sisimai-set-of-emails/lhost-fml-02.eml": "list",
    "sisimai-set-of-emails/lhost-fml-03.eml": "list",
    # A person's mail and spam, kept as negatives by the bounce parsers.
    "sisimai-set-of-emails/is-not-bounce-01.eml": "human",
    "sisimai-set-of-emails/is-not-bounce-02.eml": "human",
    "bounceparser-perl/spam-bogus-email-in-report.msg": "human",
    "bounceparser-perl/spam-lots-of-bogus-addresses.msg": "human",
    "bounceparser-perl/spam-with-badly-parsed-email.msg": "human",
    "bounceparser-perl/spam-with-image.msg": "human",
    # A real bounce we miss: KDDI's Japanese error notice from no-reply@ has no
    # report, no bounce header and no English subject ("メールエラー通知"). It
    # costs a ticket, not a loop: no-reply@ never gets an automatic answer.
    "sisimai-set-of-emails/lhost-kddi-01.eml": "human",
}


def test_corpus_bounces_are_classified_bounce() -> None:
    corpus = corpus_dir()
    paths = _bounce_set()
    wrong = {}
    for path in paths:
        verdict = _screen((corpus / path).read_bytes())
        expected = NOT_BOUNCES.get(path, "bounce")
        if verdict.kind != expected:
            wrong[path] = f"expected {expected}, got {verdict.kind} ({verdict.rule})"
    assert wrong == {}
    assert len(paths) >= 350
    assert set(NOT_BOUNCES) <= set(paths)


def test_failed_recipients_are_read_from_real_reports() -> None:
    corpus = corpus_dir()
    cases = {
        # Postfix, two recipients in one report.
        "sisimai-set-of-emails/lhost-postfix-02.eml": (
            ("filtered@example.co.jp", "userunknown@example.co.jp"),
            True,
        ),
        "sisimai-set-of-emails/rhost-aol-01.eml": (("kijitora@example.jp",), True),
        "flanker/bounce/mailbox-full.eml": (("user@aol.com",), True),
        # Its MIME boundary does not match: the fields are read from the text.
        "sisimai-set-of-emails/rhost-google-02.eml": (("neko-nyaan@example.org",), True),
        # Only the status part, sent alone; Action failed with a 4.x.x Status.
        "flanker/bounce/delayed-broken.eml": (("demo@example.com",), False),
        # A delay warning: a report, but nobody failed yet.
        "bounceparser-perl/warning-8.msg": ((), False),
    }
    for path, (recipients, permanent) in cases.items():
        verdict = _screen((corpus / path).read_bytes())
        assert verdict.kind == "bounce", path
        assert (verdict.failed_recipients, verdict.permanent) == (recipients, permanent), path


def test_most_real_reports_name_a_failed_recipient() -> None:
    corpus = corpus_dir()
    reports = [
        verdict
        for verdict in (_screen((corpus / p).read_bytes()) for p in _bounce_set())
        if verdict.rule == "delivery-report"
    ]
    named = [v for v in reports if v.failed_recipients]
    assert len(reports) >= 200
    assert len(named) / len(reports) > 0.9
    assert all("@" in a and a == a.lower() for v in named for a in v.failed_recipients)


def test_people_writing_from_their_mail_clients_stay_human() -> None:
    corpus = corpus_dir()
    clients = {"client:gmail", "client:thunderbird", "client:apple", "client:outlook_exchange"}
    automatic = {
        "mailing_list", "bounce_dsn", "auto_reply", "read_receipt_mdn", "abuse_report_arf",
        "headers_partial_or_fragment", "body_only(no_headers)",
    }
    checked = 0
    for row in _manifest(corpus / "MANIFEST.tsv"):
        categories = set(row["category_guess"].split(","))
        if not categories & clients or categories & automatic:
            continue
        if row["local_path"].startswith(("sisimai-set-of-emails/", "bounceparser-perl/")):
            continue
        verdict = _screen((corpus / row["local_path"]).read_bytes())
        assert verdict.kind == "human", (row["local_path"], verdict)
        checked += 1
    assert checked >= 80


# --- each rule on a literal mail ----------------------------------------------

HUMAN = """\
    From: Ann Customer <ann@customer.example>
    To: support@example.com
    Subject: The export button does nothing
    Message-ID: <1@customer.example>

    Hello, since this morning the export button does nothing.
    """


def _with(*headers: str, subject: str = "The export button does nothing") -> bytes:
    lines = [
        "From: Ann Customer <ann@customer.example>",
        "To: support@example.com",
        f"Subject: {subject}",
        "Message-ID: <1@customer.example>",
        *headers,
        "",
        "Hello, I am away until Monday.",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_a_plain_mail_is_human() -> None:
    assert _screen(_mail(HUMAN)) == Verdict("human", "human", "no sign of automatic mail")


def test_our_own_mail_coming_back() -> None:
    assert _screen(_with(f"{LOOP_HEADER}: support@example.com")).rule == "own-loop-header"
    assert _screen(_with(f"{LOOP_HEADER}: SUPPORT@Example.com")).kind == "own"
    secret = SETTINGS.support.secret
    ours = new_message_id("example.com", secret)
    raw = _mail(HUMAN).replace(b"<1@customer.example>", f"<{ours}>".encode())
    verdict = _screen(raw)
    assert (verdict.kind, verdict.rule) == ("own", "own-message-id")
    other_domain = _mail(HUMAN).replace(
        b"<1@customer.example>", f"<{new_message_id('elsewhere.example', secret)}>".encode()
    )
    assert _screen(other_domain).kind == "human"


def test_another_desks_loop_header_and_a_lookalike_message_id_are_not_ours() -> None:
    # Another mailgate desk (a customer's) marks its mail with its own address.
    assert _screen(_with(f"{LOOP_HEADER}: support@customer.example")).kind == "human"
    assert _screen(_with(f"{LOOP_HEADER}: yes")).kind == "human"
    # Our shape and domain, but signed with another secret, or not at all.
    forged = new_message_id("example.com", "not-our-secret")
    for lookalike in (forged, "mailgate.0123456789abcdef0123456789abcdef@example.com"):
        raw = _mail(HUMAN).replace(b"<1@customer.example>", f"<{lookalike}>".encode())
        assert _screen(raw).kind == "human"


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        ("Auto-Submitted: auto-replied", "auto-submitted"),
        ("Auto-Submitted: auto-generated", "auto-submitted"),
        ("Auto-Submitted: auto-notified; owner-email=a@b.example", "auto-submitted"),
        ("X-Autoreply: yes", "x-autoreply"),
        ("X-Autorespond: Ann is away", "x-autoreply"),
        ("X-MS-Exchange-Inbox-Rules-Loop: ann@customer.example", "exchange-auto-reply"),
        ("X-Apple-Action: VACATION", "apple-vacation"),
        ("Precedence: junk", "junk-precedence"),
        ("Precedence: auto_reply", "junk-precedence"),
        ("X-Bluebottle-Request: <1234>", "challenge-response"),
    ],
)
def test_auto_reply_headers(header: str, rule: str) -> None:
    verdict = _screen(_with(header))
    assert (verdict.kind, verdict.rule) == ("auto_reply", rule)
    assert verdict.failed_recipients == () and "\n" not in verdict.reason


def test_auto_submitted_no_is_a_person() -> None:
    # RFC 3834 5.1: "no" is what a person's mail may carry.
    assert _screen(_with("Auto-Submitted: no")).kind == "human"
    assert _screen(_with("Auto-Submitted: No (sent by hand)")).kind == "human"


def test_exchange_suppress_header_alone_is_not_an_auto_reply() -> None:
    # Outlook sets it on ordinary mail; with an auto-reply subject it is one.
    assert _screen(_with("X-Auto-Response-Suppress: All")).kind == "human"
    verdict = _screen(_with("X-Auto-Response-Suppress: All", subject="Automatic reply: Hello"))
    assert (verdict.kind, verdict.rule) == ("auto_reply", "exchange-auto-reply")


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Your ticket",
        "Auto reply: Your ticket",
        "AutoReply: Your ticket",
        "AUTO: Ann Customer is out of the office (returning 05/01/2026)",
        "Out of Office AutoReply: Your ticket",
    ],
)
def test_auto_reply_subjects(subject: str) -> None:
    assert _screen(_with(subject=subject)).kind == "auto_reply"


@pytest.mark.parametrize(
    "subject",
    [
        "Re: Automatic reply: Your ticket",
        "Fwd: Undelivered Mail Returned to Sender",
        "My vacation booking failed",
        "Out of office hours support?",
        "Delivery of my order is late",
        "Undelivered order #1234",
        "Undeliverable address on my invoice",
        "Delivery failure on my parcel",
        "Could not send message from the app",
        "Package returned to sender",
        "Returned mail never arrived",
    ],
)
def test_people_may_use_the_same_words(subject: str) -> None:
    assert _screen(_with(subject=subject)).kind == "human"


@pytest.mark.parametrize(
    "subject",
    [
        "Undelivered Mail Returned to Sender",
        "Delivery Status Notification (Failure)",
        "Mail delivery failed: returning message to sender",
        "Undeliverable: Your ticket",
        "Returned mail: see transcript for details",
        "failure notice",
        "Undeliverable Message",
        "DELIVERY FAILURE: User ann not listed",
        "Delivery Notification: Delivery has failed",
        "Warning: could not send message for past 4 hours",
    ],
)
def test_bounce_subjects(subject: str) -> None:
    verdict = _screen(_with(subject=subject))
    assert (verdict.kind, verdict.rule) == ("bounce", "bounce-subject")


def test_exim_failed_recipients_header() -> None:
    raw = _with(
        "X-Failed-Recipients: Gone@Customer.example, other@customer.example",
        subject="Mail delivery failed: returning message to sender",
    )
    verdict = _screen(raw)
    assert verdict.failed_recipients == ("gone@customer.example", "other@customer.example")
    assert not verdict.permanent  # no status code says so


@pytest.mark.parametrize(
    "sender",
    [
        "MAILER-DAEMON@mx.customer.example",
        "Mail Delivery System <Mailer-Daemon@mx.customer.example>",
        "postmaster@customer.example",
        "mailer-daemon",
        "<>",
    ],
)
def test_daemon_senders(sender: str) -> None:
    raw = _mail(HUMAN).replace(b"Ann Customer <ann@customer.example>", sender.encode())
    verdict = _screen(raw)
    assert (verdict.kind, verdict.rule) == ("bounce", "daemon-sender")


DSN = """\
    From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>
    To: support@example.com
    Subject: Your message could not be delivered
    Auto-Submitted: auto-replied
    MIME-Version: 1.0
    Content-Type: multipart/report; report-type=delivery-status; boundary="B"

    --B
    Content-Type: text/plain

    Your message could not be delivered.

    --B
    Content-Type: message/delivery-status

    Reporting-MTA: dns; mx.customer.example

    Original-Recipient: rfc822;Ann@Customer.example
    Final-Recipient: rfc822; ann.c@mailhost.customer.example
    Action: failed
    Status: 5.1.1
    Diagnostic-Code: smtp; 550 5.1.1 no such user

    Final-Recipient: rfc822; bob@customer.example
    Action: delayed
    Status: 4.4.1

    Final-Recipient: rfc822; carol@customer.example
    Action: failed
    Status: 4.4.7

    --B
    Content-Type: text/rfc822-headers

    Message-ID: <mailgate.0@example.com>

    --B--
    """


def test_delivery_report_names_who_failed_and_for_good() -> None:
    verdict = _screen(_mail(DSN))
    assert (verdict.kind, verdict.rule) == ("bounce", "delivery-report")
    # Original-Recipient is the address we wrote to; a delay is no failure yet;
    # a failure with a 4.x.x status is not permanent; one 5.x.x makes it permanent.
    assert verdict.failed_recipients == ("ann@customer.example", "carol@customer.example")
    assert verdict.permanent


def test_a_forwarded_bounce_is_a_person_asking_for_help() -> None:
    forwarded = (
        b"From: Ann Customer <ann@customer.example>\r\n"
        b"To: support@example.com\r\n"
        b"Subject: Fwd: Your message could not be delivered\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="OUTER"\r\n\r\n'
        b"--OUTER\r\nContent-Type: text/plain\r\n\r\nWhy did this bounce?\r\n"
        b"--OUTER\r\nContent-Type: message/rfc822\r\n\r\n"
    ) + _mail(DSN) + b"\r\n--OUTER--\r\n"
    assert _screen(forwarded).kind == "human"


def test_read_receipt() -> None:
    raw = _mail(
        """\
        From: Ann Customer <ann@customer.example>
        To: support@example.com
        Subject: Read: Your ticket
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=disposition-notification; boundary="M"

        --M
        Content-Type: text/plain

        Your message was read.
        --M
        Content-Type: message/disposition-notification

        Final-Recipient: rfc822; ann@customer.example
        Disposition: manual-action/MDN-sent-manually; displayed
        --M--
        """
    )
    verdict = _screen(raw)
    assert (verdict.kind, verdict.rule, verdict.failed_recipients) == (
        "auto_reply", "read-receipt", ()
    )


def test_null_envelope_sender() -> None:
    raw = _mail(HUMAN)
    assert _screen(raw, "smtp", "<>").rule == "null-sender"
    assert _screen(raw, "pipe", "<>").rule == "null-sender"
    # Postfix pipe(8) writes MAILER-DAEMON for the null sender by default.
    assert _screen(raw, "pipe", "MAILER-DAEMON").rule == "null-sender"
    # An empty string means the edge did not know the sender.
    assert _screen(raw, "pipe", "").kind == "human"
    assert _screen(raw, "smtp", "ann@customer.example").kind == "human"
    # IMAP has no envelope: the delivering server's Return-Path stands for it.
    assert _screen(b"Return-Path: <>\r\n" + raw, "imap:INBOX").rule == "null-sender"


def test_an_auto_reply_with_the_null_sender_marks_nobody_bouncing() -> None:
    verdict = _screen(_with("Auto-Submitted: auto-replied"), "smtp", "<>")
    assert (verdict.kind, verdict.failed_recipients) == ("auto_reply", ())


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        (("List-Id: Customers <customers.lists.customer.example>",), "list-headers"),
        (("List-Post: <mailto:customers@lists.customer.example>",), "list-headers"),
        (("X-BeenThere: customers@lists.customer.example",), "list-headers"),
        (("List-Unsubscribe: <https://news.customer.example/u/1>",), "list-unsubscribe"),
        (
            ("List-Unsubscribe: <mailto:u@customer.example>", "Precedence: bulk"),
            "list-unsubscribe",
        ),
        (("Precedence: list",), "list-precedence"),
        (("Precedence: bulk",), "list-precedence"),
        (("Sender: owner-customers@customer.example", "Precedence: bulk"), "list-sender"),
    ],
)
def test_list_mail(headers: tuple[str, ...], rule: str) -> None:
    verdict = _screen(_with(*headers))
    assert (verdict.kind, verdict.rule) == ("list", rule)


def test_rules_are_decided_in_order() -> None:
    # Our own mail wins over everything; a vacation reply on a list is an auto-reply.
    both = _with(f"{LOOP_HEADER}: support@example.com", "Auto-Submitted: auto-replied")
    assert _screen(both).kind == "own"
    assert _screen(_with("Auto-Submitted: auto-replied", "List-Id: <l.example>")).kind == (
        "auto_reply"
    )


# --- agent authentication -----------------------------------------------------

BORDER = "192.0.2.10"  # our border host, which writes Authentication-Results
TRUSTING = settings_from_mapping(
    {
        "support": {"address": "support@example.com"},
        "smtp": {"trusted_relays": ["192.0.2.0/28"]},
        "agents": {
            "addresses": ["dana@example.com"],
            "trust": "authentication-results",
            "trusted_authserv_id": "mx.example.com",
        },
    }
)


def _agent_mail(top: str = "", forged: str = "") -> bytes:
    """An agent's reply; `top` above our host's Received line, `forged` below it."""
    lines = [
        *([top] if top else []),
        "Received: from mail.example.com (mail.example.com [192.0.2.10])",
        "\tby mx.example.com with ESMTPS; Tue, 3 Mar 2026 10:00:00 -0800",
        *([forged] if forged else []),
        "From: Dana Agent <dana@example.com>",
        "To: support+t1@example.com",
        "Subject: Re: [#1] The export button",
        "Message-ID: <2@example.com>",
        "",
        "#status solved",
        "Fixed in the release this morning.",
        "",
    ]
    return "\n".join(lines).replace("\n", "\r\n").encode()


def _trusted(raw: bytes, settings: Settings = TRUSTING, authenticated: bool = False,
             route: str = "smtp", peer: str = BORDER) -> bool:
    inbound = Inbound(raw, route, "dana@example.com", authenticated=authenticated, peer=peer)
    return sender_authenticated(parse_mail(raw), inbound, settings)


def test_dkim_or_spf_pass_from_the_trusted_host_grants_agent_powers() -> None:
    dkim = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com header.s=s1"
    assert _trusted(_agent_mail(dkim))
    dkim_i = "Authentication-Results: MX.Example.COM 1; dkim=pass (good) header.i=@example.com"
    assert _trusted(_agent_mail(dkim_i))
    spf = (
        "Authentication-Results: mx.example.com;\n"
        "\tspf=pass (sender SPF authorized) smtp.mailfrom=dana@example.com;\n"
        "\tdkim=none"
    )
    assert _trusted(_agent_mail(spf))


def test_forged_agent_mail_gets_no_agent_powers() -> None:
    # Nothing at all.
    assert not _trusted(_agent_mail())
    # A pass from a host we do not trust.
    assert not _trusted(
        _agent_mail("Authentication-Results: mx.elsewhere.example; dkim=pass header.d=example.com")
    )
    # Our host says it failed.
    assert not _trusted(
        _agent_mail("Authentication-Results: mx.example.com; dkim=fail header.d=example.com")
    )
    # A pass, but for another domain than the From address's.
    assert not _trusted(
        _agent_mail(
            "Authentication-Results: mx.example.com; dkim=pass header.d=attacker.example;"
            " spf=pass smtp.mailfrom=bounce@attacker.example"
        )
    )
    # The forger wrote a passing header with our host's name below the one our
    # host wrote: only the topmost counts.
    assert not _trusted(
        _agent_mail(
            "Authentication-Results: mx.example.com; dkim=none; spf=softfail"
            " smtp.mailfrom=dana@example.com",
            forged="Authentication-Results: mx.example.com; dkim=pass header.d=example.com",
        )
    )
    # A look-alike domain does not pass for ours.
    assert not _trusted(
        _agent_mail("Authentication-Results: mx.example.com; dkim=pass header.d=ample.com")
    )


def test_results_count_only_when_a_trusted_border_host_handed_the_mail_over() -> None:
    passed = _agent_mail(
        "Authentication-Results: mx.example.com; dkim=pass header.d=example.com")
    assert _trusted(passed, peer="::ffff:192.0.2.10")
    # Anyone else may write our host's name: straight to us, the header counts for nothing.
    assert not _trusted(passed, peer="198.51.100.7")
    assert not _trusted(passed, peer="192.0.2.99")
    assert not _trusted(passed, peer="")
    # The MTA behind the pipe, and the mailbox IMAP reads, are the operator's own border.
    assert _trusted(passed, route="pipe", peer="")
    assert _trusted(passed, route="imap:support@imap.example.com:993/INBOX", peer="")


def test_trusted_relays_are_addresses_or_networks() -> None:
    for value in (["10.0.0.1", "2001:db8::/32", "192.0.2.0/24"], []):
        settings_from_mapping({"smtp": {"trusted_relays": value}})
    with pytest.raises(ConfigError, match=r"smtp.trusted_relays\[1\]"):
        settings_from_mapping({"smtp": {"trusted_relays": ["10.0.0.1", "mx.example.com"]}})


def test_a_subdomain_signature_and_the_route_itself() -> None:
    sub = settings_from_mapping(
        {
            "support": {"address": "support@example.com"},
            "smtp": {"trusted_relays": [BORDER]},
            "agents": {"trust": "authentication-results", "trusted_authserv_id": "mx.example.com"},
        }
    )
    raw = _agent_mail("Authentication-Results: mx.example.com; dkim=pass header.d=example.com")
    raw = raw.replace(b"dana@example.com>", b"dana@eu.example.com>")
    assert _trusted(raw, sub)  # relaxed alignment: the signer holds the parent domain
    # SMTP AUTH or a trusted IMAP box vouches on its own.
    assert _trusted(_agent_mail(), authenticated=True)


def test_trust_none_believes_the_from_address() -> None:
    settings = settings_from_mapping({"support": {"address": "support@example.com"}})
    assert settings.agents.trust == "none"
    assert _trusted(_agent_mail(), settings)


def test_a_missing_or_empty_from_is_no_bounce_sign() -> None:
    no_from = _mail(HUMAN).replace(b"From: Ann Customer <ann@customer.example>\r\n", b"")
    assert _screen(no_from).kind == "human"
    empty_from = _mail(HUMAN).replace(b"Ann Customer <ann@customer.example>", b"")
    assert _screen(empty_from).kind == "human"
