"""``its.admin.v1.AdminService``: API keys, feature flags and the audit log.

Every method needs ADMIN, which the security interceptor checks before the servicer runs;
the servicer checks the request (errors name the field), acts as ``current_principal()``
(the creator of a key, the updater of a flag) and adds the resource and what was asked to
the call's audit entry with ``note_audit``, never a secret.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from its.admin.v1 import admin_service_pb2, admin_service_pb2_grpc, api_key_pb2
from its_camera_ai.admin._audit_reader import AuditLogReader
from its_camera_ai.common import ConfigError, InvalidArgumentError, Runtime, is_resource_id
from its_camera_ai.security import ApiKeyStore, FeatureFlags, current_principal, note_audit

__all__ = ["AdminServicer", "add_admin_service"]

_Context = grpc.aio.ServicerContext[Any, Any]
_FLAG_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENABLED_MASKS = (["enabled"], ["*"])
# Audit details hold what was asked; a filter is the admin's own text, cut to a sane size.
_MAX_DETAIL = 256


def _role_label(role: int) -> str:
    try:
        return api_key_pb2.Role.Name(role)  # type: ignore[arg-type]
    except ValueError:
        return str(role)


def _key_id(name: str, field: str) -> str:
    key_id = name.removeprefix("apiKeys/")
    if not name.startswith("apiKeys/") or not is_resource_id(key_id):
        raise InvalidArgumentError.for_field(field, 'must be "apiKeys/{api_key}"')
    return key_id


def _flag_id(name: str, field: str) -> str:
    flag = name.removeprefix("featureFlags/")
    if not name.startswith("featureFlags/") or _FLAG_ID.fullmatch(flag) is None:
        raise InvalidArgumentError.for_field(
            field, 'must be "featureFlags/{feature_flag}" (lower-case letters, digits, hyphens)'
        )
    return flag


def _expire_time(stamp: timestamp_pb2.Timestamp) -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgumentError.for_field(
            "api_key.expire_time", "is not a valid timestamp"
        ) from None


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """AdminService over the key store, the feature flags and the audit log."""

    def __init__(
        self, *, api_keys: ApiKeyStore, flags: FeatureFlags, audit_log: AuditLogReader
    ) -> None:
        self.api_keys = api_keys
        self.flags = flags
        self._audit_log = audit_log

    # --- API keys -------------------------------------------------------------------------

    async def CreateApiKey(
        self, request: admin_service_pb2.CreateApiKeyRequest, context: _Context
    ) -> admin_service_pb2.CreateApiKeyResponse:
        if request.api_key_id and is_resource_id(request.api_key_id):
            note_audit(resource=f"apiKeys/{request.api_key_id}")
        if not request.HasField("api_key"):
            raise InvalidArgumentError.for_field("api_key", "is required")
        key = request.api_key
        expire_time = _expire_time(key.expire_time) if key.HasField("expire_time") else None
        note_audit(
            role=_role_label(key.role),
            allowed_cameras=len(key.allowed_cameras),
            expires=expire_time is not None,
        )
        created, secret = await self.api_keys.create(
            key_id=request.api_key_id,
            role=key.role,
            creator=current_principal().actor,
            display_name=key.display_name,
            allowed_cameras=list(key.allowed_cameras),
            expire_time=expire_time,
        )
        note_audit(resource=created.name)
        return admin_service_pb2.CreateApiKeyResponse(api_key=created, secret=secret)

    async def ListApiKeys(
        self, request: admin_service_pb2.ListApiKeysRequest, context: _Context
    ) -> admin_service_pb2.ListApiKeysResponse:
        if request.filter:
            note_audit(filter=request.filter[:_MAX_DETAIL])
        keys, token = await self.api_keys.list(
            filter=request.filter, page_size=request.page_size, page_token=request.page_token
        )
        return admin_service_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=token)

    async def DeleteApiKey(
        self, request: admin_service_pb2.DeleteApiKeyRequest, context: _Context
    ) -> admin_service_pb2.DeleteApiKeyResponse:
        key_id = _key_id(request.name, "name")
        note_audit(resource=request.name, allow_missing=request.allow_missing)
        existed = await self.api_keys.delete(key_id, allow_missing=request.allow_missing)
        note_audit(existed=existed)
        return admin_service_pb2.DeleteApiKeyResponse()

    # --- feature flags --------------------------------------------------------------------

    async def GetFeatureFlag(
        self, request: admin_service_pb2.GetFeatureFlagRequest, context: _Context
    ) -> admin_service_pb2.GetFeatureFlagResponse:
        flag = _flag_id(request.name, "name")
        note_audit(resource=request.name)
        return admin_service_pb2.GetFeatureFlagResponse(feature_flag=await self.flags.get(flag))

    async def ListFeatureFlags(
        self, request: admin_service_pb2.ListFeatureFlagsRequest, context: _Context
    ) -> admin_service_pb2.ListFeatureFlagsResponse:
        flags, token = await self.flags.list(request.page_size, request.page_token)
        return admin_service_pb2.ListFeatureFlagsResponse(
            feature_flags=flags, next_page_token=token
        )

    async def UpdateFeatureFlag(
        self, request: admin_service_pb2.UpdateFeatureFlagRequest, context: _Context
    ) -> admin_service_pb2.UpdateFeatureFlagResponse:
        if not request.HasField("feature_flag"):
            raise InvalidArgumentError.for_field("feature_flag", "is required")
        wanted = request.feature_flag
        flag = _flag_id(wanted.name, "feature_flag.name")
        paths = list(request.update_mask.paths)
        note_audit(
            resource=wanted.name, enabled=wanted.enabled, update_mask=",".join(paths)[:_MAX_DETAIL]
        )
        if paths not in _ENABLED_MASKS:
            raise InvalidArgumentError.for_field(
                "update_mask", 'must be ["enabled"] (or "*"): only enabled can be changed'
            )
        updated = await self.flags.update(
            flag, wanted.enabled, wanted.etag, current_principal().actor
        )
        return admin_service_pb2.UpdateFeatureFlagResponse(feature_flag=updated)

    # --- audit log ------------------------------------------------------------------------

    async def ListAuditLogEntries(
        self, request: admin_service_pb2.ListAuditLogEntriesRequest, context: _Context
    ) -> admin_service_pb2.ListAuditLogEntriesResponse:
        if request.filter:
            note_audit(filter=request.filter[:_MAX_DETAIL])
        if request.order_by:
            note_audit(order_by=request.order_by[:_MAX_DETAIL])
        return await self._audit_log.list_entries(request)


def add_admin_service(server: grpc.aio.Server, runtime: Runtime) -> AdminServicer:
    """Serve AdminService on ``server`` over the host's database (required), API key store
    and feature flags (the host starts and stops them)."""
    database = runtime.database
    if database is None or runtime.api_keys is None or runtime.flags is None:
        raise ConfigError("AdminService needs a database (its unit must set needs_database)")
    servicer = AdminServicer(
        api_keys=runtime.api_keys, flags=runtime.flags, audit_log=AuditLogReader(database.pool)
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    return servicer
