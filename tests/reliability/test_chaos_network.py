"""Chaos: latency and loss between analytics and its dependencies (issue #19).

PostgreSQL and Redis are real servers of the test's own, reached through a ``FaultProxy``
(a TCP proxy on loopback whose faults switch at run time); analytics runs in-process and is
fed real detection batches over gRPC. Invariants: every batch sent is acknowledged with no
stream error, what is acknowledged is stored exactly once (the tables equal an undisturbed
engine's output), and acknowledgements take a bounded time. Figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost, Settings
from its_camera_ai.testing import FaultProxy, metric_value, until
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    to_batches,
    traffic,
)
from tests.reliability.conftest import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.reliability


def _settings(dsn: str, redis_url: str | None = None) -> Settings:
    return Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn, "connect_timeout_seconds": 1.0, "command_timeout_seconds": 2.0},
        redis={"url": redis_url, "socket_timeout_seconds": 0.5},
    )


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    """The target of a CameraService serving the road camera."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


async def _analytics(
    settings: Settings, spool_dir: Path, decoder: str
) -> tuple[ServiceHost, grpc.aio.Channel]:
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=spool_dir,
            breaker_reset_seconds=0.5,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    host = ServiceHost(settings, [unit])
    await host.start()
    return host, grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")


async def _send_one_at_a_time(
    channel: grpc.aio.Channel,
    batches: Sequence[detection_batch_pb2.DetectionBatch],
    before_each: Callable[[], None] = lambda: None,
) -> list[float]:
    """Send the batches on one stream, each after the previous one's ack; asserts each ack
    names its batch and returns the seconds each ack took."""
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    call = stub.StreamDetectionBatches()
    seconds = []
    for batch in batches:
        before_each()
        started = time.monotonic()
        await call.write(analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch))
        ack = await asyncio.wait_for(call.read(), 30.0)
        assert isinstance(ack, analytics_service_pb2.StreamDetectionBatchesResponse), (
            f"stream ended before batch {batch.sequence}'s ack"
        )
        assert ack.acknowledged_sequence == batch.sequence
        seconds.append(time.monotonic() - started)
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK
    return seconds


def _p99(seconds: list[float]) -> float:
    return (
        statistics.quantiles(seconds, n=100, method="inclusive")[98]
        if len(seconds) > 1
        else seconds[0]
    )


def _figures(seconds: list[float]) -> str:
    return f"p50 {statistics.median(seconds) * 1e3:.0f} ms, p99 {_p99(seconds) * 1e3:.0f} ms"


def _spooled(host: ServiceHost) -> float:
    return metric_value(host, "analytics_spool_entries")


@pytest.fixture
async def proxied_postgres(private_postgres: PrivatePostgres) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_postgres.port) as proxy:
        yield proxy


def _through(proxy: FaultProxy) -> str:
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"


async def test_postgres_latency_keeps_every_batch_once_with_bounded_acks(
    private_postgres: PrivatePostgres, proxied_postgres: FaultProxy, decoder: str, tmp_path: Path
) -> None:
    host, channel = await _analytics(_settings(_through(proxied_postgres)), tmp_path, decoder)
    try:
        frames = traffic(duration_s=12.0)
        batches = to_batches(frames, "inference-0/latency", per_batch=12)
        jitter = random.Random(19)

        def new_latency() -> None:
            # 25-100 ms each way: 50-200 ms per round trip to PostgreSQL.
            proxied_postgres.latency_s = jitter.uniform(0.025, 0.1)

        seconds = await _send_one_at_a_time(channel, batches, new_latency)
        print(f"\nack latency, PostgreSQL at 50-200 ms RTT: {_figures(seconds)} "
              f"({len(seconds)} batches, {_spooled(host):.0f} spooled)")  # fmt: skip
        # A batch costs about eight round trips (~1 s at these delays), a camera's first
        # one about four times that (its state, marks and open bins are read first).
        assert _p99(seconds) < 8.0
        assert statistics.median(seconds) < 2.5
        proxied_postgres.heal()
        await until(lambda: _spooled(host) == 0, "spool drained")
        assert await stored(private_postgres.dsn) == reference(frames, synth.road_scene())
        assert await producer_mark(private_postgres.dsn, "inference-0/latency") == len(batches)
    finally:
        await channel.close()
        await host.stop()


async def test_postgres_black_hole_spools_acks_then_stores_once_after_healing(
    private_postgres: PrivatePostgres, proxied_postgres: FaultProxy, decoder: str, tmp_path: Path
) -> None:
    host, channel = await _analytics(_settings(_through(proxied_postgres)), tmp_path, decoder)
    try:
        frames = traffic()
        batches = to_batches(frames, "inference-0/black-hole")
        healthy = await _send_one_at_a_time(channel, batches[:8])

        proxied_postgres.black_hole()
        outage = await _send_one_at_a_time(channel, batches[8:20])
        # Everything sent during the outage was acknowledged (spooled, fsynced).
        assert _spooled(host) == len(outage)
        # The first write waits out the command timeout (2 s); once anything is spooled, the
        # next ones queue behind it in the spool without trying PostgreSQL.
        assert max(outage) < 10.0
        assert statistics.median(outage) < 1.0

        proxied_postgres.heal()
        healed_at = time.monotonic()
        after = await _send_one_at_a_time(channel, batches[20:])
        await until(lambda: _spooled(host) == 0, "spool drained", within=30.0)
        drained_s = time.monotonic() - healed_at
        print(f"\nPostgreSQL black hole: healthy acks {_figures(healthy)}; during the outage "
              f"{_figures(outage)}, max {max(outage):.2f} s; after healing {_figures(after)}; "
              f"spool drained {drained_s:.2f} s after healing")  # fmt: skip
        assert await stored(private_postgres.dsn) == reference(frames, synth.road_scene())
        assert await producer_mark(private_postgres.dsn, "inference-0/black-hole") == len(batches)
    finally:
        proxied_postgres.heal()
        await channel.close()
        await host.stop()


async def test_redis_black_hole_degrades_fanout_never_acks(
    postgres_dsn: str, private_redis: PrivateRedis, decoder: str, tmp_path: Path
) -> None:
    async with FaultProxy(private_redis.port) as proxy:
        redis_url = f"redis://127.0.0.1:{proxy.port}/0"
        host, channel = await _analytics(_settings(postgres_dsn, redis_url), tmp_path, decoder)
        published = {"result": "published"}
        try:
            frames = traffic()
            batches = to_batches(frames, "inference-0/redis-chaos")
            healthy = await _send_one_at_a_time(channel, batches[:5])
            await until(lambda: metric_value(host, "analytics_fanout_total", **published) == 5,
                        "fan-out of the first batches")  # fmt: skip

            proxy.latency_s = 0.1
            slow = await _send_one_at_a_time(channel, batches[5:10])
            await until(lambda: metric_value(host, "analytics_fanout_total", **published) == 10,
                        "fan-out through a slow Redis")  # fmt: skip
            proxy.black_hole()
            lost = await _send_one_at_a_time(channel, batches[10:20])
            # Their fan-out is dropped (Redis times out, then its breaker opens), counted.
            dropped = {"result": "dropped_redis_unavailable"}
            await until(lambda: metric_value(host, "analytics_fanout_total", **dropped) >= 10,
                        "fan-out dropped while Redis is black-holed")  # fmt: skip
            dropped_total = metric_value(host, "analytics_fanout_total", **dropped)
            proxy.heal()
            healed_at = time.monotonic()
            # Traffic as a camera sends it, a batch every 0.2 s: the first message past the
            # breaker's open period is its trial call.
            for batch in batches[20:]:
                await _send_one_at_a_time(channel, [batch])
                if metric_value(host, "analytics_fanout_total", **published) > 10:
                    break
                await asyncio.sleep(0.2)
            client = aioredis.Redis.from_url(redis_url)
            try:
                await until(lambda: metric_value(host, "analytics_fanout_total", **published)
                            > 10, "fan-out after healing", within=5.0)  # fmt: skip
                recovered_s = time.monotonic() - healed_at
                await _send_one_at_a_time(channel, batches[batches.index(batch) + 1 :])
                assert await client.get(f"its:analytics:stats:{CAMERA_ID}") is not None
            finally:
                await client.aclose()
            print(f"\nRedis chaos: acks healthy {_figures(healthy)}, Redis at 200 ms RTT "
                  f"{_figures(slow)}, Redis black-holed {_figures(lost)}; {dropped_total:.0f} "
                  f"fan-out messages dropped; publishing again {recovered_s:.2f} s after "
                  "healing")  # fmt: skip
            # Acks never wait for Redis: no slower than with it healthy, give or take a VM.
            assert max(slow + lost) < 1.0
            assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
        finally:
            proxy.heal()
            await channel.close()
            await host.stop()
