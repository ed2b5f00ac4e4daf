"""Analytics under dependency faults: PostgreSQL stopped mid-stream, Redis stopped.

Real servers from the reliability fixtures; the service runs in-process on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost, Settings
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)
from tests.conftest import rpc_error_details
from tests.reliability.conftest import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.reliability


def _settings(dsn: str, redis_url: str | None = None) -> Settings:
    return Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn, "connect_timeout_seconds": 1.0, "command_timeout_seconds": 2.0},
        redis={"url": redis_url, "socket_timeout_seconds": 0.5},
    )


async def _start(
    settings: Settings, spool_dir: Path, decoder: str
) -> tuple[ServiceHost, grpc.aio.Channel]:
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=spool_dir,
            breaker_reset_seconds=0.3,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    host = ServiceHost(settings, [unit])
    await host.start()
    return host, grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")


def _metric(host: ServiceHost, name: str, labels: dict[str, str] | None = None) -> float:
    return host.runtime.metrics.get_sample_value(name, labels or {}) or 0.0


async def _until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.1)


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    """The target of a CameraService serving the road camera."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


@pytest.fixture
async def pg_analytics(
    private_postgres: PrivatePostgres, decoder: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceHost, grpc.aio.Channel]]:
    host, channel = await _start(_settings(private_postgres.dsn), tmp_path / "spool", decoder)
    try:
        yield host, channel
    finally:
        await channel.close()
        await host.stop()


async def test_postgres_outage_spools_then_drains_exactly_once(
    private_postgres: PrivatePostgres, pg_analytics: tuple[ServiceHost, grpc.aio.Channel]
) -> None:
    host, channel = pg_analytics
    frames = traffic()
    batches = to_batches(frames, "inference-0/pg")
    acks = await stream(channel, batches[:10])

    private_postgres.stop()
    acks += await stream(channel, batches[10:20])
    assert _metric(host, "analytics_spool_entries") == 10
    assert _metric(host, "analytics_spool_bytes") > 0

    private_postgres.start()
    # Spooled batches come first: these queue behind them, then everything drains in order.
    acks += await stream(channel, batches[20:])
    assert [a.acknowledged_sequence for a in acks] == [b.sequence for b in batches]
    await _until(lambda: _metric(host, "analytics_spool_entries") == 0)

    assert await stored(private_postgres.dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(private_postgres.dsn, "inference-0/pg") == batches[-1].sequence
    replayed = _metric(host, "analytics_spool_replayed_total", {"result": "applied"})
    assert replayed >= 10


async def test_redis_outage_degrades_fanout_only(
    postgres_dsn: str, decoder: str, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    settings = _settings(postgres_dsn, private_redis.url)
    host, channel = await _start(settings, tmp_path / "spool", decoder)
    client = aioredis.Redis.from_url(private_redis.url)
    key = f"its:analytics:stats:{CAMERA_ID}"
    published = {"result": "published"}
    dropped = {"result": "dropped_redis_unavailable"}
    try:
        frames = traffic()
        batches = to_batches(frames, "inference-0/redis")
        await stream(channel, batches[:5])
        await _until(lambda: _metric(host, "analytics_fanout_total", published) == 5)
        assert await client.get(key) is not None
        assert 0 < await client.ttl(key) <= 60

        private_redis.stop()
        acks = await stream(channel, batches[5:15])
        assert len(acks) == 10  # acknowledgements never wait for Redis
        await _until(lambda: _metric(host, "analytics_fanout_total", dropped) == 10)

        private_redis.start()
        await asyncio.sleep(0.5)  # past the breaker's open period
        await stream(channel, batches[15:])
        total = len(batches) - 15
        await _until(lambda: _metric(host, "analytics_fanout_total", published) == 5 + total)
        client = aioredis.Redis.from_url(private_redis.url)
        assert await client.get(key) is not None
        assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
    finally:
        await client.aclose()
        await channel.close()
        await host.stop()


async def test_a_reset_waits_for_the_spool_to_drain(
    private_postgres: PrivatePostgres, decoder: str, tmp_path: Path
) -> None:
    """A spooled record holds the camera's old state; replayed after a reset, it would bring
    the state back. So a reset is refused (UNAVAILABLE) until the spool has drained, even
    with PostgreSQL back (replay here runs only when a write wakes it)."""
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=tmp_path / "spool",
            breaker_reset_seconds=0.3,
            replay_interval_seconds=3600,
            decoder_target=decoder,
        )
    )
    host = ServiceHost(_settings(private_postgres.dsn), [unit])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    reset = analytics_service_pb2.ResetCameraStateRequest(camera=f"cameras/{CAMERA_ID}")
    try:
        batches = to_batches(traffic(), "inference-0/reset-spool")
        await stream(channel, batches[:5])
        private_postgres.stop()
        await stream(channel, batches[5:10])
        private_postgres.start()
        assert _metric(host, "analytics_spool_entries") == 5
        # The first calls may still meet the pool's connections to the stopped server.
        for _ in range(10):
            await asyncio.sleep(0.4)  # past the breaker's open period
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ResetCameraState(reset)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert rpc_error_details(caught.value)[0] == "DEPENDENCY_UNAVAILABLE"
            if "spool" in (caught.value.details() or ""):
                break
        else:
            raise AssertionError("the reset never named the spool it waits for")
        assert _metric(host, "analytics_spool_entries") == 5

        sent = 10
        while _metric(host, "analytics_spool_entries"):  # each write wakes the replay
            await asyncio.sleep(0.4)  # past the breaker's open period
            await stream(channel, batches[sent : sent + 1])
            sent += 1
        response = await stub.ResetCameraState(reset)
        last_sent = batches[sent - 1].frames[-1].capture_time.ToNanoseconds()
        assert response.discarded_last_capture_time.ToNanoseconds() == last_sent
        acks = await stream(channel, batches[sent:])
        assert all(not a.rejections for a in acks)
    finally:
        await channel.close()
        await host.stop()
