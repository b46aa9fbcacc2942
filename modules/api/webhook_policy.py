"""Where a job's webhook may point, and calling it there and nowhere else (a guard against SSRF).

A client with the password must not use webhooks to reach what only the server can reach: cloud metadata,
the local network, services on loopback. The rule, per resolved address:

- a host or address named by --webhook-allow is called;
- link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata services never are;
- with --listen, loopback, private, reserved, multicast and unspecified addresses are refused too; without it
  (only this machine can submit jobs) they are allowed, since local bots are the main use.

The check runs when the job is submitted (a 422 naming the field) and again just before the call, on a fresh
resolution, whose checked address is the one connected to (the Host header and TLS name stay the URL's), so a
name that changes its answer in between (DNS rebinding) cannot slip through. Redirects are never followed.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlparse

from modules.errors import ValidationError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Cloud metadata services outside 169.254.0.0/16: AWS over IPv6, Alibaba Cloud.
METADATA = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})


class WebhookRefused(ValueError):
    """The URL may not be called; the message says why and what would allow it."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the name resolves to, in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_allow_list(value: Optional[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    """`localhost,10.0.0.0/8,bot.example.com` -> (host names, networks); an IP is a one-address network."""
    hosts, networks = set(), []
    for item in (value or "").split(","):
        item = item.strip().lower().rstrip(".")
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(item)
    return frozenset(hosts), tuple(networks)


@dataclass(frozen=True)
class Target:
    """A checked webhook: the URL's parts and the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True)
class WebhookPolicy:
    listening: bool = False
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    resolver: Callable[[str, int], list[str]] = field(default=resolve_host, compare=False)

    @classmethod
    def from_args(cls, args) -> "WebhookPolicy":
        hosts, networks = parse_allow_list(getattr(args, "webhook_allow", None))
        return cls(bool(getattr(args, "listen", False)), hosts, networks)

    def check(self, url: Optional[str], field_name: str = "webhook") -> Optional[str]:
        """At submit time: the URL, or ValidationError(field_name) saying why it may not be called."""
        if url is None or url == "":
            return None
        try:
            self.target(url)
        except WebhookRefused as e:
            raise ValidationError(field_name, str(e)) from None
        return url

    def target(self, url: str) -> Target:
        """Resolve the URL's host now and pick the first address the policy allows. Raises WebhookRefused."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise WebhookRefused(f"must be an http(s) URL, got {url!r}")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise WebhookRefused(f"bad port in {url!r}") from None
        host = parsed.hostname.lower().rstrip(".")
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as e:
            raise WebhookRefused(f"host {host!r} does not resolve ({e})") from None
        reasons = []
        for address in addresses:
            reason = self.refusal(host, address)
            if reason is None:
                path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
                return Target(parsed.scheme, host, port, path, address)
            reasons.append(reason)
        raise WebhookRefused(reasons[0] if reasons else f"host {host!r} resolves to no address")

    def refusal(self, host: str, address: str) -> Optional[str]:
        """Why this address of `host` may not be called, or None when it may."""
        ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if host in self.allow_hosts or any(ip in network for network in self.allow_networks):
            return None
        hint = "add it to --webhook-allow to call it anyway"
        if ip.is_link_local or ip in METADATA:
            return f"{host} resolves to {ip}, a link-local or cloud metadata address; {hint}"
        if not self.listening:
            return None  # only this machine can submit jobs: local bots are the main use
        kind = _kind(ip)
        if kind:
            return f"{host} resolves to {ip}, a {kind} address, refused while listening on the network; {hint}"
        return None


def _kind(ip: Address) -> Optional[str]:
    for kind in ("loopback", "private", "reserved", "multicast", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind
    return None if ip.is_global else "non-public"


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a checked address; the Host header stays the URL's host."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified against the URL's host name."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post_json(policy: WebhookPolicy, url: str, payload: bytes, timeout: float) -> str:
    """POST the payload to the URL, checked again now; a status line for the job ("sent 204"). Raises
    WebhookRefused (the policy, or a redirect, which is never followed) or OSError."""
    target = policy.target(url)
    connection = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout)
    try:
        connection.request("POST", target.path, body=payload,
                           headers={"Content-Type": "application/json", "User-Agent": "atelier-webhook"})
        response = connection.getresponse()
        response.read(65536)
        if 300 <= response.status < 400:
            raise WebhookRefused(f"answered {response.status} (redirect to {response.getheader('Location')!r}), "
                                 "not followed")
        if response.status >= 400:
            raise OSError(f"HTTP Error {response.status}: {response.reason}")
        return f"sent {response.status}"
    finally:
        connection.close()
