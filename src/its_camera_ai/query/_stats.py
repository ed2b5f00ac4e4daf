"""GetCameraStats: a camera's live figures, as analytics last published them.

Analytics keeps each camera's latest statistics in Redis (``<prefix>:stats:<camera>``, with a
TTL) after every batch. Without Redis, with Redis down, or once that key expired (the camera
stopped sending), the figures come from the camera's engine state in PostgreSQL, evaluated
now: a camera that stopped shows 0 frames/s and its last frame time, not its last rate.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its.common.v1 import detection_pb2
from its.query.v1 import camera_stats_pb2, traffic_pb2
from its_camera_ai.analytics import CameraAnalytics, stats_json
from its_camera_ai.common import REDIS_DOWN, CircuitBreaker

__all__ = ["CameraStatsReader"]

_STATE = "SELECT state FROM analytics_camera_state WHERE camera_id = $1"


def _class_counts(counts: dict[str, int]) -> list[traffic_pb2.ClassCount]:
    return [
        traffic_pb2.ClassCount(
            object_class=detection_pb2.ObjectClass.Value(f"OBJECT_CLASS_{name}"), count=count
        )
        for name, count in sorted(counts.items())
        if count
    ]


def stats_message(camera_id: str, figures: dict[str, Any] | None) -> camera_stats_pb2.CameraStats:
    """The wire message from analytics' published figures (None: nothing known, all zero)."""
    stats = camera_stats_pb2.CameraStats(name=f"cameras/{camera_id}/stats")
    stats.update_time.FromNanoseconds(time.time_ns())
    if figures is None:
        return stats
    stats.processed_fps = figures["processed_fps"]
    stats.active_tracks = figures["active_tracks"]
    stats.active_tracks_by_class.extend(_class_counts(figures["active_tracks_by_class"]))
    stats.counts_last_minute.extend(_class_counts(figures["counts_last_minute"]))
    stats.open_events = figures["open_events"]
    for name, field in (("latency_p50_s", stats.latency_p50), ("latency_p99_s", stats.latency_p99)):
        if figures.get(name) is not None:
            field.FromNanoseconds(round(figures[name] * 1e9))
    if figures.get("last_frame_time_ns") is not None:
        stats.last_frame_time.FromNanoseconds(figures["last_frame_time_ns"])
    return stats


class CameraStatsReader:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        redis: Redis | RedisCluster | None,
        breaker: CircuitBreaker | None,
        prefix: str,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._breaker = breaker
        self._prefix = prefix

    async def get(self, camera_id: str) -> camera_stats_pb2.CameraStats:
        figures = await self._published(camera_id)
        if figures is None:
            figures = await self._from_state(camera_id)
        return stats_message(camera_id, figures)

    async def _published(self, camera_id: str) -> dict[str, Any] | None:
        if self._redis is None or self._breaker is None:
            return None
        get = functools.partial(self._redis.get, f"{self._prefix}:stats:{camera_id}")
        try:
            raw = await self._breaker.call(get)
        except REDIS_DOWN:
            return None
        return None if raw is None else dict(json.loads(raw))

    async def _from_state(self, camera_id: str) -> dict[str, Any] | None:
        state = await self._pool.fetchval(_STATE, camera_id)
        if state is None:
            return None
        engine = CameraAnalytics.from_state_bytes(bytes(state))
        return dict(json.loads(stats_json(engine.snapshot(time.time_ns()))))
