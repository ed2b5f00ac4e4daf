"""Cameras in PostgreSQL (asyncpg): the ``decoder_cameras`` table of migration 0001.

The store speaks ``its.camera.v1.Camera`` messages as responses show them (source masked,
name, times and etag filled in) plus the sealed source beside them; it never sees a plain
source URI. Conditional writes (etags) are checked under a row lock, so two concurrent
updates cannot both win.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from google.protobuf import json_format

from its.camera.v1 import camera_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.common import (
    AbortedError,
    AlreadyExistsError,
    ListQuery,
    NotFoundError,
    ResourceExhaustedError,
    page_token_after,
)
from its_camera_ai.decoder._crypto import KeyRing, Sealed, SealedUnreadable

__all__ = [
    "CameraStore",
    "StoredCamera",
    "camera_name",
    "camera_not_found",
]

_log = logging.getLogger(__name__)

_COLUMNS = (
    "camera_id, display_name, source_masked, source_key_id, source_sealed, enabled, loop,"
    " target_fps, width, height, scene::text AS scene, etag, create_time, update_time"
)
_LOCK_ROW = f"SELECT {_COLUMNS} FROM decoder_cameras WHERE camera_id = $1 FOR UPDATE"  # noqa: S608
# Statements built from the constants above only (hence the noqa: S608).
_INSERT = (
    "INSERT INTO decoder_cameras (camera_id, display_name, source_masked, source_key_id,"  # noqa: S608
    " source_sealed, enabled, loop, target_fps, width, height, scene, etag)"
    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12) RETURNING {_COLUMNS}"
)
_UPDATE = (
    "UPDATE decoder_cameras SET display_name = $2, source_masked = $3, source_key_id = $4,"  # noqa: S608
    " source_sealed = $5, enabled = $6, loop = $7, target_fps = $8, width = $9, height = $10,"
    " scene = $11::jsonb, etag = $12,"
    # Strictly later than before even within one clock tick: update_time orders changes.
    " update_time = greatest(now(), update_time + interval '1 microsecond')"
    f" WHERE camera_id = $1 RETURNING {_COLUMNS}"
)
# The scene fields of Camera, stored together as JSON.
_SCENE_FIELDS = ("lines", "zones", "lanes", "calibration")


def camera_name(camera_id: str) -> str:
    return f"cameras/{camera_id}"


@dataclass(frozen=True, slots=True)
class StoredCamera:
    camera: camera_pb2.Camera
    sealed: Sealed

    @property
    def camera_id(self) -> str:
        return self.camera.name.removeprefix("cameras/")


def _scene_json(camera: camera_pb2.Camera) -> str:
    scene = camera_pb2.Camera()
    for field in _SCENE_FIELDS:
        if field == "calibration":
            if camera.HasField("calibration"):
                scene.calibration.CopyFrom(camera.calibration)
        else:
            getattr(scene, field).extend(getattr(camera, field))
    return json_format.MessageToJson(scene, indent=None)


def _from_row(row: asyncpg.Record) -> StoredCamera:
    camera = json_format.Parse(row["scene"], camera_pb2.Camera())
    camera.name = camera_name(row["camera_id"])
    camera.display_name = row["display_name"]
    camera.source_uri = row["source_masked"]
    camera.enabled = row["enabled"]
    camera.loop = row["loop"]
    camera.target_fps = row["target_fps"]
    if row["width"] or row["height"]:
        camera.resolution.width = row["width"]
        camera.resolution.height = row["height"]
    camera.etag = row["etag"]
    camera.create_time.FromDatetime(row["create_time"])
    camera.update_time.FromDatetime(row["update_time"])
    return StoredCamera(camera, Sealed(row["source_key_id"], bytes(row["source_sealed"])))


def _values(camera: camera_pb2.Camera, sealed: Sealed) -> tuple[Any, ...]:
    """Column values in the order of the INSERT/UPDATE statements below ($2..$12)."""
    return (
        camera.display_name,
        camera.source_uri,
        sealed.key_id,
        sealed.blob,
        camera.enabled,
        camera.loop,
        camera.target_fps,
        camera.resolution.width,
        camera.resolution.height,
        _scene_json(camera),
        secrets.token_urlsafe(12),
    )


def camera_not_found(camera_id: str) -> NotFoundError:
    name = camera_name(camera_id)
    return NotFoundError(f"{name} not found", metadata={"resource": name})


def _check_etag(current: camera_pb2.Camera, etag: str) -> None:
    if etag and etag != current.etag:
        raise AbortedError(
            f"{current.name} changed since it was read (etag mismatch): read it again",
            metadata={"resource": current.name},
        )


# What an update does to the current camera: the new camera (masked source) and sealed
# source. It runs under the row lock, so it may check the current etag and state.
Change = Callable[[StoredCamera], tuple[camera_pb2.Camera, Sealed]]


class CameraStore:
    def __init__(self, pool: asyncpg.Pool[Any], *, max_cameras: int) -> None:
        self._pool = pool
        self._max_cameras = max_cameras

    async def create(
        self, camera_id: str, camera: camera_pb2.Camera, sealed: Sealed
    ) -> StoredCamera:
        async with self._pool.acquire() as connection, connection.transaction():
            # Serialises creates, so the quota check and the insert see the same count.
            await connection.execute("LOCK TABLE decoder_cameras IN SHARE ROW EXCLUSIVE MODE")
            count = await connection.fetchval("SELECT count(*) FROM decoder_cameras")
            if count >= self._max_cameras:
                raise ResourceExhaustedError(
                    f"this decoder holds at most {self._max_cameras} cameras",
                    reason=error_reason_pb2.ERROR_REASON_QUOTA_EXCEEDED,
                    metadata={"limit": "max_cameras"},
                )
            try:
                row = await connection.fetchrow(
                    _INSERT,
                    camera_id,
                    *_values(camera, sealed),
                )
            except asyncpg.UniqueViolationError:
                name = camera_name(camera_id)
                raise AlreadyExistsError(
                    f"{name} already exists", metadata={"resource": name}
                ) from None
        assert row is not None
        return _from_row(row)

    async def get(self, camera_id: str) -> StoredCamera:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM decoder_cameras WHERE camera_id = $1",  # noqa: S608
            camera_id,
        )
        if row is None:
            raise camera_not_found(camera_id)
        return _from_row(row)

    async def page(self, query: ListQuery) -> tuple[list[StoredCamera], str]:
        """One page and the token of the next one ('' on the last page)."""
        # The clauses are compiled by ListingSpec from a fixed vocabulary; every value the
        # client sent travels as a parameter.
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM decoder_cameras WHERE {query.where}"  # noqa: S608
            f" ORDER BY {query.order_by} LIMIT {query.limit + 1}",
            *query.params,
        )
        page = rows[: query.limit]
        more = len(rows) > query.limit
        token = page_token_after(query, dict(page[-1])) if more else ""
        return [_from_row(row) for row in page], token

    async def all(self) -> list[StoredCamera]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM decoder_cameras")  # noqa: S608
        return [_from_row(row) for row in rows]

    async def update(self, camera_id: str, etag: str, change: Change) -> StoredCamera:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_LOCK_ROW, camera_id)
            if row is None:
                raise camera_not_found(camera_id)
            current = _from_row(row)
            _check_etag(current.camera, etag)
            camera, sealed = change(current)
            row = await connection.fetchrow(
                _UPDATE,
                camera_id,
                *_values(camera, sealed),
            )
        assert row is not None
        return _from_row(row)

    async def delete(self, camera_id: str, etag: str, *, allow_missing: bool) -> bool:
        """Delete; False when it did not exist and ``allow_missing`` forgave that."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_LOCK_ROW, camera_id)
            if row is None:
                if allow_missing:
                    return False
                raise camera_not_found(camera_id)
            _check_etag(_from_row(row).camera, etag)
            await connection.execute("DELETE FROM decoder_cameras WHERE camera_id = $1", camera_id)
        return True

    async def reseal(self, keys: KeyRing) -> int:
        """Re-seal every source still under a key other than the primary one (rotation);
        rows whose key is not loaded are left alone. Returns how many were re-sealed."""
        count = 0
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT camera_id, source_key_id, source_sealed FROM decoder_cameras"
                " WHERE source_key_id <> $1 AND source_key_id = ANY($2::text[])",
                keys.primary_id,
                list(keys.key_ids),
            )
            for row in rows:
                camera_id = row["camera_id"]
                old = Sealed(row["source_key_id"], bytes(row["source_sealed"]))
                try:
                    new = keys.seal(keys.open(old, context=camera_id), context=camera_id)
                except SealedUnreadable as exc:
                    # Left as it is: the camera reports it as FAILED, the others go on.
                    _log.error(
                        "cannot re-seal a camera source",
                        extra={"camera": camera_id, "error": str(exc)},
                    )
                    continue
                # Only if nobody changed it meanwhile; the etag is untouched (same config).
                status = await connection.execute(
                    "UPDATE decoder_cameras SET source_key_id = $2, source_sealed = $3"
                    " WHERE camera_id = $1 AND source_key_id = $4 AND source_sealed = $5",
                    camera_id,
                    new.key_id,
                    new.blob,
                    old.key_id,
                    old.blob,
                )
                count += status == "UPDATE 1"
        return count
