"""The decoder's egress policy settings (``ITS_DECODER__EGRESS__*``): where camera sources
may make the decoder connect to.

A caller who can create a camera names a URI the decoder then opens, so without limits
any caller could make the decoder fetch cloud metadata or talk to services on its own
network (server-side request forgery). The rules themselves are in
``its_camera_ai.decoder`` (``EgressPolicy``); this is what an operator can tune.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator

__all__ = ["EgressSettings", "SourceScheme"]

SourceScheme = Literal["file", "http", "https", "rtp", "rtsp", "rtsps", "sim", "udp"]
_ALL_SCHEMES: tuple[SourceScheme, ...] = (
    "file",
    "http",
    "https",
    "rtp",
    "rtsp",
    "rtsps",
    "sim",
    "udp",
)
# A DNS name, optionally behind a "*." wildcard (letters, digits, hyphens, dots).
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


class EgressSettings(BaseModel):
    """Destinations camera sources may name. Addresses are judged after DNS resolution,
    when a camera is written and again before every connect (see the decoder's
    ``_egress.py`` for the fixed rules: metadata, link-local, loopback, private...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # URI schemes cameras may use; the default is every scheme the decoder reads.
    allowed_schemes: tuple[SourceScheme, ...] = Field(_ALL_SCHEMES, min_length=1)
    # Host names sources may name: exact ("cam1.example.com") or "*.example.com" (any
    # name below example.com, not example.com itself); an address literal passes when
    # listed or inside allowed_networks. Empty: any host. Listing a name does not make a
    # private address it resolves to acceptable: that is allowed_networks' job.
    allowed_hosts: tuple[str, ...] = ()
    # Networks allowed even though private, loopback or link-local (a camera VLAN such
    # as 10.20.0.0/16). The only way to reach a refused range outside dev.
    allowed_networks: tuple[IPvAnyNetwork, ...] = ()
    # Networks always refused, whatever else allows them.
    denied_networks: tuple[IPvAnyNetwork, ...] = ()
    # Loopback, private (RFC 1918, fc00::/7), CGNAT and reserved addresses. None: allowed
    # in the dev environment only (cameras and test servers on a laptop).
    allow_private: bool | None = None
    # How long creating or updating a camera waits for DNS before accepting the source
    # unresolved (it is checked again before every connect).
    resolve_timeout_seconds: float = Field(3.0, gt=0, le=60)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        normalized = []
        for host in hosts:
            name = host.strip().lower().rstrip(".")
            if not _HOST_PATTERN.match(name) and not _is_address(name):
                raise ValueError(f"{host!r} is not a host name, '*.suffix' or an address")
            normalized.append(name)
        return tuple(normalized)

    @field_validator("allowed_networks")
    @classmethod
    def _not_everything(
        cls, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        for network in networks:
            if network.prefixlen == 0:
                # It would open metadata and link-local too: almost certainly a mistake.
                raise ValueError(
                    f"{network} allows every address; list the camera networks"
                    " (or set allow_private for loopback and private ranges)"
                )
        return networks


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
