"""The analytics service end to end: a real gRPC server on loopback, real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from its.analytics.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    detection_batch_pb2,
)
from its.common.v1 import error_reason_pb2
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost, load_settings
from its_camera_ai.testing import host_settings
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


@dataclass
class Analytics:
    host: ServiceHost
    channel: grpc.aio.Channel
    dsn: str


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    """The target of a CameraService serving the road camera."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


@pytest.fixture
async def analytics(postgres_dsn: str, decoder: str, tmp_path: Path) -> AsyncIterator[Analytics]:
    settings = AnalyticsServiceSettings(spool_dir=tmp_path / "spool", decoder_target=decoder)
    host = ServiceHost(host_settings(postgres_dsn), [analytics_unit(settings)])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        yield Analytics(host, channel, postgres_dsn)
    finally:
        await channel.close()
        await host.stop()


async def test_batches_are_acknowledged_in_order_and_stored_as_computed(
    analytics: Analytics,
) -> None:
    frames = traffic()
    batches = to_batches(frames, "inference-0/a")
    acks = await stream(analytics.channel, batches)

    assert [a.acknowledged_sequence for a in acks] == [b.sequence for b in batches]
    assert not any(a.duplicate for a in acks)
    assert sum(a.accepted_frames for a in acks) == len(frames)
    expected = reference(frames, synth.road_scene())
    assert expected.crossings >= 10  # the traffic really crossed the lines
    assert await stored(analytics.dsn) == expected
    assert await producer_mark(analytics.dsn, "inference-0/a") == batches[-1].sequence


async def test_a_resend_after_a_broken_stream_is_acknowledged_as_duplicate(
    analytics: Analytics,
) -> None:
    frames = traffic()
    batches = to_batches(frames, "inference-0/b")
    await stream(analytics.channel, batches[:20])
    # The stream broke after 20 acks, the producer had sent 25: it resends from 16 (say it
    # missed the last acks) and goes on.
    acks = await stream(analytics.channel, batches[15:])

    assert [a.duplicate for a in acks[:5]] == [True] * 5
    assert all(a.accepted_frames == 0 for a in acks[:5])
    assert not any(a.duplicate for a in acks[5:])
    assert await stored(analytics.dsn) == reference(frames, synth.road_scene())


async def test_stream_errors_name_the_field_or_the_order(analytics: Analytics) -> None:
    batch = to_batches(traffic(2.0), "p")[0]
    no_producer = detection_batch_pb2.DetectionBatch()
    no_producer.CopyFrom(batch)
    no_producer.producer_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(analytics.channel, [no_producer])
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error_details(caught.value) == ("INVALID_FIELD", ["batch.producer_id"])

    for field, value in (("model", "yolo"), ("model", "models/"), ("model_version", ""),
                         ("model_version", "v 1")):  # fmt: skip
        bad = detection_batch_pb2.DetectionBatch()
        bad.CopyFrom(batch)
        setattr(bad, field, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(analytics.channel, [bad])
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_error_details(caught.value) == ("INVALID_FIELD", [f"batch.{field}"])

    again = detection_batch_pb2.DetectionBatch()
    again.CopyFrom(batch)
    again.sequence = 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(analytics.channel, [batch, again])
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(caught.value)[0] == "SEQUENCE_OUT_OF_ORDER"


async def test_unknown_camera_and_bad_detections_reject_or_repair_frames(
    analytics: Analytics,
) -> None:
    frames = traffic(3.0)
    unknown = to_batches(frames, "p-unknown", camera="cam-nowhere")[:2]
    acks = await stream(analytics.channel, unknown)
    assert [a.rejected_frames for a in acks] == [8, 8]
    assert {r.reason for a in acks for r in a.rejections} == {
        error_reason_pb2.ERROR_REASON_RESOURCE_NOT_FOUND
    }

    bad = to_batches(frames, "p-bad")[:3]
    first = bad[0].frames[0]
    first.detections.add(box={"x_min": 10, "y_min": 10, "x_max": 50, "y_max": 50},
                         score=math.nan, object_class=1)  # fmt: skip
    first.detections.add(box={"x_min": 5000, "y_min": 10, "x_max": 5100, "y_max": 50},
                         score=0.9, object_class=1)  # fmt: skip
    bad[1].frames[0].ClearField("capture_time")
    acks = await stream(analytics.channel, bad)
    assert [a.acknowledged_sequence for a in acks] == [1, 2, 3]
    assert acks[0].rejected_frames == 0  # the bad boxes were dropped, the frame kept
    assert [r.reason for r in acks[1].rejections] == [error_reason_pb2.ERROR_REASON_INVALID_FIELD]
    metrics = analytics.host.runtime.metrics
    issues = {
        s.labels["issue"]: s.value
        for m in metrics.collect() if m.name == "analytics_detection_issues"
        for s in m.samples if s.name.endswith("_total")
    }  # fmt: skip
    assert issues["nonfinite_score"] == 1
    assert issues["outside_frame"] == 1
    rejected = metrics.get_sample_value(
        "analytics_frames_total", {"result": "rejected", "reason": "unknown_camera"}
    )
    assert rejected == 16


async def test_engine_tunables_from_yaml_reach_the_engine_and_its_gauges(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    config = tmp_path / "analytics.yaml"
    config.write_text(
        f"analytics:\n  spool_dir: {tmp_path / 'spool'}\n  decoder_target: {decoder}\n"
        "  spool_max_bytes: 5000000\n"
        "  engine:\n    max_detections: 3\n"
        "    drift_baseline_detections: 1\n    drift_window_detections: 1\n"
        "    drift_chunk_detections: 1\n"
    )
    settings = load_settings(config, config_dir=tmp_path)
    host = ServiceHost(host_settings(postgres_dsn), [analytics_unit(settings.analytics)])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        batch = to_batches(traffic(2.0), "p-capped")[0]
        del batch.frames[1:]
        crowded = batch.frames[0]
        del crowded.detections[:]
        for i in range(5):
            crowded.detections.add(box={"x_min": 100 + 40 * i, "y_min": 400, "x_max": 130 + 40 * i,
                                        "y_max": 430}, score=0.9, object_class=1)  # fmt: skip
        acks = await stream(channel, [batch])
        assert acks[0].accepted_frames == 1
        over_limit = host.runtime.metrics.get_sample_value(
            "analytics_detection_issues_total", {"issue": "over_limit"}
        )
        assert over_limit == 2  # 5 detections, the configured cap of 3
        # What the spool and drift alerts read: the capacity, and each camera's KL once
        # its (here one-detection) window is full.
        metrics = host.runtime.metrics
        assert metrics.get_sample_value("analytics_spool_max_bytes") == 5_000_000
        await stream(channel, to_batches(traffic(2.0), "p-drift")[:2])
        for distribution in ("class", "score"):
            kl = metrics.get_sample_value(
                "analytics_drift_kl", {"camera": synth.CAMERA, "distribution": distribution}
            )
            assert kl is not None
            assert kl >= 0
    finally:
        await channel.close()
        await host.stop()


async def test_retention_deletes_rows_older_than_the_configured_age(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    # About two seconds: the traffic below (an hour old) is past it at once.
    settings = AnalyticsServiceSettings(
        spool_dir=tmp_path / "spool",
        retention_days=2 / 86400,
        retention_interval_seconds=0.3,
        decoder_target=decoder,
    )
    host = ServiceHost(host_settings(postgres_dsn), [analytics_unit(settings)])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        await stream(channel, to_batches(traffic(), "p-old"))
        # Seconds here; a CI machine running everything else at once once took over 10.
        deadline = asyncio.get_running_loop().time() + 30
        while (left := await stored(postgres_dsn)).bins or await producer_mark(
            postgres_dsn, "p-old"
        ):
            metrics = host.runtime.metrics
            assert asyncio.get_running_loop().time() < deadline, (
                f"retention never ran: {len(left.bins)} bins left,"
                f" {metrics.get_sample_value('analytics_retention_deleted_rows_total')} rows"
                " deleted, postgres breaker state"
                f" {metrics.get_sample_value('circuit_breaker_state', {'dependency': 'postgres'})}"
            )
            await asyncio.sleep(0.2)
        assert (await stored(postgres_dsn)).crossings == 0
        deleted = host.runtime.metrics.get_sample_value("analytics_retention_deleted_rows_total")
        assert deleted
    finally:
        await channel.close()
        await host.stop()


async def test_stopping_ends_idle_producer_streams_without_waiting_the_drain(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    base = host_settings(postgres_dsn)
    settings = base.model_copy(update={"grpc": base.grpc.model_copy(update={"drain_seconds": 20})})
    analytics = AnalyticsServiceSettings(spool_dir=tmp_path, decoder_target=decoder)
    host = ServiceHost(settings, [analytics_unit(analytics)])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    batches = to_batches(traffic(), "inference-0/idle")[:3]
    connected = asyncio.Event()

    async def requests() -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest]:
        for batch in batches:
            yield analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)
        await connected.wait()  # a producer between frames: connected, sending nothing

    try:
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        call = stub.StreamDetectionBatches(requests())
        acks = [await call.read() for _ in batches]
        assert [a.acknowledged_sequence for a in acks] == [1, 2, 3]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await host.stop()
        assert loop.time() - started < 5.0  # not the 20 s drain
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "reconnect" in (caught.value.details() or "")
        assert rpc_error_details(caught.value)[0] == "SHUTTING_DOWN"
        assert await producer_mark(postgres_dsn, "inference-0/idle") == 3
    finally:
        connected.set()
        await channel.close()


async def test_a_stream_cancelled_while_waiting_leaves_no_unretrieved_task(
    analytics: Analytics,
) -> None:
    """A client gone while analytics waits for its next batch (a reset connection): the
    pending read must not surface later as "Task exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        for _ in range(3):
            requests: asyncio.Queue[Any] = asyncio.Queue()

            async def feed(queue: asyncio.Queue[Any] = requests) -> AsyncIterator[Any]:
                while (request := await queue.get()) is not None:
                    yield request

            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(analytics.channel)
            call = stub.StreamDetectionBatches(feed())
            await asyncio.sleep(0.2)  # the server waits for the first batch
            call.cancel()
            await asyncio.sleep(0.2)
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(previous)
    assert not [c for c in unretrieved if "never retrieved" in str(c.get("message"))]
