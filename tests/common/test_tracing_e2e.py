"""One trace per frame across processes: decoder -> inference -> analytics (issue #21).

Three real ``its-camera-ai serve`` processes (decoder, inference, analytics) export their
spans over OTLP/gRPC to a receiver in the test, a real ``TraceService`` on loopback. A
simulated camera runs through them; the receiver must then hold, for one trace, the
decoder's frame span, inference's child of it, analytics' child of that, and analytics'
commit span under it and linked to it. Batches sent straight to analytics show what it does
with a malformed traceparent (ignored, the batch applied) and an unsampled one (no spans).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.common.v1 import detection_pb2, geometry_pb2
from tests.conftest import free_port

_START_WITHIN_S = 60.0
_CHAIN_WITHIN_S = 45.0
_CAMERA = "sim://road?seed=3&width=320&height=240&fps=10"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]
    attributes: dict[str, Any]


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector keeping every span it is sent."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [_received(resource["service.name"], s) for s in scope_spans.spans]
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, find: Any, what: str, within: float) -> Any:
        """``find(spans)``'s first truthy answer, re-asked as spans arrive."""
        deadline = time.monotonic() + within
        while not (found := find(self.spans)):
            left = deadline - time.monotonic()
            if left <= 0:
                names = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"no {what} within {within} s; spans seen: {names}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return found


def _received(service: str, span: Any) -> ReceivedSpan:
    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
    return ReceivedSpan(service.removeprefix("its-camera-ai-"), span.name, span.trace_id.hex(),
                        span.span_id.hex(), span.parent_span_id.hex(),
                        tuple(link.span_id.hex() for link in span.links), attributes)  # fmt: skip


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(0)


@dataclass
class Pipeline:
    decoder: str
    analytics: str
    logs: Path  # <service>.log: each process's stdout and stderr


def _start(service: str, port: int, settings: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ITS_", "OTEL_"))},
        "ITS_GRPC__HOST": "127.0.0.1",
        "ITS_GRPC__PORT": str(port),
        "ITS_GRPC__DRAIN_SECONDS": "1",
        "ITS_HTTP__ENABLED": "false",
        "ITS_LOGGING__LEVEL": "WARNING",
        "ITS_TRACING__SAMPLE_RATIO": "1",
        # The batch span processor's export interval (default 5 s): spans arrive sooner.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        **settings,
    }
    log = (cwd / f"{service}.log").open("wb")
    command = [sys.executable, "-m", "its_camera_ai", "serve", service]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


def _tail(log: Path) -> str:
    return _read(log)[-3000:]


async def _ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        deadline = time.monotonic() + _START_WITHIN_S
        while time.monotonic() < deadline:
            assert process.poll() is None, _tail(log)
            try:
                await asyncio.wait_for(channel.channel_ready(), 1.0)
                return
            except TimeoutError:
                continue
    raise AssertionError(f"not serving within {_START_WITHIN_S} s: {_tail(log)}")


@contextlib.asynccontextmanager
async def _pipeline(
    services: tuple[str, ...], endpoint: str, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    """``services`` as processes exporting spans to ``endpoint``, each serving."""
    ports = {name: free_port() for name in ("decoder", "inference", "analytics")}
    decoder, analytics = f"127.0.0.1:{ports['decoder']}", f"127.0.0.1:{ports['analytics']}"
    common = {"ITS_TRACING__OTLP_ENDPOINT": endpoint}
    settings = {
        "decoder": {**common, "ITS_DATABASE__DSN": postgres_dsn,
                    "ITS_DECODER__RING_PREFIX": f"tr{os.getpid() % 10**6}-"},
        "inference": {**common, "ITS_INFERENCE__DECODER_TARGET": decoder,
                      "ITS_INFERENCE__ANALYTICS_TARGET": analytics,
                      "ITS_INFERENCE__TORCH_THREADS": "1"},
        "analytics": {**common, "ITS_DATABASE__DSN": postgres_dsn,
                      "ITS_ANALYTICS__DECODER_TARGET": decoder,
                      "ITS_ANALYTICS__SPOOL_DIR": str(tmp_path / "spool")},
    }  # fmt: skip
    processes = {name: _start(name, ports[name], settings[name], tmp_path) for name in services}
    try:
        await asyncio.gather(*(
            _ready(ports[name], process, tmp_path / f"{name}.log")
            for name, process in processes.items()
        ))  # fmt: skip
        yield Pipeline(decoder, analytics, tmp_path)
    finally:
        # Inference first: it would wait for analytics to acknowledge its last frames.
        for stage in (("inference",), ("decoder", "analytics")):
            stopping = [processes[name] for name in stage if name in processes]
            for process in stopping:
                process.terminate()
            await asyncio.gather(*(asyncio.to_thread(_stopped, p) for p in stopping))


def _stopped(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _create_camera(decoder: str, camera_id: str, uri: str, *, enabled: bool) -> None:
    async with grpc.aio.insecure_channel(decoder) as channel:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        await stub.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera_id=camera_id, camera=camera_pb2.Camera(source_uri=uri, enabled=enabled)
            ),
            timeout=10,
        )


def _chain(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, ...] | None:
    """A commit span whose trace holds the whole chain: (decoder, inference, analytics
    frame, commit), or None yet."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for commit in (s for s in spans if s.name == "analytics.commit"):
        chain = [commit]
        while len(chain) < 4 and (parent := by_id.get((commit.trace_id, chain[-1].parent_id))):
            chain.append(parent)
        if len(chain) == 4:
            return tuple(reversed(chain))
    return None


async def test_a_frame_is_one_trace_from_decoder_to_analytics_commit(
    receiver: tuple[Receiver, str], postgres_dsn: str, tmp_path: Path
) -> None:
    collector, endpoint = receiver
    services = ("decoder", "inference", "analytics")
    async with _pipeline(services, endpoint, postgres_dsn, tmp_path) as pipeline:
        await _create_camera(pipeline.decoder, "traced", _CAMERA, enabled=True)
        decoder, inference, frame, commit = await collector.wait_for(
            _chain, "decoder -> inference -> analytics frame -> commit trace", _CHAIN_WITHIN_S
        )
    assert (decoder.service, decoder.name, decoder.parent_id) == ("decoder", "decoder.frame", "")
    assert (inference.service, inference.name) == ("inference", "inference.frame")
    assert inference.parent_id == decoder.span_id
    assert (frame.service, frame.name) == ("analytics", "analytics.frame")
    assert frame.parent_id == inference.span_id
    assert frame.attributes["camera"] == "traced"
    assert frame.attributes["frame_sequence"] == inference.attributes["frame_sequence"]
    assert frame.attributes["outcome"] == "accepted"
    assert commit.service == "analytics"
    assert commit.parent_id == frame.span_id
    # Linked to every frame span of its batch, this trace's first among them.
    assert frame.span_id in commit.links
    assert commit.attributes["frames"] == len(commit.links)
    assert commit.attributes["written"] == "postgres"
    assert commit.attributes["camera"] == "traced"


def _detections(sequence: int, traceparent: str) -> detection_batch_pb2.FrameDetections:
    frame = detection_batch_pb2.FrameDetections(
        frame_sequence=sequence,
        frame_size=geometry_pb2.ImageSize(width=320, height=240),
        detections=[detection_pb2.Detection(
            box=geometry_pb2.BoundingBox(x_min=10, y_min=20, x_max=60, y_max=70),
            object_class=detection_pb2.OBJECT_CLASS_CAR, score=0.9,
        )],
        traceparent=traceparent,
    )  # fmt: skip
    frame.capture_time.FromNanoseconds(time.time_ns() - (10 - sequence) * 50_000_000)
    return frame


async def test_analytics_ignores_malformed_traceparents_and_follows_the_sampler(
    receiver: tuple[Receiver, str], postgres_dsn: str, tmp_path: Path
) -> None:
    collector, endpoint = receiver
    # Batches straight to analytics: no inference process.
    async with _pipeline(("decoder", "analytics"), endpoint, postgres_dsn, tmp_path) as pipeline:
        await _probe(collector, pipeline)


async def _send_as_a_producer(
    target: str, batch: detection_batch_pb2.DetectionBatch
) -> list[analytics_service_pb2.StreamDetectionBatchesResponse]:
    """The batch's acknowledgements, resent on UNAVAILABLE as inference does: analytics may
    not have listed the decoder's cameras yet (both processes started together, its breaker
    in front of the decoder may still be open)."""
    request = analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)
    async with grpc.aio.insecure_channel(target) as channel, asyncio.timeout(30):
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        while True:
            try:
                return [ack async for ack in stub.StreamDetectionBatches(iter([request]))]
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(0.5)


async def _probe(collector: Receiver, pipeline: Pipeline) -> None:
    # Known to analytics (through the decoder); disabled: these are its only frames.
    await _create_camera(pipeline.decoder, "probe", _CAMERA, enabled=False)
    sampled = ("5" * 32, "6" * 16)
    unsampled_trace = "7" * 32
    frames = [
        _detections(1, f"00-{sampled[0]}-{sampled[1]}-01"),
        _detections(2, "00-not-a-trace-context"),
        _detections(3, f"00-{'0' * 32}-{'8' * 16}-01"),  # an all-zero trace id is invalid
        _detections(4, f"00-{unsampled_trace}-{'9' * 16}-00"),
        _detections(5, ""),
    ]
    batch = detection_batch_pb2.DetectionBatch(
        producer_id="tracing-probe", sequence=1, camera="cameras/probe", model="models/probe",
        model_version="1", frames=frames,
    )  # fmt: skip
    acks = await _send_as_a_producer(pipeline.analytics, batch)
    # Bad trace contexts cost the frames nothing: all applied.
    assert [(a.acknowledged_sequence, a.accepted_frames) for a in acks] == [(1, len(frames))]

    def probe_commit(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        return next((s for s in spans if s.name == "analytics.commit"
                     and s.attributes["camera"] == "probe"), None)  # fmt: skip

    commit = await collector.wait_for(probe_commit, "the probe batch's commit span", 15.0)
    # Its frame spans ended before it, so were exported with it or before.
    probe_frames = [
        s for s in collector.spans
        if s.name == "analytics.frame" and s.attributes["camera"] == "probe"
    ]  # fmt: skip
    assert len(probe_frames) == 1, probe_frames
    (frame,) = probe_frames
    assert (frame.trace_id, frame.parent_id) == sampled
    assert frame.attributes["frame_sequence"] == 1
    assert (commit.trace_id, commit.parent_id, commit.links) == (
        sampled[0],
        frame.span_id,
        (frame.span_id,),
    )
    assert commit.attributes["frames"] == len(frames)
    assert not [s for s in collector.spans if s.trace_id == unsampled_trace]
    # Two malformed ones, one log line (rate-limited), with the count.
    lines = _read(pipeline.logs / "analytics.log").splitlines()
    malformed = [json.loads(line) for line in lines if "malformed traceparent" in line]
    assert [line["malformed_since_last_logged"] for line in malformed] == [1]
