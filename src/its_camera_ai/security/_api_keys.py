"""API keys: long-lived credentials of machine clients, in the ``api_keys`` table.

A secret is ``itsk_`` plus 32 random bytes (base64url), shown once at creation and stored
only as its SHA-256; its first 12 characters (``key_prefix``) find the candidate rows,
the hash is compared in constant time. Deleting a key deletes its row.

Every service with a database verifies keys itself. A verified secret is remembered
(keyed by its hash, never the secret) for at most ``cache_seconds``, so a key deleted on
one service is refused by every service within that time. A successful use is written to
``last_use_time`` at most once a minute per key, by a background task: the call never
waits for it, and a failed write is only logged.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from its.admin.v1 import api_key_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.common import (
    POSTGRES_DOWN,
    AlreadyExistsError,
    Database,
    FieldKind,
    InvalidArgumentError,
    ListField,
    ListingSpec,
    NotFoundError,
    UnauthenticatedError,
    camera_id_from_name,
    is_resource_id,
    page_token_after,
)
from its_camera_ai.security._principal import Principal, Role

__all__ = ["SECRET_PREFIX", "ApiKeyStore", "api_key_name"]

_log = logging.getLogger(__name__)

# What every secret begins with (a marker for secret scanners, not a secret).
SECRET_PREFIX = "itsk_"  # noqa: S105
_KEY_PREFIX_LENGTH = 12
# Anything longer is no secret this store issued: refused before hashing or querying.
_MAX_SECRET_LENGTH = 256
_MAX_DISPLAY_NAME = 128
_MAX_ALLOWED_CAMERAS = 1000
_LAST_USE_EVERY_SECONDS = 60.0
# Verified secrets remembered at once; beyond it the oldest are forgotten (looked up again).
_MAX_CACHED = 10_000
_NAMES = "apiKeys/"
# What may stop a last-use write: the database down, or the statement failing.
_WRITE_FAILURES: tuple[type[BaseException], ...] = (*POSTGRES_DOWN, asyncpg.PostgresError)

_COLUMNS = (
    "id, display_name, role, allowed_cameras, expire_time, key_prefix, create_time,"
    " creator, last_use_time"
)
_CREATE_TIME = ListField("create_time", FieldKind.TIMESTAMP)
# ListApiKeysRequest's filter fields (admin_service.proto); newest first, ties by id.
_KEYS = ListingSpec(
    filters={
        "display_name": ListField("display_name", FieldKind.TEXT),
        "role": ListField("role", FieldKind.ENUM, names=dict(api_key_pb2.Role.items())),
        "creator": ListField("creator", FieldKind.TEXT),
        "create_time": _CREATE_TIME,
        "expire_time": ListField("expire_time", FieldKind.TIMESTAMP, nullable=True),
        "last_use_time": ListField("last_use_time", FieldKind.TIMESTAMP, nullable=True),
    },
    orders={"create_time": _CREATE_TIME},
    default_order="create_time desc",
    tie_breakers=("id",),
)


def api_key_name(key_id: str) -> str:
    return f"{_NAMES}{key_id}"


def _secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _from_row(row: asyncpg.Record) -> api_key_pb2.ApiKey:
    key = api_key_pb2.ApiKey(
        name=api_key_name(row["id"]),
        display_name=row["display_name"],
        role=row["role"],
        allowed_cameras=row["allowed_cameras"],
        key_prefix=row["key_prefix"],
        creator=row["creator"],
    )
    key.create_time.FromDatetime(row["create_time"])
    if row["expire_time"] is not None:
        key.expire_time.FromDatetime(row["expire_time"])
    if row["last_use_time"] is not None:
        key.last_use_time.FromDatetime(row["last_use_time"])
    return key


def _refused() -> UnauthenticatedError:
    # The same words for a malformed, unknown or deleted key: nothing to probe with.
    return UnauthenticatedError("the API key is not valid")


def _check_role(role: int) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(f"ROLE_{r.name}" for r in Role)
        raise InvalidArgumentError.for_field("api_key.role", f"is required: {allowed}") from None


def _check_cameras(cameras: Sequence[str], role: Role) -> builtins.list[str]:
    field = "api_key.allowed_cameras"
    if cameras and role is Role.ADMIN:
        raise InvalidArgumentError.for_field(field, "must be empty for ROLE_ADMIN")
    if len(cameras) > _MAX_ALLOWED_CAMERAS:
        raise InvalidArgumentError.for_field(field, f"at most {_MAX_ALLOWED_CAMERAS} cameras")
    names: dict[str, None] = {}
    for index, name in enumerate(cameras):
        if camera_id_from_name(name) is None:
            raise InvalidArgumentError.for_field(
                field, f'entry {index}: must be "cameras/{{camera}}"'
            )
        names[name] = None  # duplicates say nothing more: kept once, in order
    return builtins.list(names)


def _check_new_key(
    key_id: str,
    role: int,
    display_name: str,
    allowed_cameras: Sequence[str],
    expire_time: datetime | None,
) -> tuple[str, Role, builtins.list[str]]:
    """The request's key, checked: (id, role, camera names), or INVALID_ARGUMENT."""
    if key_id and not is_resource_id(key_id):
        raise InvalidArgumentError.for_field(
            "api_key_id",
            "1-63 lower-case letters, digits and hyphens, a letter first, no hyphen last",
        )
    checked_role = _check_role(role)
    if len(display_name) > _MAX_DISPLAY_NAME:
        raise InvalidArgumentError.for_field(
            "api_key.display_name", f"at most {_MAX_DISPLAY_NAME} characters"
        )
    cameras = _check_cameras(allowed_cameras, checked_role)
    if expire_time is not None:
        if expire_time.tzinfo is None:
            raise ValueError("expire_time must be timezone-aware")
        if expire_time <= datetime.now(UTC):
            raise InvalidArgumentError.for_field("api_key.expire_time", "must be in the future")
    return key_id or f"key-{secrets.token_hex(6)}", checked_role, cameras


@dataclass(frozen=True, slots=True)
class _Verified:
    key_id: str
    principal: Principal
    expire_time: datetime | None
    cached_at: float


class ApiKeyStore:
    """Creates, lists, deletes and verifies API keys (see the module docstring).

    ``cache_seconds``: how long a verified secret is trusted without looking it up again
    (a deleted key is refused everywhere within it). ``clock``: monotonic seconds, for the
    cache and the last-use throttle.
    """

    def __init__(
        self,
        database: Database,
        *,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_seconds < 0:
            raise ValueError("cache_seconds must not be negative")
        self._pool = database.pool
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._verified: dict[bytes, _Verified] = {}
        self._last_use_noted: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def create(
        self,
        *,
        key_id: str,
        role: int,
        creator: str,
        display_name: str = "",
        allowed_cameras: Sequence[str] = (),
        expire_time: datetime | None = None,
    ) -> tuple[api_key_pb2.ApiKey, str]:
        """Store a new key: (the key as stored, its plaintext secret). ``key_id`` empty:
        one is assigned. ``role`` is an ``its.admin.v1.Role`` number. INVALID_ARGUMENT
        names the request field (``api_key_id``, ``api_key.role``, ...); ALREADY_EXISTS."""
        key_id, checked_role, cameras = _check_new_key(
            key_id, role, display_name, allowed_cameras, expire_time
        )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO api_keys (id, display_name, role, allowed_cameras, expire_time,"  # noqa: S608
                " key_prefix, secret_hash, creator) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                f" RETURNING {_COLUMNS}",
                key_id,
                display_name,
                int(checked_role),
                cameras,
                expire_time,
                secret[:_KEY_PREFIX_LENGTH],
                _secret_hash(secret),
                creator,
            )
        except asyncpg.UniqueViolationError:
            name = api_key_name(key_id)
            raise AlreadyExistsError(
                f"{name} already exists", metadata={"resource": name}
            ) from None
        assert row is not None
        return _from_row(row), secret

    async def list(
        self, *, filter: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[api_key_pb2.ApiKey], str]:
        """One page of keys, newest first, and the next page's token ('' on the last).
        INVALID_ARGUMENT names ``filter``, ``page_size`` or ``page_token``."""
        query = _KEYS.compile(filter, "", page_size, page_token)
        # The clauses are compiled by ListingSpec from a fixed vocabulary; every value the
        # client sent travels as a parameter.
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE {query.where}"  # noqa: S608
            f" ORDER BY {query.order_by} LIMIT {query.limit + 1}",
            *query.params,
        )
        page = rows[: query.limit]
        token = page_token_after(query, dict(page[-1])) if len(rows) > query.limit else ""
        return [_from_row(row) for row in page], token

    async def delete(self, key_id: str, *, allow_missing: bool = False) -> bool:
        """Delete (revoke) a key; False when it did not exist and ``allow_missing`` forgave
        that, else NOT_FOUND. This process refuses it at once, others within the cache."""
        deleted = await self._pool.fetchval(
            "DELETE FROM api_keys WHERE id = $1 RETURNING id", key_id
        )
        self._forget(key_id)
        if deleted is None:
            if allow_missing:
                return False
            name = api_key_name(key_id)
            raise NotFoundError(f"{name} not found", metadata={"resource": name})
        return True

    async def verify(self, secret: str) -> Principal:
        """The principal of the key whose secret this is, or UNAUTHENTICATED (reason
        CREDENTIALS_EXPIRED once it expired). The message never holds the secret."""
        if not secret.startswith(SECRET_PREFIX) or not (
            _KEY_PREFIX_LENGTH < len(secret) <= _MAX_SECRET_LENGTH
        ):
            raise _refused()
        digest = _secret_hash(secret)
        now = self._clock()
        verified = self._verified.get(digest)
        if verified is None or now - verified.cached_at >= self._cache_seconds:
            verified = await self._look_up(secret[:_KEY_PREFIX_LENGTH], digest, now)
        if verified.expire_time is not None and verified.expire_time <= datetime.now(UTC):
            raise UnauthenticatedError(
                f"{api_key_name(verified.key_id)} expired at {verified.expire_time.isoformat()}",
                reason=error_reason_pb2.ERROR_REASON_CREDENTIALS_EXPIRED,
            )
        self._note_use(verified.key_id, now)
        return verified.principal

    async def close(self) -> None:
        """Wait for the last-use writes under way (call on shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _look_up(self, key_prefix: str, digest: bytes, now: float) -> _Verified:
        rows = await self._pool.fetch(
            "SELECT id, role, allowed_cameras, expire_time, secret_hash"
            " FROM api_keys WHERE key_prefix = $1",
            key_prefix,
        )
        match = None
        for row in rows:
            # Every candidate compared, each in constant time.
            if hmac.compare_digest(bytes(row["secret_hash"]), digest) and match is None:
                match = row
        if match is None:
            self._verified.pop(digest, None)
            raise _refused()
        key_id = match["id"]
        principal = Principal.scoped(
            f"apiKey:{api_key_name(key_id)}", Role(match["role"]), match["allowed_cameras"]
        )
        verified = _Verified(key_id, principal, match["expire_time"], now)
        self._remember(digest, verified)
        return verified

    def _remember(self, digest: bytes, verified: _Verified) -> None:
        self._verified.pop(digest, None)
        if len(self._verified) >= _MAX_CACHED:
            cutoff = verified.cached_at - self._cache_seconds
            for old in [d for d, v in self._verified.items() if v.cached_at <= cutoff]:
                del self._verified[old]
            while len(self._verified) >= _MAX_CACHED:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = verified

    def _forget(self, key_id: str) -> None:
        for digest in [d for d, v in self._verified.items() if v.key_id == key_id]:
            del self._verified[digest]
        self._last_use_noted.pop(key_id, None)

    def _note_use(self, key_id: str, now: float) -> None:
        noted = self._last_use_noted.get(key_id)
        if noted is not None and now - noted < _LAST_USE_EVERY_SECONDS:
            return
        self._last_use_noted[key_id] = now
        if len(self._last_use_noted) > _MAX_CACHED:
            self._last_use_noted = {
                k: t for k, t in self._last_use_noted.items() if now - t < _LAST_USE_EVERY_SECONDS
            }
        task = asyncio.create_task(self._write_last_use(key_id), name="api-key-last-use")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_last_use(self, key_id: str) -> None:
        try:
            await self._pool.execute(
                "UPDATE api_keys SET last_use_time = greatest(last_use_time, now()) WHERE id = $1",
                key_id,
            )
        except _WRITE_FAILURES as exc:
            # The use itself succeeded; the next use a minute on writes the time again.
            _log.warning(
                "cannot record an API key's last use",
                extra={"api_key": api_key_name(key_id), "error": f"{type(exc).__name__}: {exc}"},
            )
