"""Mail addresses as we compare them: case-insensitive, display names aside."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A local part is plain, or quoted ("#FAX#*49000783135#"@otobo.fax, RFC 5322 3.4.1).
# No control characters anywhere: no mail system takes them, and no database text a NUL.
_ADDRESS = re.compile(
    r"^(?:[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+|\"[^\"\\\s\x00-\x1f\x7f]+\")"
    r"@[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+$"
)

# A local part that needs no quotes (RFC 5322 dot-atom): "#FAX#1"@d is #FAX#1@d.
_DOT_ATOM = re.compile(r"^[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*$")


@dataclass(frozen=True)
class Address:
    address: str
    name: str = ""

    def __str__(self) -> str:
        return self.address


def normalize(address: str) -> str:
    """Lower-cased bare address, or '' when it is not one we could ever mail."""
    address = address.strip().strip("<>").strip().lower()
    if len(address) > 320 or not _ADDRESS.match(address):
        return ""
    local, _, domain = address.rpartition("@")
    if local.startswith('"') and _DOT_ATOM.match(local[1:-1]):
        return f"{local[1:-1]}@{domain}"
    return address


def base_address(address: str) -> str:
    """The address without its +detail: support+tok@d -> support@d."""
    local, _, domain = address.rpartition("@")
    return f"{local.partition('+')[0]}@{domain}"


# Addresses no person reads: never mail them on the system's own account.
_MACHINE_LOCAL_PARTS = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?"
    r"|bounce[-+].*|.*[-_.]no[-_.]?reply|listserv|majordomo|.*-(request|owner|bounces))$"
)


def is_machine_address(address: str) -> bool:
    local = address.rpartition("@")[0].partition("+")[0]
    return bool(_MACHINE_LOCAL_PARTS.match(local))
