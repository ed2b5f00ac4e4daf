"""Who may do what: principals and roles, authentication (JWT, API keys, mTLS), the
per-RPC access table, rate limits, the audit log, TLS and feature flags; and the
development identity provider (``TokenIssuer``) of ``its-camera-ai up`` and the tests.

Everything here belongs to the shared runtime: a service never authenticates on its own,
the ``ServiceHost`` wires it around every RPC.
"""

from __future__ import annotations

from its_camera_ai.security._access import ACCESS, OPEN_METHODS, Access, access_for, is_allowed
from its_camera_ai.security._api_keys import ApiKeyStore
from its_camera_ai.security._audit import AuditEntry, AuditLog, note_audit
from its_camera_ai.security._certs import DevCertificates, mint_dev_certificates
from its_camera_ai.security._flags import FEATURE_FLAGS, FeatureFlags, FlagDefinition
from its_camera_ai.security._issuer import TokenIssuer
from its_camera_ai.security._jwt import JwtVerifier
from its_camera_ai.security._principal import (
    ANONYMOUS_ACTOR,
    SYSTEM,
    Principal,
    Role,
    current_principal,
)
from its_camera_ai.security._tls import (
    accepts_tls12,
    channel_credentials,
    channel_options,
    enforce_tls13,
    peer_identity,
    server_credentials,
)

__all__ = [
    "ACCESS",
    "ANONYMOUS_ACTOR",
    "FEATURE_FLAGS",
    "OPEN_METHODS",
    "SYSTEM",
    "Access",
    "ApiKeyStore",
    "AuditEntry",
    "AuditLog",
    "DevCertificates",
    "FeatureFlags",
    "FlagDefinition",
    "JwtVerifier",
    "Principal",
    "Role",
    "TokenIssuer",
    "accepts_tls12",
    "access_for",
    "channel_credentials",
    "channel_options",
    "current_principal",
    "enforce_tls13",
    "is_allowed",
    "mint_dev_certificates",
    "note_audit",
    "peer_identity",
    "server_credentials",
]
