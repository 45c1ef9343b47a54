"""Which domains signed a mail: its DKIM signatures verified here (RFC 6376), with dkimpy."""

from __future__ import annotations

import logging
from collections.abc import Callable

import dkim

from ticketing.db import StorageError

log = logging.getLogger(__name__)

# dkimpy's `dnsfunc`: the TXT record of a name such as b"s1._domainkey.example.com.", or
# None. Tests pass their own; serve uses dkimpy's (dnspython and the system resolver).
TxtLookup = Callable[..., bytes | None]

# A mail carries one or two signatures (the author's domain, a mailing list or an ESP);
# more are not worth a lookup each.
_MOST = 5


class KeyLookupFailed(StorageError):
    """The signer's key could not be fetched (DNS timed out): try the mail again later."""


def verified_signers(raw: bytes, lookup: TxtLookup | None = None) -> tuple[str, ...]:
    """The d= domains whose signature on this mail verifies and covers its From field.

    A signature with a body length limit (l=) is ignored: text added after the signed
    part would pass for the signer's. A key that cannot be fetched for a DNS timeout
    raises KeyLookupFailed (a temporary failure); any other fault fails that signature.
    """
    try:
        count = sum(1 for name, _ in dkim.DKIM(raw).headers if name.lower() == b"dkim-signature")
    except Exception as exc:  # a mail dkimpy cannot read has no signature we can check
        log.info("DKIM: cannot read the mail: %s", exc)
        return ()
    found: list[str] = []
    for index in range(min(count, _MOST)):
        verifier = dkim.DKIM(raw, minkey=1024)
        try:
            passed = verifier.verify(idx=index, dnsfunc=lookup or dkim.get_txt)
        except dkim.DnsTimeoutError as exc:
            raise KeyLookupFailed(f"DKIM key lookup failed: {exc}") from exc
        except Exception as exc:  # a broken signature or key fails that signature alone
            log.info("DKIM signature %d does not verify: %s", index + 1, exc)
            continue
        fields = verifier.signature_fields or {}
        if not passed or b"l" in fields or b"from" not in verifier.include_headers:
            continue
        domain = bytes(verifier.domain or b"").decode("ascii", "replace").lower()
        if domain:
            found.append(domain)
    return tuple(dict.fromkeys(found))

