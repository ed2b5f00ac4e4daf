"""Feature flags switched through AdminService change what the services do, at once and
without a restart (across processes: ``test_admin.py``), and the switch is audited."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from its.admin.v1 import admin_service_pb2, admin_service_pb2_grpc, feature_flag_pb2
from its.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from tests.security.conftest import SecureHost

pytestmark = pytest.mark.security


async def _detect_code(
    inference: inference_service_pb2_grpc.InferenceServiceStub,
    token: tuple[tuple[str, str], ...],
) -> grpc.StatusCode:
    try:
        await inference.Detect(inference_service_pb2.DetectRequest(), metadata=token)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_switching_on_demand_detection_off_refuses_detect(secure_host: SecureHost) -> None:
    admin = secure_host.metadata("admin", subject="root")
    operator = secure_host.metadata("operator")
    async with grpc.aio.insecure_channel(secure_host.target) as channel:
        inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        flags = admin_service_pb2_grpc.AdminServiceStub(channel)
        # On (the default): an empty request reaches the servicer's own checks.
        assert await _detect_code(inference, operator) is grpc.StatusCode.INVALID_ARGUMENT
        await flags.UpdateFeatureFlag(
            admin_service_pb2.UpdateFeatureFlagRequest(
                feature_flag=feature_flag_pb2.FeatureFlag(
                    name="featureFlags/on-demand-detect", enabled=False
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
            ),
            metadata=admin,
        )
        assert await _detect_code(inference, operator) is grpc.StatusCode.FAILED_PRECONDITION
        await secure_host.host.security.audit.flush()  # the entry is recorded before the answer
        entries = await flags.ListAuditLogEntries(
            admin_service_pb2.ListAuditLogEntriesRequest(
                filter='action = "its.admin.v1.AdminService/UpdateFeatureFlag"'
            ),
            metadata=admin,
        )
    [entry] = entries.audit_log_entries
    assert entry.resource == "featureFlags/on-demand-detect"
    assert entry.actor == "user:root"
    assert entry.details["enabled"] is False
