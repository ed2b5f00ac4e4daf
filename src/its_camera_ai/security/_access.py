"""Who may call what: one table of every RPC the services serve, with its least role.

A method missing from the table is refused to everyone but admins (fail closed); a test
checks that every method of every service is in it. The proto comments of each service
say the same in prose ("Roles: ...").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from its_camera_ai.security._principal import Principal, Role

__all__ = ["ACCESS", "OPEN_METHODS", "Access", "access_for", "is_allowed", "service_of"]


@dataclass(frozen=True, slots=True)
class Access:
    """``role``: the least role of the VIEWER < OPERATOR < ADMIN order that may call; a
    method whose role is SERVICE is for services (and admins) only. ``services``: a
    service principal may call it too. ``audited``: every call is written to the audit
    log (changes), not only refusals."""

    role: Role
    services: bool = False
    audited: bool = False


_READ = Access(Role.VIEWER)
_PEER_READ = Access(Role.VIEWER, services=True)
_CHANGE = Access(Role.OPERATOR, audited=True)
_ADMIN = Access(Role.ADMIN, audited=True)

_BY_SERVICE: dict[str, dict[str, Access]] = {
    "its.camera.v1.CameraService": {
        "CreateCamera": _CHANGE,
        "GetCamera": _PEER_READ,
        "ListCameras": _PEER_READ,
        "UpdateCamera": _CHANGE,
        "DeleteCamera": _CHANGE,
        "GetCameraStatus": _PEER_READ,
        "WatchCameraStatus": _PEER_READ,
    },
    "its.analytics.v1.AnalyticsService": {
        "StreamDetectionBatches": Access(Role.SERVICE),
        "ResetCameraState": _CHANGE,
    },
    "its.inference.v1.InferenceService": {
        "Detect": Access(Role.OPERATOR, services=True),
        "GetModel": _PEER_READ,
    },
    "its.query.v1.QueryService": {
        "GetTrafficCounts": _READ,
        "GetTrafficSummary": _READ,
        "ListEvents": _READ,
        "GetEvent": _READ,
        "StreamEvents": _READ,
        "GetCameraStats": _READ,
    },
    "its.admin.v1.AdminService": {
        name: _ADMIN
        for name in (
            "CreateApiKey",
            "ListApiKeys",
            "DeleteApiKey",
            "GetFeatureFlag",
            "ListFeatureFlags",
            "UpdateFeatureFlag",
            "ListAuditLogEntries",
        )
    },
}

ACCESS: Mapping[str, Access] = {
    f"/{service}/{method}": access
    for service, methods in _BY_SERVICE.items()
    for method, access in methods.items()
}

# Open to every caller, credential or not: load balancers and probes check health without
# one, and reflection describes the API (switched off with security.reflection).
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

# Which unit serves a gRPC package: the audit log's "service" field.
_UNIT_OF_PACKAGE = {
    "its.camera.v1": "decoder",
    "its.analytics.v1": "analytics",
    "its.inference.v1": "inference",
    "its.query.v1": "query",
    "its.admin.v1": "query",
}


def access_for(method: str) -> Access | None:
    """The rule for a full method name (``/package.Service/Method``); None if unknown."""
    return ACCESS.get(method)


def is_allowed(principal: Principal, access: Access | None) -> bool:
    if principal.role is Role.ADMIN:
        return True
    if access is None:
        return False
    if principal.role is Role.SERVICE:
        return access.services or access.role is Role.SERVICE
    return access.role is not Role.SERVICE and principal.role >= access.role


def service_of(method: str) -> str:
    """The unit a method belongs to ("decoder", "query", ...), for the audit log."""
    package = method.lstrip("/").partition("/")[0].rpartition(".")[0]
    return _UNIT_OF_PACKAGE.get(package, package)
