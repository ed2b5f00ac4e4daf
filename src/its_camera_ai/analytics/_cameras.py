"""Each camera's scene, read from the decoder's ``decoder_cameras`` table (read-only).

Analytics shares the decoder's database and never writes its table. The whole table is
re-read every ``refresh_seconds``, and on a batch for a camera not seen yet (at most once a
second, so a producer sending an unknown camera cannot hammer the database). While
PostgreSQL is down the last scenes read stay in use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from google.protobuf import json_format

from its.camera.v1 import camera_pb2
from its_camera_ai.analytics._scene import Scene, scene_from_proto
from its_camera_ai.common import (
    POSTGRES_FAILURES,
    CircuitBreaker,
    InvalidArgumentError,
    UnavailableError,
)

__all__ = ["CameraDirectory", "CameraScene"]

# A dependency being down, whether the breaker knew it already or the call found out.
_POSTGRES_DOWN: tuple[type[BaseException], ...] = (UnavailableError, *POSTGRES_FAILURES)

_log = logging.getLogger(__name__)

_SELECT = "SELECT camera_id, width, height, scene::text AS scene FROM decoder_cameras"
_MISS_REFRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CameraScene:
    camera_id: str
    scene: Scene
    # The configured resolution: the frame size of frames that do not carry their own.
    width: int
    height: int


def _scene_of(row: asyncpg.Record) -> CameraScene | None:
    camera = json_format.Parse(row["scene"], camera_pb2.Camera(), ignore_unknown_fields=True)
    try:
        scene = scene_from_proto(camera)
    except InvalidArgumentError as exc:
        # The camera service validates scenes with the same code; a row that fails anyway
        # (older rules) leaves the camera unknown rather than counting on a wrong scene.
        _log.error("camera scene unusable", extra={"camera": row["camera_id"], "error": str(exc)})
        return None
    return CameraScene(row["camera_id"], scene, row["width"], row["height"])


class CameraDirectory:
    def __init__(
        self, pool: asyncpg.Pool[Any], breaker: CircuitBreaker, refresh_seconds: float
    ) -> None:
        self._pool = pool
        self._breaker = breaker
        self._refresh_seconds = refresh_seconds
        self._cameras: dict[str, CameraScene] = {}
        self._read_at: float | None = None
        self._missing_table_logged = False

    async def get(self, camera_id: str) -> CameraScene | None:
        """The camera's scene, or None if the decoder has no such camera.

        Raises ``UnavailableError`` when the camera is not known yet and PostgreSQL is down:
        "unknown" would be a final rejection, and it may well exist.
        """
        now = time.monotonic()
        age = None if self._read_at is None else now - self._read_at
        stale = age is None or age >= self._refresh_seconds
        missed = camera_id not in self._cameras and (age is None or age >= _MISS_REFRESH_SECONDS)
        if stale or missed:
            try:
                await self._breaker.call(self._read)
            except _POSTGRES_DOWN as exc:
                if camera_id not in self._cameras:
                    raise UnavailableError("camera scenes unavailable: PostgreSQL is down") from exc
        return self._cameras.get(camera_id)

    async def _read(self) -> None:
        try:
            rows = await self._pool.fetch(_SELECT)
        except asyncpg.UndefinedTableError:
            # Analytics on a database without the decoder's schema: no cameras known.
            if not self._missing_table_logged:
                _log.warning("no decoder_cameras table: every camera is unknown")
                self._missing_table_logged = True
            rows = []
        cameras = {}
        for row in rows:
            scene = _scene_of(row)
            if scene is not None:
                cameras[scene.camera_id] = scene
        self._cameras = cameras
        self._read_at = time.monotonic()
