"""The analytics service: detection batches in; tracks, counts, speeds and events stored.

Registration builds the pipeline for ``AnalyticsService.StreamDetectionBatches``: camera
scenes from the decoder's ``CameraService`` (at ``analytics.decoder_target``, or, left unset,
this process's own server when the decoder runs in it), the PostgreSQL store behind a
circuit breaker with the local spool for outages, optional Redis fan-out, and three
background tasks (spool replay, following the decoder's cameras, retention). A spool left by
a previous run is replayed before the server takes batches, when PostgreSQL allows;
otherwise the replay task keeps at it while the spool indexes the newest marks and engine
states, so nothing acknowledged is lost either way.

``UNIT`` takes the ``analytics`` section of the settings (``ITS_ANALYTICS__*``);
``analytics_unit(settings)`` builds one with explicit settings (tests, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import grpc

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from its_camera_ai.analytics._durable import DurableWriter
from its_camera_ai.analytics._fanout import Fanout
from its_camera_ai.analytics._ingest import Ingestor
from its_camera_ai.analytics._metrics import AnalyticsMetrics
from its_camera_ai.analytics._owners import ProducerOwners
from its_camera_ai.analytics._servicer import AnalyticsServicer
from its_camera_ai.analytics._snapshot import serve_snapshots
from its_camera_ai.analytics._spool import Spool
from its_camera_ai.analytics._store import Store
from its_camera_ai.common import (
    POSTGRES_DOWN,
    POSTGRES_FAILURES,
    REDIS_FAILURES,
    AnalyticsServiceSettings,
    CircuitBreaker,
    MigrationSet,
    Runtime,
    ServiceUnit,
)
from its_camera_ai.scene import DECODER_FAILURES, CameraDirectory

__all__ = ["UNIT", "analytics_unit"]

_log = logging.getLogger(__name__)

MIGRATIONS = MigrationSet("analytics", "its_camera_ai.analytics")
_DAY_SECONDS = 86400.0


def analytics_unit(settings: AnalyticsServiceSettings | None = None) -> ServiceUnit:
    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        config = settings or runtime.settings.analytics
        decoder_target = runtime.peer_target(
            config.decoder_target, "decoder", setting="analytics.decoder_target"
        )
        assert runtime.database is not None  # needs_database=True
        metrics = AnalyticsMetrics(runtime.metrics)
        metrics.spool_max_bytes.set(config.spool_max_bytes)
        breaker = functools.partial(CircuitBreaker, registry=runtime.metrics,
                                    failure_threshold=config.breaker_failure_threshold,
                                    reset_timeout_seconds=config.breaker_reset_seconds)  # fmt: skip
        postgres = breaker("postgres", failures=POSTGRES_FAILURES)
        store = Store(runtime.database.pool)
        spool = Spool(
            config.spool_dir,
            max_bytes=config.spool_max_bytes,
            alert_fraction=config.spool_alert_fraction,
            on_change=metrics.spool_changed,
        )
        writer = DurableWriter(store, spool, postgres, metrics)
        if await asyncio.to_thread(writer.recover):
            with contextlib.suppress(*POSTGRES_DOWN):
                await writer.replay()
        fanout = None
        if runtime.redis is not None:
            fanout = Fanout(
                runtime.redis, config, breaker("redis", failures=REDIS_FAILURES), metrics
            )
            fanout.start()
            runtime.on_shutdown.append(fanout.close)

        cameras = CameraDirectory(
            decoder_target,
            breaker("decoder", failures=DECODER_FAILURES),
            refresh_seconds=config.camera_refresh_seconds,
            reconnect_initial_seconds=config.reconnect_initial_seconds,
            reconnect_max_seconds=config.reconnect_max_seconds,
            open_channel=runtime.peer_channel,
        )
        ingestor = Ingestor(
            cameras=cameras,
            writer=writer,
            fanout=fanout,
            metrics=metrics,
            engine_settings=config.engine,
            traced=bool(runtime.settings.tracing.otlp_endpoint),
        )
        serve_snapshots(runtime, cameras, ingestor)
        tasks = [asyncio.create_task(writer.run_replay(config.replay_interval_seconds))]
        if config.retention_days is not None:
            tasks.append(asyncio.create_task(_retention(store, postgres, metrics, config)))

        async def follow_cameras() -> None:
            # Once serving: in `serve all` the decoder is this very server.
            tasks.append(asyncio.create_task(cameras.follow()))

        async def stop() -> None:
            # After the gRPC server drained: no batch is in flight any more.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cameras.close()
            spool.close()

        runtime.on_started.append(follow_cameras)
        runtime.on_shutdown.append(stop)
        servicer = AnalyticsServicer(ingestor, ProducerOwners(runtime.database.pool))
        runtime.on_stopping.append(servicer.close_streams)
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)

    return ServiceUnit(
        name="analytics",
        grpc_services=(
            analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
        ),
        register=register,
        needs_database=True,
        migrations=(MIGRATIONS,),
    )


async def _retention(
    store: Store,
    breaker: CircuitBreaker,
    metrics: AnalyticsMetrics,
    config: AnalyticsServiceSettings,
) -> None:
    """Delete rows older than the retention age, every interval (skipped while PG is down)."""
    assert config.retention_days is not None
    age_seconds = config.retention_days * _DAY_SECONDS
    while True:
        await asyncio.sleep(config.retention_interval_seconds)
        try:
            deleted = await breaker.call(lambda: store.delete_older_than(age_seconds))
        except POSTGRES_DOWN:
            continue
        metrics.retention_deleted.inc(deleted)
        if deleted:
            _log.info("analytics retention", extra={"deleted_rows": deleted})


UNIT = analytics_unit()
