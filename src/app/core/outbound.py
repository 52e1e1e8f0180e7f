"""Checks on outbound destinations that tenants configure (SFTP hosts, BigQuery endpoints).

A tenant admin chooses where Pulse connects. Without a check that is server-side
request forgery: a source pointed at ``127.0.0.1:5432``, a private address or the
cloud metadata service at ``169.254.169.254`` makes Pulse talk to its own network
on the tenant's behalf. So every such connection first resolves the name and
refuses any address that is not globally routable (loopback, RFC 1918 and ULA
private, link-local, CGNAT, multicast, unspecified, reserved, documentation ranges,
and those addresses embedded in IPv6 forms), and the well-known metadata host names,
unless the operator allows them with ``PULSE_OUTBOUND_ALLOW`` (CIDRs and host names).
Development and test allow loopback by default so the demo's and the tests' local
servers work.

The check runs at connect time, on the address the connection is then made to:
:meth:`OutboundPolicy.resolve` returns the checked address and the caller connects
to that address, not to the name, so a DNS answer that changes between the check
and the connection (rebinding) cannot get around it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from app.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata services by name; their addresses are link-local anyway.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "100-100-100-200.metadata",
    }
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOOPBACK_ALLOW = "127.0.0.0/8,::1/128,localhost"
NONE = "none"


class OutboundRefused(Exception):
    """A tenant-configured destination is not allowed; the message says what and why."""

    def __init__(self, host: str, address: str | None, rule: str) -> None:
        self.host, self.address, self.rule = host, address, rule
        where = host if address is None or address == host else f"{host} ({address})"
        super().__init__(
            f"refused to connect to {where}: {rule}; an operator can allow it with"
            " PULSE_OUTBOUND_ALLOW"
        )


def parse_allow_list(value: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """``PULSE_OUTBOUND_ALLOW``: comma-separated CIDRs (or single addresses) and host
    names; ``none`` alone allows nothing. Raises ValueError naming a bad entry."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or entry.lower() == NONE:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = _normalise_host(entry)
        if not name or "/" in name or any(c.isspace() for c in name) or ":" in name:
            raise ValueError(f"{entry!r} is neither a CIDR nor a host name")
        hosts.add(name)
    return tuple(networks), frozenset(hosts)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_rule(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a destination a tenant may choose, or None when it is public."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        rule = refusal_rule(inner)
        return f"{rule} (embedded in an IPv6 address)" if rule else None
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _CGNAT:
        return "a shared (CGNAT) address"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return "a private address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a reserved, not globally routable address"
    return None


@dataclass(frozen=True)
class CheckedAddress:
    """Where to connect: ``address`` passed the check for ``host``."""

    host: str
    address: str
    port: int


@dataclass(frozen=True)
class OutboundPolicy:
    """What tenant-configured destinations may resolve to, beyond public addresses."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_allow_list(cls, value: str) -> OutboundPolicy:
        networks, hosts = parse_allow_list(value)
        return cls(networks, hosts)

    def _host_listed(self, host: str) -> bool:
        return _normalise_host(host) in self.hosts

    def _address_listed(self, ip: IPAddress) -> bool:
        candidates = [ip]
        inner = _embedded_ipv4(ip)
        if inner is not None:
            candidates.append(inner)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )

    def check_address(self, host: str, ip: IPAddress) -> None:
        """Raise OutboundRefused unless ``ip`` (what ``host`` resolved to) may be used."""
        if self._host_listed(host) or self._address_listed(ip):
            return
        rule = refusal_rule(ip)
        if rule is not None:
            shown = host if _literal(_normalise_host(host)) == ip else str(ip)
            raise OutboundRefused(host, shown, f"{rule} is not allowed")

    async def resolve(self, host: str, port: int, *, timeout_s: float) -> CheckedAddress:
        """Resolve ``host`` and check every address it resolves to; return the one to
        connect to. Raises OutboundRefused, or OSError/TimeoutError when the name does
        not resolve."""
        name = _normalise_host(host)
        if name in METADATA_HOSTS and not self._host_listed(name):
            raise OutboundRefused(host, None, "a cloud metadata host name is not allowed")
        literal = _literal(name)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
            if not addresses:
                raise OSError(f"{host} did not resolve to any address")
        # Every answer must pass: a name that resolves to a public and a private address
        # could otherwise be steered to the private one.
        for ip in addresses:
            self.check_address(host, ip)
        return CheckedAddress(host=host, address=str(addresses[0]), port=port)

    def check_endpoint(self, url: str) -> None:
        """An endpoint override (a URL) is honoured only when its host is explicitly
        allowed: listed by name, or a literal address in a listed network."""
        host = _normalise_host(urlsplit(url).hostname or "")
        if not host:
            raise OutboundRefused(url, None, "the URL has no host")
        if self._host_listed(host):
            return
        literal = _literal(host)
        if literal is not None and self._address_listed(literal):
            return
        raise OutboundRefused(
            host,
            None,
            "an endpoint override is honoured only for a host PULSE_OUTBOUND_ALLOW lists",
        )


STRICT = OutboundPolicy()


@lru_cache(maxsize=16)
def policy_for(settings: Settings) -> OutboundPolicy:
    """The process's policy: ``PULSE_OUTBOUND_ALLOW`` when set, else loopback only in
    development and test, nothing in production."""
    value = settings.outbound_allow
    if value is None:
        value = NONE if settings.is_production else LOOPBACK_ALLOW
    return OutboundPolicy.from_allow_list(value)
