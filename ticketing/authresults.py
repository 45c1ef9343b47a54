"""Whether a mail is from its From address (an agent, a feedback loop): RFC 8601 results."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ticketing.inbound import Inbound
from ticketing.parse import ParsedMail
from ticketing.settings import Settings

log = logging.getLogger(__name__)

_COMMENT = re.compile(r"\([^()]*\)")
_TOKEN = re.compile(r';|([A-Za-z][\w.-]*(?:/\d+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]*)')


@dataclass(frozen=True)
class AuthResult:
    method: str  # dkim | spf | dmarc | ...
    result: str  # pass | fail | none | ...
    properties: tuple[tuple[str, str], ...]  # ("header.d", "example.com"), ...

    def prop(self, name: str) -> str:
        return next((v for k, v in self.properties if k == name), "")


def _strip_comments(value: str) -> str:
    while True:
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            return value
        value = stripped


def parse_authentication_results(value: str) -> tuple[str, tuple[AuthResult, ...]]:
    """(authserv-id, results) from one Authentication-Results value (RFC 8601 2.2)."""
    value = _strip_comments(value)
    head, _, rest = value.partition(";")
    authserv_id = (head.split() or [""])[0].lower()
    results: list[AuthResult] = []
    method = result = ""
    props: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(rest):
        key, val = match.group(1), (match.group(2) or "").strip('"')
        if key is None:
            continue
        key = key.lower()
        if "." in key:
            if method:
                props.append((key, val.lower()))
        elif key != "reason":
            if method:
                results.append(AuthResult(method, result, tuple(props)))
            method, result, props = key.split("/")[0], val.lower(), []
    if method:
        results.append(AuthResult(method, result, tuple(props)))
    return authserv_id, tuple(results)


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip("<>").lower()


def aligned(domain: str, from_domain: str) -> bool:
    # Relaxed alignment (as DMARC has it): the From domain is the signing or
    # envelope domain, or below it. A signer can only sign for a domain it holds.
    return bool(domain) and (from_domain == domain or from_domain.endswith("." + domain))


def from_trusted_border(inbound: Inbound, settings: Settings) -> bool:
    """Whether the host that handed us the mail is a border host of ours, whose
    Authentication-Results are worth believing: the MTA behind the pipe or the IMAP
    mailbox, or an SMTP client listed in smtp.trusted_relays."""
    if inbound.route == "pipe" or inbound.route.startswith("imap"):
        return True
    try:
        peer = ipaddress.ip_address(inbound.peer.partition("%")[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in ipaddress.ip_network(network, strict=False)
               for network in settings.smtp.trusted_relays)


def sender_authenticated(
    mail: ParsedMail, inbound: Inbound, settings: Settings, dkim_signers: Iterable[str] = ()
) -> bool:
    """Whether the From address can be believed: enough to grant agent powers, or to
    let an abuse report stop mail (agents.trust says how it is checked). With "dkim",
    `dkim_signers` are the domains whose signature on the mail verified here."""
    if inbound.authenticated or settings.agents.trust == "none":
        return True
    if mail.sender is None:
        return False
    from_domain = _domain_of(mail.sender.address)
    if settings.agents.trust == "dkim":
        return any(aligned(domain, from_domain) for domain in dkim_signers)
    if settings.agents.trust != "authentication-results":
        return False
    trusted = settings.agents.trusted_authserv_id.lower()
    if not from_trusted_border(inbound, settings):
        # Anyone can write a header naming our border host: only a host we trust
        # handing the mail over makes it our border host's (RFC 8601 section 5).
        if any(parse_authentication_results(value)[0] == trusted
               for value in mail.header_all("authentication-results")):
            log.warning("<%s> Authentication-Results naming %s, handed over by %s (not in "
                        "smtp.trusted_relays): ignored", mail.message_id, trusted,
                        inbound.peer or inbound.route)
        return False
    # Only the topmost Authentication-Results header from the trusted host counts.
    # Each hop prepends its header fields, so the one our border host wrote sits
    # above everything the sender sent; a forger can write a header with our
    # authserv-id too, but only below ours (RFC 8601 section 5 asks the border
    # host to delete such copies; not all do). A host that writes its results in
    # several headers must be configured to put the dkim or spf result in the top one.
    for value in mail.header_all("authentication-results"):
        authserv_id, results = parse_authentication_results(value)
        if authserv_id != trusted:
            continue
        for found in results:
            if found.result != "pass":
                continue
            if found.method == "dkim" and (
                aligned(found.prop("header.d"), from_domain)
                or aligned(_domain_of(found.prop("header.i")), from_domain)
            ):
                return True
            if found.method == "spf" and aligned(
                _domain_of(found.prop("smtp.mailfrom")), from_domain
            ):
                return True
        return False
    return False
