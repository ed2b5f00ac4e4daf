"""Behind the edge proxy: Envoy verifies JWTs and forwards their claims in ``x-jwt-payload``
and the client's address in ``x-forwarded-for``. The services believe both only from a
peer whose certificate names an identity in ``security.tls.edge_proxies``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.common import ConfigError, Settings
from its_camera_ai.security import DevCertificates, mint_dev_certificates
from tests.security.conftest import SecureHost, mtls_channel, mtls_security, running_secure_host

pytestmark = pytest.mark.security

_EDGE = "spiffe://its-camera-ai/envoy"


@pytest.fixture
async def behind_edge(
    postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[SecureHost, DevCertificates]]:
    certs = mint_dev_certificates(tmp_path / "certs", clients=("envoy", "operator"))
    security = mtls_security(certs, peer=None, edge_proxies=[_EDGE])
    async with running_secure_host(
        postgres_dsn, tmp_path, with_inference=False, **security
    ) as served:
        yield served, certs


def _payload(padded: bool = False, **claims: Any) -> str:
    """Claims as Envoy forwards them: base64url JSON, unpadded by default."""
    claims = {"sub": "alice", "role": "operator", "exp": time.time() + 300, **claims}
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
    return encoded if padded else encoded.rstrip("=")


async def _create(
    channel: grpc.aio.Channel, camera_id: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
    request = camera_service_pb2.CreateCameraRequest(
        camera_id=camera_id, camera=camera_pb2.Camera(source_uri="sim://road", enabled=False)
    )
    try:
        await cameras.CreateCamera(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_the_edge_forwards_who_called_and_from_where(
    behind_edge: tuple[SecureHost, DevCertificates],
) -> None:
    served, certs = behind_edge
    forwarded = (
        ("x-jwt-payload", _payload()),
        # The client claimed an address; the edge appended the one it saw.
        ("x-forwarded-for", "10.9.9.9, 203.0.113.7"),
    )
    async with mtls_channel(served.target, certs, "envoy") as channel:
        assert await _create(channel, "gate", forwarded) == (grpc.StatusCode.OK, "")
        # Roles and scopes apply to forwarded principals as to any other.
        viewer = (("x-jwt-payload", _payload(padded=True, sub="bob", role="viewer")),)
        code, _ = await _create(channel, "gate-2", viewer)
        assert code is grpc.StatusCode.PERMISSION_DENIED

    await served.host.security.audit.flush()
    dsn = served.host.settings.database.dsn
    assert dsn is not None
    connection = await asyncpg.connect(dsn.get_secret_value())
    try:
        rows = await connection.fetch(
            "SELECT actor, outcome, client_address FROM audit_log"
            " WHERE action LIKE '%/CreateCamera' ORDER BY id"
        )
    finally:
        await connection.close()
    assert [(row["actor"], row["outcome"]) for row in rows] == [
        ("user:alice", "success"),
        ("user:bob", "denied"),
    ]
    assert rows[0]["client_address"].startswith("203.0.113.7 (via 127.0.0.1:")


async def test_forwarded_claims_from_anyone_but_the_edge_are_refused(
    behind_edge: tuple[SecureHost, DevCertificates],
) -> None:
    served, certs = behind_edge
    async with mtls_channel(served.target, certs, "operator") as channel:
        code, message = await _create(channel, "gate", (("x-jwt-payload", _payload()),))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "x-jwt-payload is believed only from an edge proxy" in message


# Claims are built when the test runs, not when it is collected: an "exp" minted at
# collection would expire in a long run before its case comes up.
@pytest.mark.parametrize(
    ("forwarded", "extra", "expected"),
    [
        # The edge's own certificate is no credential: a request it forwards without a
        # token (an open route, a misrouted call) does not run as the edge.
        (None, (), "no credential"),
        ("%%%", (), "x-jwt-payload is not base64url-encoded JSON"),
        ({"exp": -3600}, (), "expired"),
        ({"role": "root"}, (), "unknown role"),
        ({}, (("authorization", "Bearer x"),), "send one credential"),
    ],
)
async def test_the_edge_itself_gets_nothing_it_does_not_forward(
    behind_edge: tuple[SecureHost, DevCertificates],
    forwarded: str | dict[str, Any] | None,
    extra: tuple[tuple[str, str], ...],
    expected: str,
) -> None:
    served, certs = behind_edge
    if isinstance(forwarded, dict):
        claims = dict(forwarded)
        if "exp" in claims:
            claims["exp"] = time.time() + claims["exp"]
        forwarded = _payload(**claims)
    metadata = extra if forwarded is None else (("x-jwt-payload", forwarded), *extra)
    async with mtls_channel(served.target, certs, "envoy") as channel:
        code, message = await _create(channel, "gate", metadata)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert expected in message


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"edge_proxies": [_EDGE]}, "edge_proxies needs client_ca_file"),
        (
            {
                "client_ca_file": "ca.crt",
                "require_client_cert": True,
                "edge_proxies": [_EDGE],
                "client_roles": {_EDGE: "service"},
            },
            "would run with the edge's role",
        ),
    ],
)
def test_edge_settings_that_would_open_a_hole_are_refused(
    tls: dict[str, Any], expected: str
) -> None:
    with pytest.raises((ConfigError, ValueError), match=expected):
        Settings(security={"tls": {"cert_file": "s.crt", "key_file": "s.key", **tls}})
