"""Is a host name loopback? The one rule behind "plain ws:// and http:// only to loopback".

Kept in its own tiny module (ipaddress only) so the configuration, which must import quickly for
``agent --help``, and the network code share exactly the same rule.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` names and loopback IP literals (``127.0.0.0/8``, ``[::1]``)."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
