"""AdminService on a real host (loopback gRPC, PostgreSQL, Redis, the security interceptor
with JWTs): API keys (create/list/delete, verification by other services, expiry, last
use), feature flags (etags, followed by other services through Redis and the poll) and
the audit log's listing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from redis.asyncio import Redis

from its.admin.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    api_key_pb2,
    audit_log_pb2,
    feature_flag_pb2,
)
from its.common.v1 import error_reason_pb2
from its_camera_ai.admin import AdminServicer, add_admin_service
from its_camera_ai.common import (
    Database,
    DatabaseSettings,
    Runtime,
    ServiceHost,
    ServiceUnit,
    Settings,
    UnauthenticatedError,
)
from its_camera_ai.security import FEATURE_FLAGS, ApiKeyStore, FeatureFlags, Role
from its_camera_ai.testing import TokenIssuer, until
from tests.conftest import REDIS_URL, free_port, rpc_error_details

pytestmark = pytest.mark.security

pb = admin_service_pb2
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
ALICE = "user:alice"


@dataclass
class Admin:
    host: ServiceHost
    stub: admin_service_pb2_grpc.AdminServiceAsyncStub
    servicer: AdminServicer
    issuer: TokenIssuer
    dsn: str
    channel: str

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        assert self.host.runtime.database is not None
        return self.host.runtime.database.pool

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.issuer.mint('alice', 'admin')}"),)

    async def create(
        self, role: int = api_key_pb2.ROLE_VIEWER, key_id: str = "", **fields: Any
    ) -> pb.CreateApiKeyResponse:
        key = api_key_pb2.ApiKey(role=role, **fields)  # type: ignore[arg-type]
        request = pb.CreateApiKeyRequest(api_key=key, api_key_id=key_id)
        return await self.stub.CreateApiKey(request, metadata=self.auth)

    async def list_keys(self, page_size: int = 1000, **fields: Any) -> list[api_key_pb2.ApiKey]:
        keys: list[api_key_pb2.ApiKey] = []
        token = ""
        while True:
            reply = await self.stub.ListApiKeys(
                pb.ListApiKeysRequest(page_size=page_size, page_token=token, **fields),
                metadata=self.auth,
            )
            assert len(reply.api_keys) <= page_size
            keys += reply.api_keys
            if not (token := reply.next_page_token):
                return keys


@pytest.fixture
async def admin(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Admin]:
    issuer = TokenIssuer.create(tmp_path / "issuer")
    channel = f"its:test-flags:{uuid.uuid4().hex}"
    servicers: list[AdminServicer] = []

    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        servicers.append(add_admin_service(server, runtime))

    settings = Settings(
        environment="staging",
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": postgres_dsn},
        redis={"url": REDIS_URL},
        security={
            "anonymous_role": "none",
            "jwt": issuer.jwt_settings(),
            "feature_flags_channel": channel,
        },
    )
    unit = ServiceUnit("admin", (ADMIN_SERVICE,), register, needs_database=True)
    host = ServiceHost(settings, [unit])
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as grpc_channel:
            stub = admin_service_pb2_grpc.AdminServiceStub(grpc_channel)
            yield Admin(host, stub, servicers[0], issuer, postgres_dsn, channel)
    finally:
        await host.stop()
        redis = Redis.from_url(REDIS_URL)
        await redis.delete(f"{channel}:state")  # what the updates left for other services
        await redis.aclose()


@pytest.fixture
async def other_database(admin: Admin) -> AsyncIterator[Database]:
    """Another service's connection to the same database."""
    database = await Database.open(DatabaseSettings(dsn=admin.dsn), application_name="other")
    try:
        yield database
    finally:
        await database.close()


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(moment)
    return result


async def refused(call: Any) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return (caught.value.code(), *rpc_error_details(caught.value))


# --- API keys ---------------------------------------------------------------------------


async def test_a_key_is_created_its_secret_shown_once_and_it_authenticates(admin: Admin) -> None:
    expire = datetime.now(UTC) + timedelta(days=1)
    created = await admin.create(
        api_key_pb2.ROLE_VIEWER, "dash", display_name="city dashboard",
        allowed_cameras=["cameras/a", "cameras/b", "cameras/a"], expire_time=stamp(expire),
    )  # fmt: skip
    key, secret = created.api_key, created.secret
    assert secret.startswith("itsk_")
    assert len(secret) >= 40
    assert len(key.key_prefix) == 12
    assert secret.startswith(key.key_prefix)
    assert (key.name, key.creator) == ("apiKeys/dash", ALICE)
    assert list(key.allowed_cameras) == ["cameras/a", "cameras/b"]
    assert key.expire_time.ToDatetime(tzinfo=UTC) == expire
    assert key.HasField("create_time")
    assert not key.HasField("last_use_time")

    listing = await admin.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=admin.auth)
    assert [k.name for k in listing.api_keys] == ["apiKeys/dash"]
    assert secret not in str(listing)
    assert secret.encode() not in listing.SerializeToString()
    stored = await admin.pool.fetch("SELECT * FROM api_keys")
    assert secret not in repr([dict(row) for row in stored])

    assigned = await admin.create(api_key_pb2.ROLE_ADMIN)
    assert assigned.api_key.name.startswith("apiKeys/key-")
    assert assigned.secret != secret
    code, reason, _ = await refused(admin.create(api_key_pb2.ROLE_VIEWER, "dash"))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")

    # Through the interceptor: the admin key may list keys, the viewer key may not.
    as_admin = (("x-api-key", assigned.secret),)
    assert (
        len((await admin.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_admin)).api_keys)
        == 2
    )
    code, _, _ = await refused(
        admin.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=(("x-api-key", secret),))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


def _create(**key: Any) -> pb.CreateApiKeyRequest:
    return pb.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(**key))


_PAST = stamp(datetime.now(UTC) - timedelta(seconds=1))
_VIEWER = api_key_pb2.ROLE_VIEWER
_MASK = field_mask_pb2.FieldMask
_FLAG = feature_flag_pb2.FeatureFlag(name="featureFlags/query-cache")
BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("CreateApiKey", pb.CreateApiKeyRequest(), "api_key"),
    ("CreateApiKey", _create(), "api_key.role"),
    ("CreateApiKey", _create(role=99), "api_key.role"),
    ("CreateApiKey", _create(role=api_key_pb2.ROLE_ADMIN, allowed_cameras=["cameras/a"]),
     "api_key.allowed_cameras"),
    ("CreateApiKey", _create(role=_VIEWER, allowed_cameras=["a"]), "api_key.allowed_cameras"),
    ("CreateApiKey", _create(role=_VIEWER, expire_time=_PAST), "api_key.expire_time"),
    ("CreateApiKey", _create(role=_VIEWER, display_name="x" * 129), "api_key.display_name"),
    ("CreateApiKey", pb.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(role=_VIEWER),
                                            api_key_id="Bad_Id"), "api_key_id"),
    ("ListApiKeys", pb.ListApiKeysRequest(page_size=-1), "page_size"),
    ("ListApiKeys", pb.ListApiKeysRequest(filter="secret_hash = 1"), "filter"),
    ("ListApiKeys", pb.ListApiKeysRequest(filter="role = ROLE_BOSS"), "filter"),
    ("ListApiKeys", pb.ListApiKeysRequest(page_token="garbage"), "page_token"),
    ("DeleteApiKey", pb.DeleteApiKeyRequest(name="keys/x"), "name"),
    ("GetFeatureFlag", pb.GetFeatureFlagRequest(name="flags/query-cache"), "name"),
    ("ListFeatureFlags", pb.ListFeatureFlagsRequest(page_token="garbage"), "page_token"),
    ("UpdateFeatureFlag", pb.UpdateFeatureFlagRequest(update_mask=_MASK(paths=["enabled"])),
     "feature_flag"),
    ("UpdateFeatureFlag", pb.UpdateFeatureFlagRequest(feature_flag=_FLAG), "update_mask"),
    ("UpdateFeatureFlag", pb.UpdateFeatureFlagRequest(
        feature_flag=_FLAG, update_mask=_MASK(paths=["enabled", "description"])), "update_mask"),
    ("UpdateFeatureFlag", pb.UpdateFeatureFlagRequest(
        feature_flag=feature_flag_pb2.FeatureFlag(name="featureFlags/Big"),
        update_mask=_MASK(paths=["enabled"])), "feature_flag.name"),
    ("ListAuditLogEntries", pb.ListAuditLogEntriesRequest(order_by="actor"), "order_by"),
    ("ListAuditLogEntries", pb.ListAuditLogEntriesRequest(filter="details = 1"), "filter"),
    ("ListAuditLogEntries", pb.ListAuditLogEntriesRequest(page_size=-5), "page_size"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "field"), BAD_REQUESTS)
async def test_bad_requests_name_the_field(
    admin: Admin, method: str, request_: Any, field: str
) -> None:
    code, _, fields = await refused(getattr(admin.stub, method)(request_, metadata=admin.auth))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_keys_are_listed_newest_first_filtered_and_paged(admin: Admin) -> None:
    soon = stamp(datetime(2030, 1, 1, tzinfo=UTC))
    later = stamp(datetime(2040, 1, 1, tzinfo=UTC))
    specs: list[tuple[str, int, dict[str, Any]]] = [
        ("k1", api_key_pb2.ROLE_VIEWER, {"display_name": "city dashboard", "expire_time": soon}),
        ("k2", api_key_pb2.ROLE_OPERATOR, {}),
        ("k3", api_key_pb2.ROLE_ADMIN, {"display_name": "ops dashboard"}),
        ("k4", api_key_pb2.ROLE_SERVICE, {"expire_time": later}),
        ("k5", api_key_pb2.ROLE_VIEWER, {"allowed_cameras": ["cameras/c"]}),
        ("k6", api_key_pb2.ROLE_ADMIN, {"expire_time": soon}),
    ]
    for key_id, role, fields in specs:
        await admin.create(role, key_id, **fields)
    newest_first = [
        "apiKeys/k6",
        "apiKeys/k5",
        "apiKeys/k4",
        "apiKeys/k3",
        "apiKeys/k2",
        "apiKeys/k1",
    ]
    assert [k.name for k in await admin.list_keys()] == newest_first
    for size in (1, 2, 4):
        assert [k.name for k in await admin.list_keys(page_size=size)] == newest_first

    cases = {
        "role = ROLE_ADMIN": ["k6", "k3"],
        "role = ROLE_SERVICE OR role = ROLE_OPERATOR": ["k4", "k2"],
        'display_name:"dashboard"': ["k3", "k1"],
        "expire_time:*": ["k6", "k4", "k1"],
        'role = ROLE_ADMIN AND expire_time < "2031-01-01T00:00:00Z"': ["k6"],
        f'creator = "{ALICE}" AND NOT expire_time:*': ["k5", "k3", "k2"],
        'create_time > "2020-01-01T00:00:00Z"': ["k6", "k5", "k4", "k3", "k2", "k1"],
        "last_use_time:*": [],
    }
    for text, ids in cases.items():
        for size in (1, 1000):
            listed = await admin.list_keys(page_size=size, filter=text)
            assert [k.name for k in listed] == [f"apiKeys/{i}" for i in ids], text

    first = await admin.stub.ListApiKeys(
        pb.ListApiKeysRequest(page_size=1, filter="role = ROLE_ADMIN"), metadata=admin.auth
    )
    other = pb.ListApiKeysRequest(page_token=first.next_page_token, filter="role = ROLE_VIEWER")
    code, reason, named = await refused(admin.stub.ListApiKeys(other, metadata=admin.auth))
    assert (code, reason, named) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        ["page_token"],
    )


async def test_a_deleted_key_is_gone_and_allow_missing_forgives(admin: Admin) -> None:
    created = await admin.create(key_id="gone")
    assert await admin.servicer.api_keys.verify(created.secret)
    await admin.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/gone"), metadata=admin.auth)
    assert await admin.list_keys() == []
    with pytest.raises(UnauthenticatedError):  # this service: at once, cache or not
        await admin.servicer.api_keys.verify(created.secret)
    code, reason, _ = await refused(
        admin.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/gone"), metadata=admin.auth)
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    request = pb.DeleteApiKeyRequest(name="apiKeys/gone", allow_missing=True)
    await admin.stub.DeleteApiKey(request, metadata=admin.auth)


async def test_verify_accepts_the_secret_and_refuses_wrong_expired_and_deleted_ones(
    admin: Admin, other_database: Database
) -> None:
    created = await admin.create(api_key_pb2.ROLE_OPERATOR, "ops", allowed_cameras=["cameras/a"])
    other = ApiKeyStore(other_database, cache_seconds=1.0)  # another service
    principal = await other.verify(created.secret)
    assert (principal.actor, principal.role, principal.cameras) == (
        "apiKey:apiKeys/ops", Role.OPERATOR, frozenset({"a"}),
    )  # fmt: skip

    wrong = created.secret[:-4] + ("AAAA" if not created.secret.endswith("AAAA") else "BBBB")
    for bad in (wrong, "itsk_short", "not-a-key", created.secret + "x", ""):
        with pytest.raises(UnauthenticatedError) as caught:
            await other.verify(bad)
        assert caught.value.reason == error_reason_pb2.ERROR_REASON_UNAUTHENTICATED
        assert created.secret not in caught.value.message
        assert not bad or bad not in caught.value.message

    await admin.pool.execute("UPDATE api_keys SET expire_time = now() - interval '1 second'")
    with pytest.raises(UnauthenticatedError) as caught:
        await ApiKeyStore(other_database).verify(created.secret)
    assert caught.value.reason == error_reason_pb2.ERROR_REASON_CREDENTIALS_EXPIRED
    assert "apiKeys/ops" in caught.value.message
    assert created.secret not in caught.value.message


async def test_a_deleted_key_is_refused_by_other_services_within_the_cache_time(
    admin: Admin, other_database: Database
) -> None:
    created = await admin.create(key_id="revoked")
    other = ApiKeyStore(other_database, cache_seconds=1.0)
    await other.verify(created.secret)  # now cached there
    await asyncio.sleep(0.1)
    await admin.stub.DeleteApiKey(
        pb.DeleteApiKeyRequest(name="apiKeys/revoked"), metadata=admin.auth
    )
    deleted = last_accepted = time.monotonic()
    while True:
        began = time.monotonic()
        try:
            await other.verify(created.secret)
        except UnauthenticatedError:
            break
        last_accepted = began
        assert began - deleted < 5.0, "a deleted key is still accepted"
        await asyncio.sleep(0.005)
    # Measured at the start of each call, so that a loaded machine's slow calls do not count.
    assert last_accepted - deleted <= 1.0


async def test_last_use_is_recorded_in_the_background_once_a_minute(
    admin: Admin, other_database: Database
) -> None:
    created = await admin.create(key_id="used")
    now = [1000.0]
    store = ApiKeyStore(other_database, cache_seconds=0.0, clock=lambda: now[0])

    async def last_use() -> datetime | None:
        value: datetime | None = await admin.pool.fetchval("SELECT last_use_time FROM api_keys")
        return value

    await store.verify(created.secret)
    await store.close()  # the write under way
    first = await last_use()
    assert first is not None
    listed = await admin.list_keys(filter="last_use_time:*")
    assert [k.name for k in listed] == ["apiKeys/used"]

    now[0] += 59.0
    await store.verify(created.secret)
    await store.close()
    assert await last_use() == first  # within the minute: not written again
    now[0] += 2.0
    await store.verify(created.secret)
    await store.close()
    second = await last_use()
    assert second is not None
    assert second > first


# --- feature flags ----------------------------------------------------------------------


async def test_flags_are_listed_read_and_switched_with_etags(admin: Admin) -> None:
    names = sorted(FEATURE_FLAGS)
    listed = await admin.stub.ListFeatureFlags(pb.ListFeatureFlagsRequest(), metadata=admin.auth)
    assert [f.name for f in listed.feature_flags] == [f"featureFlags/{n}" for n in names]
    for flag in listed.feature_flags:
        definition = FEATURE_FLAGS[flag.name.removeprefix("featureFlags/")]
        assert flag.description == definition.description
        assert flag.enabled is flag.default_enabled is definition.default is True
        assert not flag.HasField("update_time")
        assert flag.updater == ""
        assert flag.etag
    first = await admin.stub.ListFeatureFlags(
        pb.ListFeatureFlagsRequest(page_size=1), metadata=admin.auth
    )
    rest = await admin.stub.ListFeatureFlags(
        pb.ListFeatureFlagsRequest(page_size=1, page_token=first.next_page_token),
        metadata=admin.auth,
    )
    assert [f.name for f in [*first.feature_flags, *rest.feature_flags]] == [
        f.name for f in listed.feature_flags
    ]
    assert rest.next_page_token == ""

    name = "featureFlags/query-cache"
    got = (
        await admin.stub.GetFeatureFlag(pb.GetFeatureFlagRequest(name=name), metadata=admin.auth)
    ).feature_flag
    assert got == listed.feature_flags[names.index("query-cache")]
    switch = feature_flag_pb2.FeatureFlag(name=name, enabled=False, etag=got.etag)
    updated = (
        await admin.stub.UpdateFeatureFlag(
            pb.UpdateFeatureFlagRequest(feature_flag=switch, update_mask=_MASK(paths=["enabled"])),
            metadata=admin.auth,
        )
    ).feature_flag
    assert (updated.enabled, updated.default_enabled, updated.updater) == (False, True, ALICE)
    assert updated.HasField("update_time")
    assert updated.etag != got.etag
    assert not admin.servicer.flags.enabled("query-cache")  # this service: at once

    code, reason, _ = await refused(  # the old etag is stale now
        admin.stub.UpdateFeatureFlag(
            pb.UpdateFeatureFlagRequest(feature_flag=switch, update_mask=_MASK(paths=["*"])),
            metadata=admin.auth,
        )
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    back = feature_flag_pb2.FeatureFlag(name=name, enabled=True)  # no etag: unconditional
    request = pb.UpdateFeatureFlagRequest(feature_flag=back, update_mask=_MASK(paths=["*"]))
    final = (await admin.stub.UpdateFeatureFlag(request, metadata=admin.auth)).feature_flag
    assert final.enabled
    assert final.etag not in (got.etag, updated.etag)
    code, reason, _ = await refused(
        admin.stub.GetFeatureFlag(
            pb.GetFeatureFlagRequest(name="featureFlags/nope"), metadata=admin.auth
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    with pytest.raises(KeyError):
        admin.servicer.flags.enabled("nope")


async def _switch(admin: Admin, enabled: bool) -> None:
    flag = feature_flag_pb2.FeatureFlag(name="featureFlags/on-demand-detect", enabled=enabled)
    request = pb.UpdateFeatureFlagRequest(feature_flag=flag, update_mask=_MASK(paths=["enabled"]))
    await admin.stub.UpdateFeatureFlag(request, metadata=admin.auth)


async def _seen_within(flags: FeatureFlags, enabled: bool) -> float:
    began = time.monotonic()
    await until(lambda: flags.enabled("on-demand-detect") is enabled, "the switch", within=5.0)
    return time.monotonic() - began


async def test_other_services_follow_a_switch_through_redis_and_the_poll(
    admin: Admin, other_database: Database
) -> None:
    redis = Redis.from_url(REDIS_URL)
    by_redis = FeatureFlags(other_database, redis, channel=admin.channel, poll_seconds=60.0)
    by_poll = FeatureFlags(other_database, None, poll_seconds=0.2)
    redis_only = FeatureFlags(None, redis, channel=admin.channel)
    followers = [by_redis, by_poll, redis_only]
    try:
        for flags in followers:
            await flags.start()
        await asyncio.sleep(0.2)  # subscribed
        for enabled in (False, True, False):
            await _switch(admin, enabled)
            assert await _seen_within(by_redis, enabled) <= 1.0
            assert await _seen_within(redis_only, enabled) <= 1.0
            assert await _seen_within(by_poll, enabled) <= 0.2 + 0.5
        # A service without a database started after the switch learns it from Redis too.
        late = FeatureFlags(None, redis, channel=admin.channel)
        followers.append(late)
        await late.start()
        assert await _seen_within(late, False) <= 1.0
        assert late.enabled("query-cache")  # never switched: the default
    finally:
        for flags in followers:
            await flags.close()
        await redis.aclose()


async def test_a_switch_with_redis_down_is_stored_and_polled(
    admin: Admin, other_database: Database
) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    writer = FeatureFlags(other_database, dead, channel=admin.channel, poll_seconds=60.0)
    observer = FeatureFlags(other_database, None, poll_seconds=0.2)
    await writer.start()
    await observer.start()
    try:
        await asyncio.sleep(0.1)  # the writer's subscription fails in the background, quietly
        updated = await writer.update("on-demand-detect", False, "", "user:bob")
        assert (updated.enabled, updated.updater) == (False, "user:bob")
        assert not writer.enabled("on-demand-detect")
        assert await _seen_within(observer, False) <= 0.2 + 0.5
    finally:
        await writer.close()
        await observer.close()
        await dead.aclose()


# --- audit log --------------------------------------------------------------------------

T0 = datetime(2020, 3, 1, tzinfo=UTC)
# (seconds after T0, service, actor, action, resource, outcome, client, trace); equal
# times on purpose: ties are broken by id in the order's direction.
_ADMIN_API = "its.admin.v1.AdminService/"
_CAMERA_API = "its.camera.v1.CameraService/"
ROWS = [
    (0, "query", "user:alice", f"{_ADMIN_API}CreateApiKey", "apiKeys/k1", "success",
     "10.0.0.1:5", "a" * 32),
    (5, "decoder", "anonymous", f"{_CAMERA_API}ListCameras", "", "denied", "10.0.0.2:6", ""),
    (5, "decoder", "user:bob", f"{_CAMERA_API}DeleteCamera", "cameras/x", "failure",
     "[::1]:7", ""),
    (5, "inference", "apiKey:apiKeys/k1", "its.inference.v1.InferenceService/Detect",
     "cameras/x", "success", "", "b" * 32),
    (9, "query", "user:alice", f"{_ADMIN_API}UpdateFeatureFlag", "featureFlags/query-cache",
     "success", "10.0.0.1:5", ""),
    (12, "analytics", "service:inference",
     "its.analytics.v1.AnalyticsService/StreamDetectionBatches", "", "denied", "10.0.0.3:8", ""),
]  # fmt: skip
IN_2020 = 'time < "2021-01-01T00:00:00Z"'


async def _insert_rows(pool: asyncpg.Pool[Any]) -> list[str]:
    names = []
    for seconds, service, actor, action, resource, outcome, client, trace in ROWS:
        entry_id = await pool.fetchval(
            "INSERT INTO audit_log (event_time, service, actor, action, resource, outcome,"
            " client_address, trace_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " RETURNING id",
            T0 + timedelta(seconds=seconds), service, actor, action, resource, outcome, client,
            trace, json.dumps({"n": seconds, "status": outcome.upper()}),
        )  # fmt: skip
        names.append(f"auditLogEntries/{entry_id}")
    return names


async def _entries(
    admin: Admin, page_size: int = 1000, **fields: Any
) -> list[audit_log_pb2.AuditLogEntry]:
    entries: list[audit_log_pb2.AuditLogEntry] = []
    token = ""
    while True:
        request = pb.ListAuditLogEntriesRequest(page_size=page_size, page_token=token, **fields)
        reply = await admin.stub.ListAuditLogEntries(request, metadata=admin.auth)
        entries += reply.audit_log_entries
        if not (token := reply.next_page_token):
            return entries


async def test_audit_entries_are_filtered_ordered_and_paged(admin: Admin) -> None:
    names = await _insert_rows(admin.pool)
    by_time = sorted(range(len(ROWS)), key=lambda i: (ROWS[i][0], i))
    newest = [names[i] for i in reversed(by_time)]
    for size in (1, 2, 1000):
        assert [e.name for e in await _entries(admin, size, filter=IN_2020)] == newest
        ascending = await _entries(admin, size, filter=IN_2020, order_by="time")
        assert [e.name for e in ascending] == [names[i] for i in by_time]
    assert [
        e.name for e in await _entries(admin, 2, filter=IN_2020, order_by="time desc")
    ] == newest

    first = (await _entries(admin, filter=f'{IN_2020} AND trace_id != ""', order_by="time"))[0]
    assert first.name == names[0]
    assert first.time.ToDatetime(tzinfo=UTC) == T0
    assert (first.service, first.actor, first.resource, first.client_address, first.trace_id) == (
        "query", "user:alice", "apiKeys/k1", "10.0.0.1:5", "a" * 32,
    )  # fmt: skip
    assert first.outcome == audit_log_pb2.AUDIT_OUTCOME_SUCCESS
    assert dict(first.details) == {"n": 0, "status": "SUCCESS"}
    cases: dict[str, Callable[[tuple[Any, ...]], bool]] = {
        "outcome = AUDIT_OUTCOME_DENIED": lambda r: r[5] == "denied",
        "outcome != AUDIT_OUTCOME_SUCCESS": lambda r: r[5] != "success",
        'service = "decoder"': lambda r: r[1] == "decoder",
        'actor = "user:alice" OR actor:"apiKey:"': lambda r: (
            r[2] == "user:alice" or "apiKey:" in r[2]
        ),
        'action:"AdminService/"': lambda r: "AdminService/" in r[3],
        'resource = "cameras/x"': lambda r: r[4] == "cameras/x",
        'client_address:"10.0.0.1"': lambda r: "10.0.0.1" in r[6],
        'trace_id != ""': lambda r: r[7] != "",
        'time >= "2020-03-01T00:00:05Z" AND time < "2020-03-01T00:00:10Z"': lambda r: (
            5 <= r[0] < 10
        ),
    }
    for text, test in cases.items():
        expected = [names[i] for i in reversed(by_time) if test(ROWS[i])]
        for size in (1, 1000):
            got = await _entries(admin, size, filter=f"{IN_2020} AND ({text})")
            assert [e.name for e in got] == expected, text

    page = await admin.stub.ListAuditLogEntries(
        pb.ListAuditLogEntriesRequest(page_size=2, filter=IN_2020), metadata=admin.auth
    )
    for filter_text, order_by in ((f'{IN_2020} AND service:"q"', ""), (IN_2020, "time")):
        request = pb.ListAuditLogEntriesRequest(
            page_token=page.next_page_token, filter=filter_text, order_by=order_by
        )
        code, reason, _ = await refused(
            admin.stub.ListAuditLogEntries(request, metadata=admin.auth)
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_admin_calls_are_audited_without_the_secret(admin: Admin) -> None:
    created = await admin.create(api_key_pb2.ROLE_SERVICE, "peer")
    await _switch(admin, False)
    await admin.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/peer"), metadata=admin.auth)
    wanted = {"CreateApiKey": "apiKeys/peer", "UpdateFeatureFlag": "featureFlags/on-demand-detect",
              "DeleteApiKey": "apiKeys/peer"}  # fmt: skip
    found: dict[str, Any] = {}

    async def look() -> None:
        for entry in await _entries(admin, filter='action:"AdminService/"'):
            found[entry.action.rpartition("/")[2]] = entry

    async def all_found() -> bool:
        await look()
        return set(wanted) <= set(found)

    deadline = time.monotonic() + 5.0
    while not await all_found():
        assert time.monotonic() < deadline, f"audit entries missing: {set(wanted) - set(found)}"
        await asyncio.sleep(0.05)
    for method, resource in wanted.items():
        assert (found[method].resource, found[method].actor) == (resource, ALICE)
    assert dict(found["CreateApiKey"].details)["role"] == "ROLE_SERVICE"
    assert dict(found["UpdateFeatureFlag"].details)["update_mask"] == "enabled"
    rows = await admin.pool.fetch("SELECT * FROM audit_log")
    assert created.secret not in repr([dict(r) for r in rows])
