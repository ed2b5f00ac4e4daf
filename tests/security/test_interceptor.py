"""The security interceptor on a real host: forged credentials, API keys and their
revocation, rate limits, producer identity, the audit trail, and what stays open."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from its.admin.v1 import admin_service_pb2, admin_service_pb2_grpc, api_key_pb2
from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from tests.conftest import rpc_error_details
from tests.security.conftest import SecureHost, running_secure_host

pytestmark = pytest.mark.security


@pytest.fixture
async def served(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[SecureHost]:
    async with running_secure_host(
        postgres_dsn,
        tmp_path,
        with_inference=False,
        rate_limits={"viewer": {"requests_per_second": 5, "burst": 5}},
        reflection=False,
        metrics_token="metrics-secret-for-tests",
    ) as host:
        yield host


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token signed by hand: unsigned (``key`` None) or HMAC-SHA256 with ``key``."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{_b64(signature)}"


def _forged(served: SecureHost) -> dict[str, str]:
    issuer = served.issuer
    good = issuer.mint("mallory", "admin")
    header, payload, signature = good.split(".")
    other_payload = issuer.mint("mallory", "viewer").split(".")[1]
    claims = {"sub": "mallory", "role": "admin", "iss": issuer.issuer, "aud": issuer.audience,
              "exp": int(time.time()) + 300}  # fmt: skip
    return {
        "alg none": _forge({"alg": "none", "kid": issuer.kid}, claims, None),
        # The issuer's public key, which anyone may fetch, as an HMAC secret.
        "HS/RS key confusion": _forge(
            {"alg": "HS256", "kid": issuer.kid}, claims, issuer.public_pem
        ),
        "unknown kid": issuer.mint("mallory", "admin", headers={"kid": "no-such-key"}),
        "tampered payload": f"{header}.{other_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "expired": issuer.mint("mallory", "admin", lifetime_s=-120),
        "not yet valid": issuer.mint("mallory", "admin", not_before_s=600),
        "wrong audience": issuer.mint("mallory", "admin", extra_claims={"aud": "someone-else"}),
        "wrong issuer": issuer.mint("mallory", "admin", extra_claims={"iss": "https://evil"}),
        "garbage": "not-a-jwt",
    }


async def test_every_forged_token_is_unauthenticated_and_audited(served: SecureHost) -> None:
    forged = _forged(served)
    async with grpc.aio.insecure_channel(served.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        for case, token in forged.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await cameras.ListCameras(
                    camera_service_pb2.ListCamerasRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, case
            assert token not in (caught.value.details() or ""), case
        for metadata in (
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("x-api-key", "itsk_not-a-key-at-all-but-long-enough-to-look-like-one"),),
            (("x-api-key", "itsi_forged-internal-key"),),
            (("authorization", f"Bearer {served.token('admin')}"), ("x-api-key", "itsk_x")),
            (),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await cameras.ListCameras(
                    camera_service_pb2.ListCamerasRequest(), metadata=metadata
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, metadata
    rows = await _audit_rows(served, "outcome = 'denied'")
    assert len(rows) == len(forged) + 5
    assert all(row["actor"] == "anonymous" for row in rows)
    secrets_sent = [*forged.values(), "itsk_not-a-key", "itsi_forged", "dXNlcjpwYXNz"]
    for row in rows:
        assert not [secret for secret in secrets_sent if secret in row["details"]]


async def test_api_keys_work_until_revoked_then_fail_within_a_second(served: SecureHost) -> None:
    admin = served.metadata("admin", subject="root")
    async with grpc.aio.insecure_channel(served.target) as channel:
        keys = admin_service_pb2_grpc.AdminServiceStub(channel)
        created = await keys.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_OPERATOR, display_name="ci"),
                api_key_id="ci-key",
            ),
            metadata=admin,
        )
        key = (("x-api-key", created.secret),)
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera_id="by-key", camera=camera_pb2.Camera(source_uri="sim://road", enabled=False)
            ),
            metadata=key,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await keys.ListApiKeys(admin_service_pb2.ListApiKeysRequest(), metadata=key)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED

        await keys.DeleteApiKey(
            admin_service_pb2.DeleteApiKeyRequest(name="apiKeys/ci-key"), metadata=admin
        )
        revoked = time.monotonic()
        refused = None
        while refused is None:
            try:
                await cameras.ListCameras(camera_service_pb2.ListCamerasRequest(), metadata=key)
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
            await asyncio.sleep(0.05)
        assert refused is grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - revoked <= 1.0

    await served.host.security.audit.flush()
    rows = await _audit_rows(served, "action LIKE '%ApiKey' OR action LIKE '%CreateCamera'")
    by_action = {
        row["action"].rsplit("/", 1)[1]: row for row in rows if row["outcome"] == "success"
    }
    assert by_action["CreateApiKey"]["resource"] == "apiKeys/ci-key"
    assert by_action["DeleteApiKey"]["resource"] == "apiKeys/ci-key"
    assert by_action["CreateCamera"]["actor"] == "apiKey:apiKeys/ci-key"
    assert all(created.secret not in row["details"] for row in rows)


async def test_a_camera_change_is_audited_with_every_field(served: SecureHost) -> None:
    operator = (
        *served.metadata("operator", subject="olga"),
        ("x-request-id", "req-42"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    )
    async with grpc.aio.insecure_channel(served.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera_id="gate-1", camera=camera_pb2.Camera(source_uri="sim://road", enabled=False)
            ),
            metadata=operator,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await cameras.DeleteCamera(
                camera_service_pb2.DeleteCameraRequest(name="cameras/nope"), metadata=operator
            )
    rows = await _audit_rows(served, "actor = 'user:olga'")
    created, failed = sorted(rows, key=lambda row: row["id"])
    assert created["service"] == "decoder"
    assert created["action"] == "its.camera.v1.CameraService/CreateCamera"
    assert created["resource"] == "cameras/gate-1"
    assert created["outcome"] == "success"
    assert created["client_address"].startswith("127.0.0.1:")
    assert created["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert '"request_id": "req-42"' in created["details"]
    assert created["event_time"] is not None
    assert failed["outcome"] == "failure"
    assert failed["resource"] == "cameras/nope"
    assert '"status": "NOT_FOUND"' in failed["details"]


async def test_rate_limit_answers_resource_exhausted_with_retry_info(served: SecureHost) -> None:
    viewer = served.metadata("viewer")
    codes = []
    async with grpc.aio.insecure_channel(served.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        for _ in range(8):
            try:
                await cameras.ListCameras(camera_service_pb2.ListCamerasRequest(), metadata=viewer)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                last = exc
        # Another principal has a bucket of its own; admins are not limited here.
        await cameras.ListCameras(
            camera_service_pb2.ListCamerasRequest(),
            metadata=served.metadata("viewer", subject="v2"),
        )
    assert codes.count(grpc.StatusCode.OK) == 5
    assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    reason, _ = rpc_error_details(last)
    assert reason == "RATE_LIMITED"
    assert "retry in" in (last.details() or "")


async def test_a_producer_id_belongs_to_its_first_principal(served: SecureHost) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        analytics = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)

        async def stream(subject: str) -> grpc.StatusCode:
            batch = detection_batch_pb2.DetectionBatch(
                producer_id="inference-a", sequence=1, model="models/m", model_version="1"
            )
            call = analytics.StreamDetectionBatches(
                iter([analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)]),
                metadata=served.metadata("service", subject=subject),
            )
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # The first principal binds the id (its malformed batch is then refused as such).
        assert await stream("inference-a") is grpc.StatusCode.INVALID_ARGUMENT
        assert await stream("impostor") is grpc.StatusCode.PERMISSION_DENIED
        assert await stream("inference-a") is grpc.StatusCode.INVALID_ARGUMENT


async def test_health_is_open_reflection_off_metrics_need_their_token(served: SecureHost) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in listing:
                pass
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    url = f"http://127.0.0.1:{served.host.http_port}/metrics"

    def fetch(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await asyncio.to_thread(fetch, {}) == 401
    assert await asyncio.to_thread(fetch, {"Authorization": "Bearer wrong"}) == 401
    ok = {"Authorization": "Bearer metrics-secret-for-tests"}
    assert await asyncio.to_thread(fetch, ok) == 200


async def _audit_rows(served: SecureHost, where: str) -> list[dict[str, Any]]:
    await served.host.security.audit.flush()
    dsn = served.host.settings.database.dsn
    assert dsn is not None
    connection = await asyncpg.connect(dsn.get_secret_value())
    try:
        rows = await connection.fetch(f"SELECT * FROM audit_log WHERE {where} ORDER BY id")
    finally:
        await connection.close()
    return [dict(row) for row in rows]
