"""The query service: the read side for operators and other systems, plus administration.

Hosts ``QueryService`` (counts, summaries, events, live stats; read-only on the analytics
tables, whose migrations it applies too so it can start first) and ``AdminService`` (API
keys, feature flags, audit log; ``its_camera_ai.admin``). Camera
scenes come from the decoder's CameraService (``query.decoder_target``), announcements of
analytics' commits from Redis (``<analytics.redis_prefix>:commits``) when configured.
"""

from __future__ import annotations

import asyncio
import functools

import grpc

from its.admin.v1 import admin_service_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.admin import add_admin_service
from its_camera_ai.analytics.server import MIGRATIONS as ANALYTICS_MIGRATIONS
from its_camera_ai.common import (
    REDIS_FAILURES,
    CircuitBreaker,
    Runtime,
    ServiceUnit,
)
from its_camera_ai.query._cache import AnswerCache
from its_camera_ai.query._events import EventReader
from its_camera_ai.query._servicer import QueryServicer, add_query_service
from its_camera_ai.query._stats import CameraStatsReader
from its_camera_ai.query._stream import EventHub
from its_camera_ai.query._traffic import TrafficReader
from its_camera_ai.scene import DECODER_FAILURES, CameraDirectory

__all__ = ["UNIT"]

_CACHE_PREFIX = "its:query:cache"


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    config = runtime.settings.query
    decoder_target = runtime.peer_target(
        config.decoder_target, "decoder", setting="query.decoder_target"
    )
    assert runtime.database is not None  # needs_database=True
    pool = runtime.database.pool
    breaker = functools.partial(
        CircuitBreaker,
        failure_threshold=config.breaker_failure_threshold,
        reset_timeout_seconds=config.breaker_reset_seconds,
        registry=runtime.metrics,
    )
    redis_breaker = None if runtime.redis is None else breaker("redis", failures=REDIS_FAILURES)
    prefix = runtime.settings.analytics.redis_prefix
    cameras = CameraDirectory(
        decoder_target,
        breaker("decoder", failures=DECODER_FAILURES),
        refresh_seconds=config.camera_refresh_seconds,
        reconnect_initial_seconds=config.reconnect_initial_seconds,
        reconnect_max_seconds=config.reconnect_max_seconds,
        open_channel=runtime.peer_channel,
    )
    hub = EventHub(pool, config)
    cache = AnswerCache(
        config.cache,
        runtime.redis,
        redis_breaker,
        runtime.metrics,
        key_prefix=_CACHE_PREFIX,
        channel=f"{prefix}:commits",
        on_events=hub.wake,
    )
    servicer = QueryServicer(
        settings=config,
        cameras=cameras,
        traffic=TrafficReader(pool, runtime.settings.analytics.engine.bin_seconds),
        events=EventReader(pool),
        cache=cache,
        hub=hub,
        stats=CameraStatsReader(pool, runtime.redis, redis_breaker, prefix),
        flag=runtime.flags.enabled if runtime.flags is not None else lambda _name: True,
    )
    tasks: list[asyncio.Task[None]] = []

    async def started() -> None:
        # Once serving: in `serve all` the decoder is this very server.
        hub.start()
        cache.start()
        tasks.append(asyncio.create_task(cameras.follow(), name="query-cameras"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()
        await cache.close()
        await cameras.close()

    runtime.on_started.append(started)
    runtime.on_stopping.append(hub.end_streams)
    runtime.on_shutdown.append(stop)
    add_query_service(servicer, server)
    add_admin_service(server, runtime)


UNIT = ServiceUnit(
    name="query",
    grpc_services=(
        query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
        admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    ),
    register=_register,
    needs_database=True,
    migrations=(ANALYTICS_MIGRATIONS,),
)
