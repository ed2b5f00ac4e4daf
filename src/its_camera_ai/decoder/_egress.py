"""Egress policy: the destinations a camera source may make the decoder connect to.

Whoever may create a camera names a URI that the decoder then opens, from inside the
deployment's network. Unchecked, that is server-side request forgery: a camera at
``http://169.254.169.254/latest/meta-data/`` reads cloud credentials, one at
``rtsp://127.0.0.1:6379`` talks to a local service. The rules, in order:

1. The scheme must be in ``decoder.egress.allowed_schemes`` (INVALID_ARGUMENT,
   UNSUPPORTED_SOURCE); ``sim://`` must name a simulator scene (``_sources.SIM_SCENES``)
   and ``file://`` keeps its roots (``_uri.py``).
2. The host must be the one FFmpeg will connect to: a URI whose authority FFmpeg's URL
   parser splits differently from Python's (``rtsp://good#@127.0.0.1/``) is refused.
3. Cloud metadata host names (``METADATA_HOSTS``) are refused before any resolution.
4. ``allowed_hosts``, when set, must match the name (exact, or ``*.suffix``); an address
   literal also passes when it lies in ``allowed_networks``.
5. The host is resolved (``getaddrinfo``) and every address must pass; one refused address
   refuses the source. Address literals in the spellings resolvers accept (``2130706433``,
   ``0x7f.1``, ``127.1``) are read as the resolver reads them, and an IPv6 address that
   embeds an IPv4 one (mapped ``::ffff:127.0.0.1``, compatible, NAT64, 6to4, Teredo) is
   judged as both. Per address: ``denied_networks`` refuses; else ``allowed_networks``
   allows; else cloud metadata addresses, link-local, unspecified (0.0.0.0/8, ::) and
   reserved (240.0.0.0/4, with broadcast) are refused in every environment; multicast is
   refused except for udp and rtp sources; and unless private addresses are allowed
   (``allow_private``; None = in dev only), loopback, private (RFC 1918, fc00::/7), CGNAT
   (100.64.0.0/10) and the other special-purpose ranges are refused.

Multicast: UDP cameras are received by joining a group (224.0.0.0/4, ff00::/8): the
decoder sends a membership report and listens, and an rtp source's receiver reports go
only to the group's members, so no service is asked anything. Nothing connects to a
multicast address over TCP, so an rtsp or http source naming one is a mistake or a probe.

When: on CreateCamera and UpdateCamera (a refusal is PERMISSION_DENIED naming the field
and the rule), and in the worker before every connect and reconnect, because a name's
answers change: there a refusal is the camera's error and, like an unreachable camera, is
retried with backoff. A name that cannot be resolved when the camera is written (DNS down,
or slower than ``resolve_timeout_seconds``) is accepted: refusing to configure a camera
because DNS hiccuped is unfriendly, and nothing is connected to until a check before the
connect has resolved it and passed every address; a name that does not resolve then is a
transient connection failure.

Limits: FFmpeg resolves the name again when it connects, so answers that change within
that moment (DNS rebinding with a zero TTL) are not caught here. HTTP redirects are not
followed (``_sources._options``), so a public server cannot bounce the decoder elsewhere,
and network sources may only use their own protocols; RTSP redirects and the segment URLs
of an HLS playlist are not checked. Run the decoder behind a network policy as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from its_camera_ai.common import EgressSettings, PermissionDeniedError
from its_camera_ai.decoder._sources import SourceError
from its_camera_ai.decoder._uri import SourceKind, SourceUri, UriError
from its_camera_ai.decoder._validation import invalid_source

__all__ = [
    "METADATA_HOSTS",
    "EgressPolicy",
    "EgressRefused",
    "EgressUnresolved",
    "Resolver",
    "resolve_host",
]

_log = logging.getLogger(__name__)

# The addresses a host name stands for ("localhost" -> ["127.0.0.1", "::1"]); raises
# OSError when it cannot tell. Called off the event loop.
Resolver = Callable[[str], Sequence[str]]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names of cloud instance metadata services (GCP, Azure, AWS, generic "metadata"): refused
# by name, as they may resolve only inside the instance.
METADATA_HOSTS = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
)
_NETWORK_KINDS = frozenset({SourceKind.RTSP, SourceKind.HTTP, SourceKind.UDP})
_PRIVATE_HINT = " (list its network in decoder.egress.allowed_networks to allow it)"


def _nets(*cidrs: str) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


@dataclass(frozen=True, slots=True)
class _Range:
    rule: str  # in the error's metadata, for machines
    label: str  # "<address> is <label>", for people
    networks: tuple[_Network, ...]

    def __contains__(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)


# Refused in every environment unless in allowed_networks. Metadata first: its addresses
# also lie in link-local, private and CGNAT ranges, and the label should say which.
_ALWAYS = (
    _Range(
        "metadata",
        "link-local/metadata",
        _nets("169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32"),
    ),
    _Range("link_local", "link-local", _nets("169.254.0.0/16", "fe80::/10")),
    _Range("unspecified", "unspecified (it means this host)", _nets("0.0.0.0/8", "::/128")),
    _Range("reserved", "reserved (or broadcast)", _nets("240.0.0.0/4")),
)
_MULTICAST = _Range(
    "multicast",
    "multicast (only udp and rtp sources receive multicast)",
    _nets("224.0.0.0/4", "ff00::/8"),
)
# Refused unless private addresses are allowed (dev) or the network is in allowed_networks.
_PRIVATE = (
    _Range("loopback", "loopback", _nets("127.0.0.0/8", "::1/128")),
    _Range(
        "private", "private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    ),
    _Range("shared", "carrier-grade NAT (shared address space)", _nets("100.64.0.0/10")),
    _Range(
        "special",
        "special-purpose (not a public address)",
        _nets(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "64:ff9b:1::/48",
            "100::/64",
            "2001:db8::/32",
            "fec0::/10",
        ),
    ),
)
# IPv6 prefixes whose last 32 bits are an IPv4 address the packets end up at: compatible,
# mapped (ipaddress knows it), translated (SIIT) and NAT64.
_EMBEDS_IPV4 = _nets("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")


class EgressRefused(Exception):
    """The policy refuses a destination; ``description`` is safe to show (no
    credentials), ``rule`` names the rule for machines."""

    def __init__(self, description: str, rule: str) -> None:
        super().__init__(description)
        self.description = description
        self.rule = rule


class EgressUnresolved(Exception):
    """The host could not be resolved, so its addresses could not be judged."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def resolve_host(host: str) -> list[str]:
    """The system resolver's addresses for ``host`` (what FFmpeg will connect to)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _literal(host: str) -> _Address | None:
    """``host`` as an address, read as the system resolver would read it, or None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host):
        try:
            # inet_aton is how getaddrinfo reads 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _forms(address: _Address) -> tuple[_Address, ...]:
    """The address and, for an IPv6 one that carries an IPv4 destination, that too."""
    if isinstance(address, ipaddress.IPv4Address):
        return (address,)
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and address.teredo is not None:
        embedded = address.teredo[1]
    if embedded is None and int(address) > 1 and any(address in n for n in _EMBEDS_IPV4):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return (address,) if embedded is None else (address, embedded)


def _ffmpeg_host(uri: str, stops: str) -> str:
    """The host FFmpeg's ``av_url_split`` reads from ``uri`` (``stops`` end the authority:
    "/?#" in FFmpeg 5 and later, "/?" before)."""
    rest = uri.partition(":")[2]
    for _ in range(2):
        rest = rest.removeprefix("/")
    end = min((i for i in (rest.find(c) for c in stops) if i != -1), default=len(rest))
    host = rest[:end].rpartition("@")[2]
    if host.startswith("[") and "]" in host:
        return host[1 : host.index("]")]
    return host.partition(":")[0]


class EgressPolicy:
    """The decoder's egress rules (module docstring) over ``settings``; ``environment`` is
    ``Settings.environment``, ``resolver`` what names are resolved with (tests script it)."""

    def __init__(
        self,
        settings: EgressSettings,
        *,
        environment: str,
        resolver: Resolver = resolve_host,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self.allow_private = (
            settings.allow_private if settings.allow_private is not None else environment == "dev"
        )
        self._hosts = tuple(h for h in settings.allowed_hosts if _literal(h) is None)
        self._host_addresses = frozenset(
            address for h in settings.allowed_hosts if (address := _literal(h)) is not None
        )

    # --- checks -----------------------------------------------------------------------

    def check_uri(self, source: SourceUri) -> None:
        """What needs no network: the scheme is allowed, the host is unambiguous. Raises
        ``UriError`` (unsupported for a scheme this decoder does not allow)."""
        if source.scheme not in self._settings.allowed_schemes:
            allowed = ", ".join(sorted(self._settings.allowed_schemes))
            raise UriError(
                f"scheme {source.scheme}: is not allowed on this decoder (use {allowed})",
                unsupported=True,
            )
        if source.kind in _NETWORK_KINDS and any(
            _ffmpeg_host(source.uri, stops).lower() != source.host for stops in ("/?#", "/?")
        ):
            raise UriError(
                "has an ambiguous host: percent-encode '@', '#', '/' and '?' in the user"
                " name and password"
            )

    def check_destination(self, source: SourceUri) -> None:
        """Judge the host of a network source and every address it resolves to (blocking:
        call it off the event loop). Raises ``EgressRefused`` or ``EgressUnresolved``."""
        if source.kind not in _NETWORK_KINDS:
            return
        host = source.host
        name = host.rstrip(".")
        if name in METADATA_HOSTS:
            raise EgressRefused(
                f"{host} is a cloud metadata host; refused by the egress policy", "metadata"
            )
        literal = _literal(host)
        if not self._host_allowed(name, literal):
            raise EgressRefused(
                f"{host} is not in decoder.egress.allowed_hosts; refused by the egress policy",
                "host_not_allowed",
            )
        addresses = [literal] if literal is not None else self._resolve(host)
        for address in addresses:
            self._judge(host, address, source.kind)

    async def check_source(self, source: SourceUri, *, field: str) -> None:
        """The checks of a camera being written: ``check_uri`` (INVALID_ARGUMENT), then the
        destination (PERMISSION_DENIED). An unresolvable host is accepted (see above)."""
        try:
            self.check_uri(source)
        except UriError as exc:
            raise invalid_source(field, exc) from None
        if source.kind not in _NETWORK_KINDS:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, self.check_destination, source),
                self._settings.resolve_timeout_seconds,
            )
        except EgressRefused as exc:
            _log.warning(
                "camera source refused by the egress policy",
                extra={"source": source.masked, "rule": exc.rule},
            )
            raise PermissionDeniedError(
                f"{field}: {exc.description}", metadata={"field": field, "rule": exc.rule}
            ) from None
        except (EgressUnresolved, TimeoutError):
            _log.info("camera source host not resolved yet", extra={"source": source.masked})

    def check_connect(self, source: SourceUri) -> None:
        """The checks before a worker (re)connects, as a ``SourceError``: permanent for the
        URI (only a change of the camera fixes it), transient for the destination."""
        try:
            self.check_uri(source)
        except UriError as exc:
            raise SourceError(f"{source.masked}: {exc.description}", permanent=True) from None
        try:
            self.check_destination(source)
        except (EgressRefused, EgressUnresolved) as exc:
            raise SourceError(f"{source.masked}: {exc.description}", permanent=False) from None

    # --- rules ------------------------------------------------------------------------

    def _host_allowed(self, name: str, literal: _Address | None) -> bool:
        if not self._settings.allowed_hosts:
            return True
        if literal is not None:
            return literal in self._host_addresses or self._in(
                self._settings.allowed_networks, _forms(literal)
            )
        return any(
            name.endswith(pattern[1:]) if pattern.startswith("*.") else name == pattern
            for pattern in self._hosts
        )

    def _resolve(self, host: str) -> list[_Address]:
        try:
            answers = self._resolver(host)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answers]
        except (OSError, UnicodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
            raise EgressUnresolved(f"cannot resolve {host} ({reason})") from None
        if not addresses:
            raise EgressUnresolved(f"cannot resolve {host} (no addresses)")
        return addresses

    @staticmethod
    def _in(networks: Sequence[_Network], forms: Sequence[_Address]) -> bool:
        return any(form in network for form in forms for network in networks)

    def _judge(self, host: str, address: _Address, kind: SourceKind) -> None:
        forms = _forms(address)
        if self._in(self._settings.denied_networks, forms):
            raise EgressRefused(
                f"{_target(host, address)} is in decoder.egress.denied_networks;"
                " refused by the egress policy",
                "denied_network",
            )
        if self._in(self._settings.allowed_networks, forms):
            return
        for form in forms:
            ranges = list(_ALWAYS)
            if kind is not SourceKind.UDP:
                ranges.append(_MULTICAST)
            if not self.allow_private:
                ranges.extend(_PRIVATE)
            for refused in ranges:
                if form in refused:
                    hint = _PRIVATE_HINT if refused in _PRIVATE else ""
                    raise EgressRefused(
                        f"{_target(host, form)} is {refused.label}; refused by the egress"
                        f" policy{hint}",
                        refused.rule,
                    )


def _target(host: str, address: _Address) -> str:
    """How a refused destination is named: the host as written, and the address it
    stands for when that differs ("localhost (127.0.0.1)", "::ffff:7f00:1 (127.0.0.1)")."""
    return host if str(address) == host else f"{host} ({address})"
