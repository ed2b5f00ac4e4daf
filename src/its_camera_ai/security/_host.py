"""A host's security, built once per process from ``settings.security``.

The ``ServiceHost`` opens it after the database and Redis, puts its interceptor around
every RPC, serves on the credentials it gives, and hands its peer access to the units.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.common._config import ConfigError, Settings
from its_camera_ai.common._peers import PeerAccess
from its_camera_ai.common._storage import Database
from its_camera_ai.security._access import OPEN_METHODS
from its_camera_ai.security._api_keys import ApiKeyStore
from its_camera_ai.security._audit import AuditLog
from its_camera_ai.security._flags import FeatureFlags
from its_camera_ai.security._interceptor import (
    INTERNAL_KEY_PREFIX,
    Authenticator,
    SecurityInterceptor,
)
from its_camera_ai.security._jwt import JwtVerifier
from its_camera_ai.security._principal import Role
from its_camera_ai.security._ratelimit import RateLimiter
from its_camera_ai.security._tls import (
    accepts_tls12,
    certificate_expiries,
    channel_credentials,
    channel_options,
    server_credentials,
)

__all__ = ["HostSecurity"]

_log = logging.getLogger(__name__)


def _secret(value: str | None, path_setting: str, path: Path | None) -> str | None:
    """A secret from the variable itself or from a mounted file (its whole text, stripped)."""
    if value is not None:
        return value
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path_setting} {path}: cannot read: {exc.strerror}") from exc
    if not text:
        raise ConfigError(f"{path_setting} {path}: empty")
    return text


class HostSecurity:
    def __init__(self, settings: Settings, host_name: str, registry: CollectorRegistry) -> None:
        self.settings = settings
        security = settings.security
        self._host_name = host_name
        # The key this host's units present to each other in one process: random per run,
        # held only in memory.
        self._internal_key = INTERNAL_KEY_PREFIX + secrets.token_urlsafe(32)
        self._jwt = JwtVerifier(security.jwt) if security.jwt.enabled else None
        self.audit = AuditLog(registry)
        self.interceptor: SecurityInterceptor | None = None
        self.api_keys: ApiKeyStore | None = None
        self.flags: FeatureFlags | None = None
        # Set on open; the side port's routes authenticate with it too.
        self.authenticator: Authenticator | None = None
        self.metrics_token = _secret(
            security.metrics_token.get_secret_value() if security.metrics_token else None,
            "security.metrics_token_file",
            security.metrics_token_file,
        )
        peer_key = _secret(
            security.peer_api_key.get_secret_value() if security.peer_api_key else None,
            "security.peer_api_key_file",
            security.peer_api_key_file,
        )
        peer_tls = security.peer_tls
        expiry = Gauge(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate this process serves or calls with expires (the earliest in"
            " its file), by role: server, client_ca, peer_client, peer_ca",
            ["certificate"],
            registry=registry,
        )
        for role, expires in certificate_expiries(security.tls, peer_tls).items():
            expiry.labels(role).set(expires)
        credentials = channel_credentials(peer_tls) if peer_tls.enabled else None
        options = tuple(channel_options(peer_tls)) if peer_tls.enabled else ()
        self._remote = PeerAccess(
            credentials, (("x-api-key", peer_key),) if peer_key else (), options
        )
        self._local = PeerAccess(credentials, (("x-api-key", self._internal_key),), options)
        if security.tls.enabled and not peer_tls.enabled:
            # In-process peers call this very port, which then speaks only TLS.
            _log.warning("security.tls is on but security.peer_tls is not: peers cannot call")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        tls = self.settings.security.tls
        return server_credentials(tls) if tls.enabled else None

    async def check_tls_minimum(self, host: str, port: int) -> None:
        """Refuse to serve if the port still accepts TLS 1.2 when 1.3 is the minimum: the
        minimum rests on gRPC's cipher setting (``_tls.py``), which a gRPC upgrade could
        change without a word."""
        tls = self.settings.security.tls
        if not tls.enabled or tls.min_version != "1.3":
            return
        async with asyncio.timeout(5):
            if await accepts_tls12(host, port):
                raise ConfigError(
                    f"security.tls.min_version 1.3: port {port} still accepts TLS 1.2;"
                    " this gRPC build ignores GRPC_SSL_CIPHER_SUITES"
                )

    async def open(self, database: Database | None, redis: Redis | RedisCluster | None) -> None:
        """Start what needs the dependencies: the key set, the API keys, the feature flags,
        the audit writer."""
        security = self.settings.security
        if self._jwt is not None:
            await self._jwt.start()
        self.audit.start(database)
        if database is not None:
            self.api_keys = ApiKeyStore(database, cache_seconds=security.api_key_cache_seconds)
        self.flags = FeatureFlags(database, redis, channel=security.feature_flags_channel)
        await self.flags.start()
        anonymous = self.settings.anonymous_role
        authenticator = Authenticator(
            internal_key=self._internal_key,
            internal_actor=f"service:{self._host_name}",
            jwt=self._jwt,
            api_keys=self.api_keys,
            client_roles={
                identity: Role.parse(role) for identity, role in security.tls.client_roles.items()
            },
            anonymous_role=None if anonymous is None else Role.parse(anonymous),
            edge_proxies=security.tls.edge_proxies,
            claims=security.jwt,
        )
        self.authenticator = authenticator
        self.interceptor = SecurityInterceptor(
            authenticator,
            RateLimiter(security.rate_limits),
            self.audit,
            open_methods=tuple(OPEN_METHODS),
        )
        if anonymous is not None:
            _log.warning(
                "anonymous callers are %s (security.anonymous_role); never expose this port",
                anonymous,
            )

    def peer_access(self, loopback_target: Callable[[], str]) -> Callable[[str], PeerAccess]:
        """What a unit presents to the peer at a target: the in-memory key to this very
        server, the configured credential elsewhere."""

        def access(target: str) -> PeerAccess:
            return self._local if target == loopback_target() else self._remote

        return access

    async def close(self) -> None:
        await self.audit.close()
        if self.flags is not None:
            await self.flags.close()
        if self.api_keys is not None:
            await self.api_keys.close()
        if self._jwt is not None:
            await self._jwt.close()
