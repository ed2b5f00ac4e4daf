"""Live fan-out to Redis: events published, each camera's latest stats cached.

Published after the batch is durable, and never on the acknowledgement path: ``offer`` puts
the message on a bounded queue and returns; one task sends them through the Redis breaker.
A full queue or a Redis outage drops live messages (counted): the events are in PostgreSQL
anyway, and the next batch refreshes the stats. Channels: ``<prefix>:events:<camera>`` and
``<prefix>:events`` (all cameras); stats under the key ``<prefix>:stats:<camera>`` with a TTL
so a camera that stops sending does not look alive; and ``<prefix>:commits``, one message per
batch announcing what it changed (``commit_json``): the query service drops cached answers
that cover it and wakes its event streams. A lost announcement costs freshness only: cached
answers expire by their TTL, streams poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.analytics._metrics import AnalyticsMetrics
from its_camera_ai.analytics._records import CameraStats, EventRecord
from its_camera_ai.common import (
    REDIS_DOWN,
    AnalyticsServiceSettings,
    CircuitBreaker,
)

__all__ = ["Fanout", "commit_json", "event_json", "stats_json"]


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def event_json(rec: EventRecord) -> str:
    ev = rec.evidence
    return json.dumps({
        "event_id": rec.event_id,
        "camera": f"cameras/{rec.camera}",
        "type": rec.type.name,
        "severity": rec.severity.name,
        "start_time_ns": rec.start_time_ns,
        "end_time_ns": rec.end_time_ns,
        "track_id": rec.track_id,
        "object_class": rec.object_class.name,
        "lane_id": rec.lane_id,
        "zone_id": rec.zone_id,
        "description": rec.description,
        "update_time_ns": rec.update_time_ns,
        "evidence": None if ev is None else {
            "frame_sequence": ev.frame_sequence,
            "capture_time_ns": ev.capture_time_ns,
            "box": None if ev.box is None else [_finite(v) for v in ev.box],
            "speed_kmh": _finite(ev.speed_kmh),
        },
    })  # fmt: skip


def stats_json(stats: CameraStats) -> str:
    return json.dumps({
        "camera": f"cameras/{stats.camera}",
        "processed_fps": stats.processed_fps,
        "active_tracks": stats.active_tracks,
        "active_tracks_by_class": {k.name: v for k, v in stats.active_tracks_by_class.items()},
        "counts_last_minute": {k.name: v for k, v in stats.counts_last_minute.items()},
        "open_events": stats.open_events,
        "latency_p50_s": _finite(stats.latency_p50_s),
        "latency_p99_s": _finite(stats.latency_p99_s),
        "last_frame_time_ns": stats.last_frame_time_ns,
        "frames_accepted": stats.frames_accepted,
        "frames_rejected": {k.value: v for k, v in stats.frames_rejected.items()},
        "drift_kl_class": _finite(stats.drift_kl_class),
        "drift_kl_score": _finite(stats.drift_kl_score),
    })  # fmt: skip


def commit_json(camera_id: str, span_ns: tuple[int, int] | None, events: bool) -> str:
    """A commit announcement: the camera's traffic changed at capture times [from_ns, to_ns)
    (both 0 when no traffic changed), and its events changed if ``events``."""
    from_ns, to_ns = span_ns or (0, 0)
    return json.dumps({"camera": camera_id, "from_ns": from_ns, "to_ns": to_ns, "events": events})


@dataclass(frozen=True, slots=True)
class _Message:
    camera_id: str
    events: list[str]
    stats: str
    commit: str


class Fanout:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        settings: AnalyticsServiceSettings,
        breaker: CircuitBreaker,
        metrics: AnalyticsMetrics,
    ) -> None:
        self._redis = redis
        self._prefix = settings.redis_prefix
        self._ttl = settings.stats_ttl_seconds
        self._breaker = breaker
        self._metrics = metrics
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(settings.fanout_queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="analytics-fanout")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def offer(
        self,
        camera_id: str,
        events: list[EventRecord],
        stats: CameraStats,
        span_ns: tuple[int, int] | None,
    ) -> None:
        message = _Message(
            camera_id,
            [event_json(e) for e in events],
            stats_json(stats),
            commit_json(camera_id, span_ns, bool(events)),
        )
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._metrics.fanout.labels("dropped_queue_full").inc()

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._breaker.call(functools.partial(self._send, message))
            except REDIS_DOWN:
                self._metrics.fanout.labels("dropped_redis_unavailable").inc()
            else:
                self._metrics.fanout.labels("published").inc()

    async def _send(self, message: _Message) -> None:
        channels = (f"{self._prefix}:events:{message.camera_id}", f"{self._prefix}:events")
        commits = f"{self._prefix}:commits"
        pipe: Any = self._redis.pipeline(transaction=False)
        if isinstance(self._redis, RedisCluster):
            # redis-py refuses PUBLISH in a cluster pipeline, raising RedisClusterException,
            # which is no RedisError: it escaped _run and ended this task at the first event,
            # so a cluster never got another live message. A classic PUBLISH reaches every
            # node's subscribers over the cluster bus, so any node may take it: each is its
            # own command, in order, with the cluster client's retry (refreshing its slot
            # map when a master dies or a slot moves) like any other.
            for event in message.events:
                for channel in channels:
                    await self._redis.publish(channel, event)
            await self._redis.publish(commits, message.commit)
        else:
            for event in message.events:
                for channel in channels:
                    pipe.publish(channel, event)
            pipe.publish(commits, message.commit)
        pipe.set(f"{self._prefix}:stats:{message.camera_id}", message.stats, ex=self._ttl)
        await pipe.execute()
