"""PostgreSQL failover under a live detection stream (issue #19).

A primary and a synchronous hot standby on loopback; analytics runs in-process on the
multi-host DSN ``...:primary,...:standby/postgres?target_session_attrs=read-write``, fed by
inference's real ``DetectionProducer``. Mid-stream, with a commit waiting for the standby,
the primary is SIGKILLed (postmaster and every backend) and, after a pause, the standby is
promoted as an operator or Patroni would. Asserted: analytics keeps acknowledging (from its
spool) or, with no spool room, fails the stream and the producer resends; reads on the
standby keep answering meanwhile; writing to PostgreSQL resumes within 30 s of the
promotion; and the promoted database holds every acknowledged frame exactly once (tables
equal an undisturbed engine's output, the producer's mark equal to its last batch).

The read side: a query service on the multi-host DSN with ``target_session_attrs=any``
(asyncpg also takes ``prefer-standby``, ``standby``, ``read-only``, ``primary`` and
``read-write``) answers GetTrafficCounts before the kill (from the primary), while the
primary is dead (from the standby), and after the promotion, through the client's retries
with no failed call; a second one starts while the primary is dead, on the standby, where
it verifies the migrations instead of applying them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry

from its.analytics.v1 import detection_batch_pb2
from its.common.v1 import time_range_pb2
from its.query.v1 import query_service_pb2, query_service_pb2_grpc
from its_camera_ai.analytics import (
    UPSERT_BIN,
    BinKey,
    BinRecord,
    FrameInput,
    ObjectClass,
    Scope,
    bin_row,
)
from its_camera_ai.analytics.server import MIGRATIONS, analytics_unit
from its_camera_ai.client import aio_channel
from its_camera_ai.common import (
    AnalyticsServiceSettings,
    MigrationSet,
    ServiceHost,
    Settings,
    apply_migrations,
)
from its_camera_ai.inference import DetectionProducer, ProducerMetrics, new_producer_id
from its_camera_ai.query import UNIT as QUERY_UNIT
from its_camera_ai.scene import Direction
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
from tests.reliability.conftest import ReplicatedPostgres

pytestmark = pytest.mark.reliability

CAMERA = f"cameras/{CAMERA_ID}"
# The bound: writing resumes within this long of the promotion.
RESUME_WITHIN_S = 30.0
# Every acknowledgement within this (a bucket bound of the producer's ack histogram), and
# every standby read within the next, through the whole failover.
MAX_ACK_LATENCY_S = 5.0
MAX_READ_LATENCY_S = 1.0
# Frames (10 per second of traffic) before the kill, and up to the promotion.
BEFORE_KILL, OUTAGE_END = 60, 120
# The operator's reaction time, so the outage is more than a blink.
OUTAGE_S = 1.0
# Frames arrive at this pace: the producer batches what queues while its window is full.
PACE_S = 0.01
# The last frames are submitted only once the spool has drained: they must be committed
# straight to the promoted server.
HELD_UNTIL_DRAINED = 20
# The smallest spool analytics allows (64 KiB): a few batches' writes fill it.
SMALLEST_SPOOL = 64 * 1024


def _settings(dsn: str) -> Settings:
    return Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn, "connect_timeout_seconds": 1.0, "command_timeout_seconds": 2.0},
    )


def _metric(host: ServiceHost, name: str, labels: dict[str, str] | None = None) -> float:
    return host.runtime.metrics.get_sample_value(name, labels or {}) or 0.0


def _direct_writes(host: ServiceHost) -> float:
    """Batches committed straight to PostgreSQL (not spooled, not replayed)."""
    return _metric(host, "analytics_write_latency_seconds_count", {"target": "postgres"})


def _replayed(host: ServiceHost, result: str) -> float:
    return _metric(host, "analytics_spool_replayed_total", {"result": result})


async def _until(check: Callable[[], bool], within: float) -> float:
    """Poll ``check`` until it holds; how long that took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"condition never held within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _until_a_commit_waits(primary_dsn: str) -> None:
    connection = await asyncpg.connect(primary_dsn)
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        for _ in range(250):  # 5 s
            if await connection.fetchval(query):
                return
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    raise AssertionError("no commit ever waited for the standby")


async def _read_standby(dsn: str, producer: str) -> tuple[int, int, float]:
    """A plain asyncpg read of the analytics tables on the standby's own port (the query
    service's reads are the last test's): (producer mark, bins, seconds)."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn, timeout=MAX_READ_LATENCY_S)
    try:
        mark = await connection.fetchval(
            "SELECT last_sequence FROM analytics_producers WHERE producer_id = $1", producer
        )
        bins = await connection.fetchval("SELECT count(*) FROM analytics_bins")
        assert await connection.fetchval("SELECT pg_is_in_recovery()"), "not the standby"
    finally:
        await connection.close()
    return int(mark or 0), int(bins), time.monotonic() - started


async def _reads_while_down(dsn: str, producer: str, acked_before_kill: int) -> list[float]:
    """Read the standby repeatedly through the outage; each read's latency. Commits wait
    for the standby to apply them, so every batch acknowledged before the kill is visible."""
    latencies = []
    deadline = time.monotonic() + OUTAGE_S
    while True:
        mark, bins, took = await _read_standby(dsn, producer)
        latencies.append(took)
        assert bins > 0
        assert mark >= acked_before_kill, "an acknowledged batch is missing on the standby"
        if time.monotonic() >= deadline:
            return latencies
        await asyncio.sleep(0.1)


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    """The target of a CameraService serving the road camera."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


@contextlib.asynccontextmanager
async def _analytics(
    dsn: str, spool_dir: Path, decoder: str, spool_max_bytes: int = 256 * 1024 * 1024
) -> AsyncIterator[ServiceHost]:
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            breaker_reset_seconds=0.3,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    host = ServiceHost(_settings(dsn), [unit])
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@contextlib.asynccontextmanager
async def _producing(target: str) -> AsyncIterator[tuple[DetectionProducer, CollectorRegistry]]:
    """Inference's producer (its resend, backoff and window) streaming to ``target``."""
    registry = CollectorRegistry()
    producer = DetectionProducer(
        target,
        producer_id=new_producer_id("inference-failover"),
        model="models/yolo",
        model_version="1",
        metrics=ProducerMetrics(registry),
        max_unacked_batches=4,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=0.5,
    )
    await producer.start()
    try:
        yield producer, registry
    finally:
        await producer.close(drain_timeout=10)


async def _submit(
    producer: DetectionProducer, frames: Sequence[detection_batch_pb2.FrameDetections]
) -> None:
    for frame in frames:
        producer.submit(CAMERA, frame)
        await asyncio.sleep(PACE_S)


def _acked(producer: DetectionProducer) -> Callable[[int], Callable[[], bool]]:
    return lambda frames: lambda: producer.stats.frames_acknowledged >= frames


async def _kill_primary_mid_commit(pair: ReplicatedPostgres, producer: DetectionProducer) -> int:
    """SIGKILL the primary while a commit waits for the standby; the batches acknowledged
    before. That batch's fate is unknown to analytics, which spools it (or fails the
    stream); replay (or the resend) must apply it once, whether the standby got it or not."""
    pair.hold_replication()
    await _until_a_commit_waits(pair.primary_dsn)
    acked_before_kill = producer.stats.batches_acknowledged
    # In a thread: frames keep flowing to analytics while the primary dies.
    await asyncio.to_thread(pair.kill_primary)
    pair.release_replication()
    return acked_before_kill


async def _assert_all_stored_once(
    dsn: str, frames: list[FrameInput], producer: DetectionProducer
) -> None:
    """Everything acknowledged is on the promoted server, exactly once."""
    stats = producer.stats
    assert stats.frames_acknowledged == len(frames)
    assert sum(stats.frames_rejected.values()) == 0
    assert sum(stats.frames_undelivered.values()) == 0
    assert await stored(dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(dsn, producer.producer_id) == stats.batches_sent


def _ack_latencies(registry: CollectorRegistry) -> tuple[int, int]:
    """(acknowledgements, those within ``MAX_ACK_LATENCY_S``)."""
    name = "inference_analytics_ack_latency_seconds"
    total = registry.get_sample_value(f"{name}_count") or 0.0
    within = registry.get_sample_value(f"{name}_bucket", {"le": str(MAX_ACK_LATENCY_S)}) or 0.0
    return int(total), int(within)


def _wire(frames: list[FrameInput]) -> list[detection_batch_pb2.FrameDetections]:
    return [f for batch in to_batches(frames, "unused") for f in batch.frames]


async def test_primary_killed_standby_promoted_writes_resume_nothing_lost(
    replicated_postgres: ReplicatedPostgres, decoder: str, tmp_path: Path
) -> None:
    pair = replicated_postgres
    frames = traffic()
    wire = _wire(frames)
    async with (
        _analytics(pair.dsn, tmp_path / "spool", decoder) as host,
        _producing(f"127.0.0.1:{host.grpc_port}") as (producer, registry),
    ):
        acked = _acked(producer)
        sending = asyncio.create_task(_submit(producer, wire[:OUTAGE_END]))
        await _until(acked(BEFORE_KILL), within=20)
        acked_before_kill = await _kill_primary_mid_commit(pair, producer)
        killed_at = time.monotonic()
        await sending
        # No writable server: analytics keeps acknowledging, from its spool.
        await _until(acked(OUTAGE_END), within=20)
        assert _metric(host, "analytics_spool_entries") > 0, "nothing was spooled"
        reads = await _reads_while_down(pair.standby_dsn, producer.producer_id, acked_before_kill)

        promote_started = time.monotonic()
        await asyncio.to_thread(pair.promote)
        promoted_at = time.monotonic()
        drained = asyncio.create_task(
            _until(lambda: _metric(host, "analytics_spool_entries") == 0, RESUME_WITHIN_S)
        )
        await _submit(producer, wire[OUTAGE_END:-HELD_UNTIL_DRAINED])
        drained_after = await drained
        # With the spool empty, the last frames must go straight to the promoted server.
        direct_writes_before = _direct_writes(host)
        await _submit(producer, wire[-HELD_UNTIL_DRAINED:])
        await _until(acked(len(wire)), within=RESUME_WITHIN_S)
        resumed_after = time.monotonic() - promoted_at
        assert _direct_writes(host) > direct_writes_before
        replayed = (_replayed(host, "applied"), _replayed(host, "already_applied"))

    print(
        f"\npostgres failover (spooling): killed -> promote {promote_started - killed_at:.2f} s"
        f" (operator pause), promote {promoted_at - promote_started:.2f} s,"
        f" promoted -> spool drained {drained_after:.2f} s, -> last frames committed"
        f" {resumed_after:.2f} s (after {len(wire) - OUTAGE_END - HELD_UNTIL_DRAINED} frames"
        f" {PACE_S} s apart); {_latencies(reads, producer, registry)};"
        f" replayed {replayed[0]:.0f} applied, {replayed[1]:.0f} already applied"
    )
    assert resumed_after < RESUME_WITHIN_S
    assert max(reads) < MAX_READ_LATENCY_S
    assert replayed[0] > 0
    acks, acks_within = _ack_latencies(registry)
    assert acks_within == acks, f"acknowledgements slower than {MAX_ACK_LATENCY_S} s"
    await _assert_all_stored_once(pair.standby_dsn, frames, producer)
    # As services find it: the multi-host DSN now leads to the promoted server.
    assert await producer_mark(pair.dsn, producer.producer_id) == producer.stats.batches_sent


async def test_without_spool_room_the_producer_resends_after_promotion(
    replicated_postgres: ReplicatedPostgres, decoder: str, tmp_path: Path
) -> None:
    """The spool at its smallest fills during the outage: analytics then fails the stream
    (UNAVAILABLE, engine rolled back) and the producer resends on new streams, with
    backoff, until the promoted server takes the writes."""
    pair = replicated_postgres
    frames = traffic()
    wire = _wire(frames)
    spool = tmp_path / "spool"
    async with (
        _analytics(pair.dsn, spool, decoder, spool_max_bytes=SMALLEST_SPOOL) as host,
        _producing(f"127.0.0.1:{host.grpc_port}") as (producer, registry),
    ):
        acked = _acked(producer)
        sending = asyncio.create_task(_submit(producer, wire))
        await _until(acked(BEFORE_KILL), within=20)
        acked_before_kill = await _kill_primary_mid_commit(pair, producer)
        killed_at = time.monotonic()
        await sending
        await _until(lambda: producer.stats.batches_resent > 0, within=10)  # the spool filled
        reads = await _reads_while_down(pair.standby_dsn, producer.producer_id, acked_before_kill)
        acked_in_outage = producer.stats.frames_acknowledged
        spooled = _metric(host, "analytics_spool_entries")

        promote_started = time.monotonic()
        await asyncio.to_thread(pair.promote)
        promoted_at = time.monotonic()
        await _until(acked(len(wire)), within=RESUME_WITHIN_S)
        resumed_after = time.monotonic() - promoted_at

    print(
        f"\npostgres failover (spool full): killed -> promote {promote_started - killed_at:.2f} s,"
        f" promoted -> every frame acknowledged {resumed_after:.2f} s; frames acknowledged"
        f" during the outage {acked_in_outage} of {len(wire)} ({spooled:.0f} batches spooled);"
        f" {_latencies(reads, producer, registry)}"
    )
    assert resumed_after < RESUME_WITHIN_S
    assert max(reads) < MAX_READ_LATENCY_S
    assert acked_in_outage < len(wire), "the spool never filled"
    await _assert_all_stored_once(pair.standby_dsn, frames, producer)


def _latencies(reads: list[float], producer: DetectionProducer, registry: CollectorRegistry) -> str:
    name = "inference_analytics_ack_latency_seconds"
    acks = registry.get_sample_value(f"{name}_count") or 1.0
    mean = (registry.get_sample_value(f"{name}_sum") or 0.0) / acks
    stats = producer.stats
    return (
        f"standby reads during outage {len(reads)}, max {max(reads) * 1000:.1f} ms;"
        f" ack latency mean {mean * 1000:.1f} ms; batches sent {stats.batches_sent},"
        f" resent {stats.batches_resent}"
    )


# -- the read side: the query service through the failover ------------------------------------

_NS = 1_000_000_000
# Seeded traffic: one camera-scope bin a minute for an hour of a past day.
DAY_S = 1_700_006_400
MINUTES = 60
# Each read asks for this many minutes from a start that moves read by read: answers are
# computed from PostgreSQL, not served from the query service's cache.
SPAN_MINUTES = 10
READ_PAUSE_S = 0.05


def _volume(minute: int) -> int:
    return minute % 5 + 1


def _bin(minute: int, volume: int) -> tuple[object, ...]:
    key = BinKey(CAMERA_ID, Scope.CAMERA, "", ObjectClass.CAR, Direction.NONE,
                 (DAY_S + 60 * minute) * _NS, 60)  # fmt: skip
    return bin_row(BinRecord(key, final=True, volume=volume))


async def _seed(dsn: str) -> None:
    """The schema and an hour of bins on the primary (committed = applied on the standby)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await apply_migrations(pool, [MigrationSet("core", "its_camera_ai.common"), MIGRATIONS])
        await pool.executemany(UPSERT_BIN, [_bin(m, _volume(m)) for m in range(MINUTES)])
    finally:
        await pool.close()


def _with_attrs(dsn: str, attrs: str) -> str:
    return dsn.replace("target_session_attrs=read-write", f"target_session_attrs={attrs}")


@contextlib.asynccontextmanager
async def _query(dsn: str, decoder: str) -> AsyncIterator[ServiceHost]:
    settings = Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"enabled": False},
        database={"dsn": dsn, "connect_timeout_seconds": 1.0, "command_timeout_seconds": 2.0},
        query={"decoder_target": decoder},
    )
    host = ServiceHost(settings, [QUERY_UNIT])
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


class Reader:
    """GetTrafficCounts in a loop through the client's channel (its retries on UNAVAILABLE),
    each answer checked against the bins; latencies by phase of the failover."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.phase = "primary"
        self.latencies: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.extra: dict[int, int] = {}  # minute -> volume written after the seeding

    async def run(self, stop: asyncio.Event) -> None:
        async with aio_channel(self.target) as channel:
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            number = 0
            while not stop.is_set():
                number += 1
                phase, started = self.phase, time.monotonic()
                try:
                    await self.read(stub, number * 7 % (MINUTES - SPAN_MINUTES + 1))
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{phase}: {exc.code().name} {exc.details()}")
                self.latencies.setdefault(phase, []).append(time.monotonic() - started)
                await asyncio.sleep(READ_PAUSE_S)

    async def read(self, stub: query_service_pb2_grpc.QueryServiceStub, first: int) -> None:
        start_s = DAY_S + 60 * first
        request = query_service_pb2.GetTrafficCountsRequest(
            camera=CAMERA,
            time_range=time_range_pb2.TimeRange(
                start_time=timestamp_pb2.Timestamp(seconds=start_s),
                end_time=timestamp_pb2.Timestamp(seconds=start_s + 60 * SPAN_MINUTES),
            ),
            bin_size=duration_pb2.Duration(seconds=60),
        )
        reply = await stub.GetTrafficCounts(request)
        minutes = range(first, first + SPAN_MINUTES)
        assert [b.volume for b in reply.bins] == [self.extra.get(m, _volume(m)) for m in minutes]

    def figures(self) -> str:
        return ", ".join(
            f"{phase} {len(times)} reads (max {max(times) * 1000:.0f} ms)"
            for phase, times in self.latencies.items()
        )


async def test_query_reads_continue_from_the_standby_through_a_failover(
    replicated_postgres: ReplicatedPostgres, decoder: str
) -> None:
    pair = replicated_postgres
    await _seed(pair.primary_dsn)
    stop = asyncio.Event()
    async with _query(_with_attrs(pair.dsn, "any"), decoder) as first:
        reader = Reader(f"127.0.0.1:{first.grpc_port}")
        reading = asyncio.create_task(reader.run(stop))
        try:
            await asyncio.sleep(OUTAGE_S)
            reader.phase = "primary dead"
            await asyncio.to_thread(pair.kill_primary)
            await asyncio.sleep(OUTAGE_S)
            # A query service starting now finds only the standby, read-only: it verifies the
            # migrations there instead of applying them, and answers.
            started = time.monotonic()
            async with _query(_with_attrs(pair.dsn, "prefer-standby"), decoder) as second:
                second_start = time.monotonic() - started
                async with aio_channel(f"127.0.0.1:{second.grpc_port}") as channel:
                    await reader.read(query_service_pb2_grpc.QueryServiceStub(channel), 0)
            await asyncio.to_thread(pair.promote)
            reader.phase = "promoted"
            # The promoted server takes writes, and the query service reads them (in a span
            # no read asked for before: no cached answer may stand in for it).
            writer = await asyncpg.connect(pair.dsn, timeout=MAX_READ_LATENCY_S)
            try:
                await writer.execute(UPSERT_BIN, *_bin(MINUTES, 100))
            finally:
                await writer.close()
            reader.extra[MINUTES] = 100
            async with aio_channel(f"127.0.0.1:{first.grpc_port}") as channel:
                stub = query_service_pb2_grpc.QueryServiceStub(channel)
                await reader.read(stub, MINUTES - SPAN_MINUTES + 1)
            await asyncio.sleep(OUTAGE_S)
        finally:
            stop.set()
            await reading
    print(
        f"\nquery reads through a postgres failover (target_session_attrs=any): "
        f"{reader.figures()}; {len(reader.failures)} failed; a second instance started on the"
        f" standby (migrations verified) in {second_start * 1000:.0f} ms"
    )
    assert reader.failures == []
    assert set(reader.latencies) == {"primary", "primary dead", "promoted"}
    assert all(len(times) >= 3 for times in reader.latencies.values())
    assert max(max(times) for times in reader.latencies.values()) < MAX_READ_LATENCY_S
