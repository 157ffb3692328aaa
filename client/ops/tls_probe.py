"""Why a site cannot reach its coordinator, asked of the connection itself: one TCP connection and
TLS handshake to the SuperLink, verified against the site's own ``root_certificates``.

Flower's SuperNode prints the handshake's failure (an ``[SSL]`` line) only on some of its tries,
and a give-up could stop it before it had: the site's message then said only "network or TLS
certificate" (operator finding M4). The supervisor asks this probe when the SuperNode gives up, so
what it says does not depend on which of Flower's lines came first. The probe sends nothing but
the handshake, over the address and certificates the SuperNode itself uses.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

# Each of the connection and the handshake may take this long (each resolved address its own
# connection): a give-up's message may come some 20 s after the SuperNode ended.
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Probe:
    """What one handshake found: ``refused`` holds the TLS library's words when it refused the
    coordinator's certificate; ``unreachable`` the operating system's when no connection was made;
    ``unusable`` what is wrong with the site's own ``root_certificates`` file or ``superlink``
    address, so that no handshake was tried; none, when the handshake succeeded."""

    refused: str | None = None
    unreachable: str | None = None
    unusable: str | None = None


def split_address(superlink: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as the host and port; ValueError if it is not one."""
    host, _, port = superlink.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{superlink!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def probe(superlink: str, root_certificates: Path, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Connect to ``superlink`` and shake hands as the SuperNode does (its CA file, the dialled
    name checked against the certificate, HTTP/2 offered)."""
    try:
        host, port = split_address(superlink)
    except ValueError as exc:
        return Probe(unusable=f"`superlink` in the site policy: {exc}")
    try:  # a CA file replaced or rotated while the site runs: the start's check saw the old one
        context = ssl.create_default_context(cafile=str(root_certificates))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        return Probe(unusable=f"root_certificates {root_certificates} cannot be read as a CA certificate ({reason}): "
                              "ask the coordinator for its current ca.crt")
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection, \
                context.wrap_socket(connection, server_hostname=host):
            return Probe()
    except ssl.SSLCertVerificationError as exc:
        return Probe(refused=str(exc))
    except ssl.SSLError as exc:  # the handshake failed otherwise (not TLS there, a protocol mismatch)
        return Probe(refused=exc.reason or str(exc))
    except OSError as exc:
        return Probe(unreachable=exc.strerror or type(exc).__name__)
