"""The detection producer against a real analytics service on loopback, real PostgreSQL.

Frames are submitted from plain threads, as the inference batching thread does. Analytics is
stopped and restarted on the same port to break the stream; nothing here mocks gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from its.analytics.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    detection_batch_pb2,
)
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost, Settings
from its_camera_ai.inference import (
    DetectionProducer,
    ProducerMetrics,
    ProducerStats,
    new_producer_id,
)
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    Totals,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    to_batches,
    traffic,
)
from tests.conftest import free_port

CAMERA = f"cameras/{CAMERA_ID}"
OTHER_ID = "cam-2"
OTHER = f"cameras/{OTHER_ID}"
Frame = detection_batch_pb2.FrameDetections


@dataclass
class Analytics:
    """Starts and stops analytics hosts on one fixed port, one DSN and one spool."""

    dsn: str
    port: int
    spool: Path
    decoder_target: str
    host: ServiceHost | None = None

    async def start(self) -> ServiceHost:
        settings = Settings(
            grpc={"host": "127.0.0.1", "port": self.port, "drain_seconds": 0.3},
            http={"enabled": False},
            database={"dsn": self.dsn},
        )
        host = ServiceHost(
            settings,
            [
                analytics_unit(
                    AnalyticsServiceSettings(
                        spool_dir=self.spool, decoder_target=self.decoder_target
                    )
                )
            ],
        )
        await host.start()
        self.host = host
        return host

    async def stop(self) -> None:
        if self.host is not None:
            host, self.host = self.host, None
            await host.stop()


@pytest.fixture
async def analytics(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Analytics]:
    """Analytics knowing cam-1 and cam-2 (same road scene) from a CameraService, not started
    yet."""
    cameras = {camera_id: camera_proto(synth.road_scene()) for camera_id in (CAMERA_ID, OTHER_ID)}
    async with serve_cameras(cameras) as decoder_target:
        service = Analytics(postgres_dsn, free_port(), tmp_path / "spool", decoder_target)
        try:
            yield service
        finally:
            await service.stop()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make_producer(
    analytics: Analytics, registry: CollectorRegistry
) -> AsyncIterator[Callable[..., DetectionProducer]]:
    made: list[DetectionProducer] = []

    def make(target: str | None = None, **overrides: object) -> DetectionProducer:
        options: dict[str, object] = {
            "producer_id": new_producer_id("inference-test"),
            "model": "models/yolo",
            "model_version": "1",
            "metrics": ProducerMetrics(registry),
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.3,
            **overrides,
        }
        target = target or f"127.0.0.1:{analytics.port}"
        producer = DetectionProducer(target, **options)  # type: ignore[arg-type]
        made.append(producer)
        return producer

    yield make
    for producer in made:
        await producer.close(drain_timeout=0.5)


def wire_frames(duration_s: float) -> list[Frame]:
    """Synthetic traffic as FrameDetections, in frame_sequence order."""
    return [f for batch in to_batches(traffic(duration_s), "unused") for f in batch.frames]


def submit_from_thread(
    producer: DetectionProducer, items: Sequence[tuple[str, Frame]], pause_every: int = 8
) -> threading.Thread:
    """Submit from a plain thread (the batching thread's role), pausing now and then."""

    def run() -> None:
        for i, (camera, frame) in enumerate(items):
            producer.submit(camera, frame)
            if i % pause_every == pause_every - 1:
                time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def until(
    producer: DetectionProducer, done: Callable[[ProducerStats], bool], within: float = 15.0
) -> ProducerStats:
    deadline = time.monotonic() + within
    while not done(stats := producer.stats):
        assert time.monotonic() < deadline, f"timed out; stats: {stats}"
        await asyncio.sleep(0.02)
    return stats


def expected(frames: Sequence[Frame], duration_s: float, skip: int = 0) -> Totals:
    """What an undisturbed engine computes from the frames after the first ``skip``."""
    # The same traffic at the same capture times: made again "now", its bins would differ.
    inputs = traffic(duration_s, start_ns=frames[0].capture_time.ToNanoseconds())[skip:]
    assert len(inputs) == len(frames) - skip
    return reference(inputs, synth.road_scene())


def same_totals(stored: Totals, want: Totals) -> bool:
    return (stored.bins, stored.crossings, len(stored.events)) == (
        want.bins,
        want.crossings,
        len(want.events),
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_frames_of_two_cameras_are_acknowledged_and_stored_once(
    analytics: Analytics,
    make_producer: Callable[..., DetectionProducer],
    registry: CollectorRegistry,
) -> None:
    frames = wire_frames(24.0)
    await analytics.start()
    producer = make_producer()
    # Queued before start and shuffled: they leave as one batch per camera, which must be in
    # frame_sequence order (analytics rejects a frame after a later one as DUPLICATE_FRAME).
    head = list(enumerate(frames[:40]))
    random.Random(7).shuffle(head)
    for _, frame in head:
        producer.submit(CAMERA, frame)
        producer.submit(OTHER, frame)
    await producer.start()
    thread = submit_from_thread(producer, [(c, f) for f in frames[40:] for c in (CAMERA, OTHER)])

    stats = await until(producer, lambda s: s.frames_acknowledged == 2 * len(frames))
    thread.join()

    assert stats.frames_submitted == 2 * len(frames)
    assert stats.frames_rejected == {}
    assert stats.frames_undelivered == {}
    assert stats.batches_acknowledged == stats.batches_sent
    assert stats.connected
    assert stats.pending_frames == stats.unacked_batches == 0
    # Sequences 1, 2, ... without gaps: the last one is the number of batches.
    assert await producer_mark(analytics.dsn, producer.producer_id) == stats.batches_sent
    want = expected(frames, 24.0)
    assert want.crossings >= 10
    for camera_id in (CAMERA_ID, OTHER_ID):
        assert same_totals(await stored(analytics.dsn, camera_id), want)
    assert sample(registry, "inference_analytics_frames_acknowledged_total") == 2 * len(frames)
    assert sample(registry, "inference_analytics_capture_to_send_latency_seconds_count") == (
        2 * len(frames)
    )
    assert sample(registry, "inference_analytics_ack_latency_seconds_count") == stats.batches_sent
    assert sample(registry, "inference_analytics_connected") == 1


async def test_the_stream_survives_analytics_down_and_restarted_on_the_same_port(
    analytics: Analytics, make_producer: Callable[..., DetectionProducer]
) -> None:
    frames = wire_frames(24.0)
    producer = make_producer()
    await producer.start()

    # Analytics not there yet: frames wait.
    submit_from_thread(producer, [(CAMERA, f) for f in frames[:40]]).join()
    await asyncio.sleep(0.2)
    assert producer.stats.frames_acknowledged == 0
    assert not producer.stats.connected

    await analytics.start()
    await until(producer, lambda s: s.frames_acknowledged == 40)
    # A steady trickle (small batches, some always in flight), then analytics stops under
    # it: the stream breaks mid-flight and the thread keeps submitting.
    thread = submit_from_thread(producer, [(CAMERA, f) for f in frames[40:200]], pause_every=1)
    await until(producer, lambda s: s.frames_acknowledged >= 80)
    await analytics.stop()
    thread.join()
    await asyncio.sleep(0.1)
    assert not producer.stats.connected

    await analytics.start()
    submit_from_thread(producer, [(CAMERA, f) for f in frames[200:]]).join()
    stats = await until(producer, lambda s: s.frames_acknowledged == len(frames))

    assert stats.frames_submitted == len(frames)
    assert stats.frames_undelivered == {}
    assert stats.frames_rejected == {}
    assert stats.reconnects >= 1
    assert stats.unacked_batches == stats.pending_frames == 0
    assert await producer_mark(analytics.dsn, producer.producer_id) == stats.batches_sent
    # Applied exactly once: the tables hold what one undisturbed pass computes.
    assert same_totals(await stored(analytics.dsn, CAMERA_ID), expected(frames, 24.0))


async def test_a_full_buffer_drops_the_oldest_frames_and_counts_them(
    analytics: Analytics,
    make_producer: Callable[..., DetectionProducer],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames = wire_frames(12.0)  # 120 frames
    producer = make_producer(max_pending_frames=50)
    await producer.start()
    with caplog.at_level(logging.WARNING, logger="its_camera_ai.inference"):
        submit_from_thread(producer, [(CAMERA, f) for f in frames]).join()
        stats = await until(producer, lambda s: s.frames_undelivered.get("buffer_full") == 70)
        assert stats.pending_frames == 50
        assert sample(registry, "inference_analytics_pending_frames") == 50
        await until(producer, lambda _: any("buffer full" in r.message for r in caplog.records))
    drop_log = next(r for r in caplog.records if "buffer full" in r.message)
    assert drop_log.by_camera == {CAMERA: 70}  # type: ignore[attr-defined]

    await analytics.start()
    stats = await until(producer, lambda s: s.frames_acknowledged == 50)
    assert stats.frames_submitted == stats.frames_acknowledged + 70
    assert stats.frames_undelivered == {"buffer_full": 70}
    assert stats.frames_rejected == {}
    dropped = sample(registry, "inference_analytics_frames_undelivered_total", reason="buffer_full")
    assert dropped == 70
    # The newest 50 were kept: the tables hold what those frames alone compute.
    assert same_totals(await stored(analytics.dsn, CAMERA_ID), expected(frames, 12.0, 70))


async def test_rejected_frames_are_counted_by_reason_and_not_resent(
    analytics: Analytics,
    make_producer: Callable[..., DetectionProducer],
    registry: CollectorRegistry,
) -> None:
    frames = wire_frames(6.0)
    host = await analytics.start()
    producer = make_producer()
    await producer.start()
    items = [(c, f) for f in frames for c in (CAMERA, "cameras/cam-nowhere")]
    submit_from_thread(producer, items).join()
    producer.submit("camera-7", frames[0])  # not a camera name: never sent

    await until(producer, lambda s: s.unacked_batches == s.pending_frames == 0)
    await asyncio.sleep(0.2)  # a resend would show up by now
    stats = producer.stats
    assert stats.frames_rejected == {"RESOURCE_NOT_FOUND": len(frames)}
    assert stats.frames_acknowledged == len(frames)
    assert stats.frames_undelivered == {"invalid_batch": 1}
    assert stats.frames_submitted == 2 * len(frames) + 1
    assert stats.batches_resent == 0
    rejected = sample(
        registry, "inference_analytics_frames_rejected_total", reason="RESOURCE_NOT_FOUND"
    )
    assert rejected == len(frames)
    # Analytics applied each batch once and saw no duplicate.
    analytics_metrics = host.runtime.metrics
    applied = analytics_metrics.get_sample_value("analytics_batches_total", {"outcome": "applied"})
    assert applied == stats.batches_sent
    assert not analytics_metrics.get_sample_value(
        "analytics_batches_total", {"outcome": "duplicate"}
    )


async def test_a_batch_analytics_finds_malformed_is_dropped_and_the_rest_delivered(
    analytics: Analytics,
    make_producer: Callable[..., DetectionProducer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Let a camera name analytics refuses past the producer's own check (a producer bug).
    monkeypatch.setattr(
        DetectionProducer, "camera_id", staticmethod(lambda name: name[len("cameras/") :])
    )
    frames = wire_frames(6.0)
    await analytics.start()
    producer = make_producer()
    await producer.start()
    # Interleaved from a thread: each refused batch breaks the stream with others in flight.
    bad = frames[5::10]
    items = [(CAMERA, f) for f in frames]
    for i, frame in reversed(list(enumerate(bad))):
        items.insert(5 + 10 * i, ("cameras/Not_Valid", frame))
    submit_from_thread(producer, items, pause_every=1).join()

    stats = await until(
        producer,
        lambda s: s.frames_acknowledged + sum(s.frames_undelivered.values()) == len(items),
    )
    assert stats.frames_acknowledged == len(frames)
    assert stats.frames_undelivered == {"invalid_batch": len(bad)}
    assert stats.frames_rejected == {}
    assert same_totals(await stored(analytics.dsn, CAMERA_ID), expected(frames, 6.0))


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung analytics)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


class _Stalled(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """An analytics that takes the stream and never acknowledges anything."""

    async def StreamDetectionBatches(
        self, request_iterator: AsyncIterator[object], context: object
    ) -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesResponse]:
        async for _ in request_iterator:
            pass
        await asyncio.Event().wait()
        yield analytics_service_pb2.StreamDetectionBatchesResponse()  # never reached


@pytest.fixture
async def stalled() -> AsyncIterator[int]:
    server = grpc.aio.server()
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(_Stalled(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@pytest.mark.parametrize("down", ["refused", "hung", "stalled"])
async def test_close_with_analytics_down_returns_in_time_and_counts_shutdown(
    make_producer: Callable[..., DetectionProducer],
    registry: CollectorRegistry,
    blackhole: int,
    stalled: int,
    down: str,
) -> None:
    frames = wire_frames(3.0)
    ports = {"hung": blackhole, "stalled": stalled}
    producer = make_producer(f"127.0.0.1:{ports[down]}" if down in ports else None)
    await producer.start()
    submit_from_thread(producer, [(CAMERA, f) for f in frames]).join()
    await asyncio.sleep(0.3)

    started = time.monotonic()
    await producer.close(drain_timeout=0.5)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    stats = producer.stats
    assert stats.frames_undelivered == {"shutdown": len(frames)}
    assert stats.frames_acknowledged == 0
    assert not stats.connected
    if down == "stalled":
        assert stats.batches_sent >= 1  # they were in flight, never acknowledged
    producer.submit(CAMERA, frames[0])  # after close: counted, not queued
    assert producer.stats.frames_undelivered == {"shutdown": len(frames) + 1}
    undelivered = sample(
        registry, "inference_analytics_frames_undelivered_total", reason="shutdown"
    )
    assert undelivered == len(frames) + 1
