"""The ``security`` section of the settings (``ITS_SECURITY__*``): who may call, over what.

Kept beside ``_config.py`` (which includes it as ``Settings.security``) so the operator
reads one section for everything about credentials, TLS and limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = [
    "ClientTlsSettings",
    "JwtSettings",
    "RateLimitSettings",
    "RoleName",
    "SecuritySettings",
    "ServerTlsSettings",
]

RoleName = Literal["viewer", "operator", "admin", "service"]
JwtAlgorithm = Literal["RS256", "ES256", "EdDSA"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JwtSettings(_Section):
    """Bearer tokens (``authorization: Bearer <JWT>``) from one issuer."""

    # The issuer's JSON Web Key Set: a file (mounted from a config map), or an https URL
    # fetched at start and again when a token names an unknown ``kid`` (key rotation), at
    # most once per ``jwks_min_refresh_seconds``. Neither: JWTs are not accepted.
    jwks_file: Path | None = None
    jwks_url: str | None = Field(None, pattern=r"^https?://")
    jwks_refresh_seconds: float = Field(300.0, gt=0, le=86400)
    jwks_min_refresh_seconds: float = Field(10.0, ge=0, le=3600)
    issuer: str | None = None
    audience: str | None = None
    # Asymmetric only: an HS* token is refused whatever its key (no HS/RS confusion).
    algorithms: tuple[JwtAlgorithm, ...] = Field(("RS256", "ES256", "EdDSA"), min_length=1)
    # Clock skew allowed on exp/nbf/iat.
    leeway_seconds: float = Field(30.0, ge=0, le=300)
    # Claims carrying the caller's role ("viewer", "operator", "admin", "service") and its
    # optional camera scope (a list of camera ids or "cameras/{id}" names).
    role_claim: str = Field("role", min_length=1)
    cameras_claim: str = Field("cameras", min_length=1)

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or self.jwks_url is not None

    @model_validator(mode="after")
    def _issuer_and_audience_with_keys(self) -> JwtSettings:
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError("jwks_file and jwks_url are exclusive: set one")
        if self.enabled and (not self.issuer or not self.audience):
            raise ValueError("issuer and audience are required when JWTs are accepted")
        return self


class ServerTlsSettings(_Section):
    """TLS on this service's gRPC port. No certificate: plaintext (allowed in dev only)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    # mTLS: client certificates required and verified against this CA bundle.
    client_ca_file: Path | None = None
    require_client_cert: bool = False
    min_version: Literal["1.2", "1.3"] = "1.3"
    # Client certificate identity (a SAN DNS name or URI, else the subject CN) -> role:
    # such a client is the principal "service:{identity}" without any token. Identities
    # not listed here authenticate the connection only; their calls still need a token.
    client_roles: dict[str, RoleName] = {}
    # Identities of edge proxies (Envoy) that verify callers' JWTs themselves: from such a
    # peer, and only from it, the verified claims in ``x-jwt-payload`` and the client
    # address in ``x-forwarded-for`` are believed. Never also in client_roles: a request
    # the edge forwards without a token must not inherit the edge's own role.
    edge_proxies: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _consistent(self) -> ServerTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (mTLS is TLS)")
        if self.require_client_cert != (self.client_ca_file is not None):
            # grpc either requires a client certificate or never asks for one.
            raise ValueError("client_ca_file and require_client_cert go together (mTLS)")
        if self.client_roles and self.client_ca_file is None:
            raise ValueError("client_roles needs client_ca_file")
        if self.edge_proxies and self.client_ca_file is None:
            raise ValueError(
                "edge_proxies needs client_ca_file: an edge is known by its certificate"
            )
        if both := sorted(set(self.edge_proxies) & set(self.client_roles)):
            raise ValueError(
                f"edge_proxies and client_roles share {both}: a request the edge forwards"
                " without a token would run with the edge's role"
            )
        return self


class ClientTlsSettings(_Section):
    """How this process calls a peer service (and how the CLI calls a server)."""

    enabled: bool = False
    # CA bundle that signed the servers' certificates; None: the system roots.
    ca_file: Path | None = None
    # A client certificate for servers that require one (mTLS).
    cert_file: Path | None = None
    key_file: Path | None = None
    # The name to verify in the server certificate when it differs from the host dialled.
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class RateLimitSettings(_Section):
    """A token bucket per principal: ``requests_per_second`` refill, ``burst`` capacity."""

    requests_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class SecuritySettings(_Section):
    # The role of a caller with no credential: "auto" is admin in the dev environment
    # (a laptop on loopback) and none elsewhere; "none" refuses anonymous callers.
    anonymous_role: RoleName | Literal["auto", "none"] = "auto"
    jwt: JwtSettings = JwtSettings()
    tls: ServerTlsSettings = ServerTlsSettings()
    # This process's calls to its peers (inference -> analytics and -> decoder, analytics
    # and query -> decoder) and the CLI's calls: TLS and the credential they present (an
    # API key with the service role, from a mounted secret file or the variable itself).
    peer_tls: ClientTlsSettings = ClientTlsSettings()
    peer_api_key: SecretStr | None = None
    peer_api_key_file: Path | None = None
    # How long a verified API key is trusted before it is looked up again: a revoked key
    # is refused by every service within this time (plus one lookup), under the second
    # the product promises.
    api_key_cache_seconds: float = Field(0.5, gt=0, le=1.0)
    # Per role; a role without an entry is not limited.
    rate_limits: dict[RoleName, RateLimitSettings] = {}
    # Where feature flag changes are announced (Redis pub/sub, plus "<channel>:state"):
    # every service of one deployment uses the same.
    feature_flags_channel: str = Field("its:feature-flags", pattern=r"^[A-Za-z0-9:_-]{1,64}$")
    # gRPC server reflection (grpcurl without local protos). Off hides the API's shape.
    reflection: bool = True
    # Bearer token /metrics requires (from a file or the variable). Outside dev, an HTTP
    # port bound beyond loopback needs one.
    metrics_token: SecretStr | None = None
    metrics_token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source_each(self) -> SecuritySettings:
        if self.peer_api_key is not None and self.peer_api_key_file is not None:
            raise ValueError("peer_api_key and peer_api_key_file are exclusive: set one")
        if self.metrics_token is not None and self.metrics_token_file is not None:
            raise ValueError("metrics_token and metrics_token_file are exclusive: set one")
        return self
