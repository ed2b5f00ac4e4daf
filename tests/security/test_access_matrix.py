"""Every RPC of every service, called by every role, on one secured host: each cell of the
role x RPC matrix asserted against the roles the protos promise, and each refusal audited.
"""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from its.admin.v1 import admin_service_pb2
from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_service_pb2
from its.inference.v1 import inference_service_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.security import ACCESS
from tests.security.conftest import ROLES, SecureHost, call

pytestmark = pytest.mark.security

_READERS = {"viewer", "operator", "admin", "service"}
_CHANGERS = {"operator", "admin"}
_HUMANS = {"viewer", "operator", "admin"}

# What the protos' "Roles:" comments promise, written out by hand (not derived from the
# access table under test).
EXPECTED: dict[str, set[str]] = {
    "its.camera.v1.CameraService/CreateCamera": _CHANGERS,
    "its.camera.v1.CameraService/GetCamera": _READERS,
    "its.camera.v1.CameraService/ListCameras": _READERS,
    "its.camera.v1.CameraService/UpdateCamera": _CHANGERS,
    "its.camera.v1.CameraService/DeleteCamera": _CHANGERS,
    "its.camera.v1.CameraService/GetCameraStatus": _READERS,
    "its.camera.v1.CameraService/WatchCameraStatus": _READERS,
    "its.analytics.v1.AnalyticsService/StreamDetectionBatches": {"service", "admin"},
    "its.analytics.v1.AnalyticsService/ResetCameraState": _CHANGERS,
    "its.inference.v1.InferenceService/Detect": {"operator", "admin", "service"},
    "its.inference.v1.InferenceService/GetModel": _READERS,
    **{
        f"its.query.v1.QueryService/{name}": _HUMANS
        for name in (
            "GetTrafficCounts",
            "GetTrafficSummary",
            "ListEvents",
            "GetEvent",
            "StreamEvents",
            "GetCameraStats",
        )
    },
    **{
        f"its.admin.v1.AdminService/{name}": {"admin"}
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

_MODULES = (
    camera_service_pb2,
    analytics_service_pb2,
    inference_service_pb2,
    query_service_pb2,
    admin_service_pb2,
)
_METHODS = {
    f"{service.full_name}/{method.name}": (
        "bidi" if method.client_streaming else "server" if method.server_streaming else "unary"
    )
    for module in _MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def test_every_method_has_a_rule_and_an_expectation() -> None:
    assert set(_METHODS) == set(EXPECTED)
    assert {method.lstrip("/") for method in ACCESS} == set(EXPECTED)


async def test_role_by_rpc_matrix(secure_host: SecureHost) -> None:
    cells = [(method, role) for method in EXPECTED for role in (*ROLES, "anonymous")]
    async with grpc.aio.insecure_channel(secure_host.target) as channel:

        async def cell(method: str, role: str) -> grpc.StatusCode:
            metadata = () if role == "anonymous" else secure_host.metadata(role)
            return await call(
                channel, f"/{method}", metadata=metadata, streaming=_METHODS[method], deadline=2.0
            )

        codes = await asyncio.gather(*(cell(method, role) for method, role in cells))

    wrong = []
    for (method, role), code in zip(cells, codes, strict=True):
        if role == "anonymous":
            expected_ok = code is grpc.StatusCode.UNAUTHENTICATED
        elif role in EXPECTED[method]:
            expected_ok = code not in _REFUSED
        else:
            expected_ok = code is grpc.StatusCode.PERMISSION_DENIED
        if not expected_ok:
            wrong.append(f"{role} -> {method}: {code.name}")
    assert not wrong, "\n".join(wrong)

    # Every refusal is in the audit log, with its actor and action.
    denied_cells = sum(
        1 for method, role in cells if role == "anonymous" or role not in EXPECTED[method]
    )
    await secure_host.host.security.audit.flush()
    dsn = secure_host.host.settings.database.dsn
    assert dsn is not None
    connection = await asyncpg.connect(dsn.get_secret_value())
    try:
        rows = await connection.fetch(
            "SELECT actor, action, outcome, details FROM audit_log WHERE outcome = 'denied'"
        )
    finally:
        await connection.close()
    assert len(rows) == denied_cells
    anonymous = [row for row in rows if row["actor"] == "anonymous"]
    assert len(anonymous) == len(EXPECTED)
    assert {row["action"] for row in anonymous} == set(EXPECTED)
