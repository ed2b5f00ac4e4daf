"""Camera rings in: one reader thread per camera, frames offered to the batcher.

A ``CameraFeed`` attaches to its camera's ring and hands every frame to the batcher as a
zero-copy view. It outlives its ring: when the decoder closes the ring (camera stopped, or
re-created at a new resolution) or its writer dies, the feed attaches again, with a capped
backoff while the ring is absent. ``Feeds`` holds the feeds of the cameras on this node and
starts, replaces and stops them as discovery reports cameras coming and going.

What happens to a frame after the model (detections to analytics, its span, the skipped
counts) is ``FrameSink``'s business, on the batching thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from google.protobuf import timestamp_pb2
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from its.analytics.v1 import detection_batch_pb2
from its.common.v1 import detection_pb2, geometry_pb2
from its_camera_ai import shm
from its_camera_ai.common import Backoff
from its_camera_ai.inference._batching import BatcherClosed, DynamicBatcher, Work
from its_camera_ai.inference._metrics import InferenceMetrics
from its_camera_ai.inference.models import Detections

__all__ = ["CameraFeed", "Feeds", "FrameSink", "to_detection_protos"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("its_camera_ai.inference")

_READ_TIMEOUT = 0.25
_REATTACH_MIN, _REATTACH_MAX = 0.05, 2.0


def to_detection_protos(result: Detections) -> list[detection_pb2.Detection]:
    boxes, scores, classes = result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()
    return [
        detection_pb2.Detection(
            box=geometry_pb2.BoundingBox(x_min=b[0], y_min=b[1], x_max=b[2], y_max=b[3]),
            object_class=detection_pb2.ObjectClass.ValueType(c),
            score=s,
        )
        for b, s, c in zip(boxes, scores, classes, strict=True)
    ]


def _parent(frame: shm.Frame) -> Context | None:
    tc = frame.trace
    if tc is None:
        return None
    remote = SpanContext(
        int.from_bytes(tc.trace_id, "big"),
        int.from_bytes(tc.span_id, "big"),
        is_remote=True,
        trace_flags=TraceFlags(tc.flags),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


class FrameSink:
    """What becomes of a camera frame once the model ran (or did not run) on it."""

    def __init__(self, metrics: InferenceMetrics) -> None:
        self._metrics = metrics
        self._deliver: Callable[[str, detection_batch_pb2.FrameDetections], None] | None = None

    def connect(self, deliver: Callable[[str, detection_batch_pb2.FrameDetections], None]) -> None:
        """Where detections go; set before any feed starts (the producer's target may be
        this very server, known only once it listens)."""
        self._deliver = deliver

    def skipped(self, camera: str, reason: str, frames: int = 1) -> None:
        self._metrics.skipped.labels(camera, reason).inc(frames)

    def done(self, work: Work, result: Detections | None, error: BaseException | None) -> None:
        frame: shm.Frame = work.pixels
        camera = work.lane
        if result is None:
            if error is None:
                reason = "superseded"
            elif isinstance(error, shm.FrameOverwritten):
                reason = "overwritten"
            else:
                reason = "failed"
            self.skipped(camera, reason)
            frame.release()
            return
        self._metrics.frames.labels("ring").inc()
        now_wall = time.time_ns()
        capture_ns = frame.capture_ns
        if capture_ns > 0:
            self._metrics.capture_to_detections.observe(max(now_wall - capture_ns, 0) / 1e9)
        # The frame's span starts when it entered the queue, as a child of the decoder's.
        waited = time.monotonic_ns() - work.enqueued_ns
        span = _tracer.start_span(
            "inference.frame",
            context=_parent(frame),
            kind=trace.SpanKind.CONSUMER,
            start_time=now_wall - waited,
            attributes={
                "camera": camera,
                "frame_sequence": frame.sequence,
                "batch_size": work.batch_size,
                "detections": len(result.scores),
            },
        )
        ctx = span.get_span_context()
        traceparent = ""
        if ctx.is_valid:
            traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        message = detection_batch_pb2.FrameDetections(
            frame_sequence=frame.sequence,
            capture_time=timestamp_pb2.Timestamp(
                seconds=capture_ns // 1_000_000_000, nanos=capture_ns % 1_000_000_000
            ),
            frame_size=geometry_pb2.ImageSize(width=frame.width, height=frame.height),
            detections=to_detection_protos(result),
            traceparent=traceparent,
        )
        frame.release()
        assert self._deliver is not None, "FrameSink.connect() was not called"
        self._deliver(f"cameras/{camera}", message)
        span.end()


class CameraFeed:
    """Reads one camera's ring on a thread of its own until ``stop``."""

    def __init__(
        self,
        camera: str,
        ring: str,
        batcher: DynamicBatcher,
        sink: FrameSink,
        *,
        score_threshold: float,
        pin_memory: bool,
    ) -> None:
        self.camera = camera
        self.ring = ring
        self._batcher = batcher
        self._sink = sink
        self._threshold = score_threshold
        self._pin = pin_memory
        self._stop = threading.Event()
        self.frames_offered = 0
        self._reported_drops = 0
        self.attached = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{camera}", daemon=True)
        self._thread.start()

    def _attach(self) -> shm.RingReader | None:
        backoff = Backoff(_REATTACH_MIN, _REATTACH_MAX)
        while not self._stop.is_set():
            try:
                return shm.attach(self.ring, pin_memory=self._pin)
            except (shm.RingNotFound, shm.RingCorrupt, shm.IncompatibleVersion) as exc:
                _log.debug("ring not ready", extra={"camera": self.camera, "error": str(exc)})
            except shm.ShmError as exc:
                _log.warning("cannot attach ring", extra={"camera": self.camera, "error": str(exc)})
            self._stop.wait(backoff.next_delay())
        return None

    def _run(self) -> None:
        while (reader := self._attach()) is not None:
            _log.info("reading ring", extra={"camera": self.camera, "ring": self.ring})
            self.attached.set()
            try:
                self._read(reader)
            finally:
                self.attached.clear()
                self._count_drops(reader)
                self._reported_drops = 0  # the next reader counts from zero
                reader.close()

    def _read(self, reader: shm.RingReader) -> None:
        while not self._stop.is_set():
            try:
                frame = reader.read_next(timeout=_READ_TIMEOUT)
            except shm.WriterDead:
                # A restarted decoder reclaims the ring under the same name: keep reading.
                self._stop.wait(_READ_TIMEOUT)
                continue
            except (shm.RingClosed, shm.RingNotFound) as exc:
                _log.info("ring went away", extra={"camera": self.camera, "reason": str(exc)})
                return
            self._count_drops(reader)
            if frame is None:
                continue
            try:
                self._batcher.offer(
                    Work(
                        lane=self.camera,
                        pixels=frame,
                        score_threshold=self._threshold,
                        done=self._sink.done,
                    )
                )
            except BatcherClosed:
                return
            self.frames_offered += 1

    def _count_drops(self, reader: shm.RingReader) -> None:
        dropped = reader.stats.frames_dropped
        if dropped > self._reported_drops:
            self._sink.skipped(self.camera, "overrun", dropped - self._reported_drops)
        self._reported_drops = dropped

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


class Feeds:
    """The feeds of this node's cameras, kept in step with discovery."""

    def __init__(
        self,
        batcher: DynamicBatcher,
        sink: FrameSink,
        metrics: InferenceMetrics,
        *,
        score_threshold: float,
        device: torch.device,
    ) -> None:
        self._batcher = batcher
        self._sink = sink
        self._metrics = metrics
        self._threshold = score_threshold
        self._pin = device.type == "cuda"
        self._feeds: dict[str, CameraFeed] = {}
        self._lock = threading.Lock()

    def ring_of(self, camera: str) -> str | None:
        feed = self._feeds.get(camera)
        return feed.ring if feed is not None else None

    def feed(self, camera: str) -> CameraFeed | None:
        return self._feeds.get(camera)

    def cameras(self) -> dict[str, str]:
        return {camera: feed.ring for camera, feed in self._feeds.items()}

    def set(self, camera: str, ring: str | None) -> None:
        """Read ``ring`` for ``camera`` (None or "": stop reading the camera)."""
        with self._lock:
            current = self._feeds.get(camera)
            if current is not None and current.ring == ring:
                return
            if current is not None:
                del self._feeds[camera]
                # Its queued frames go first, so the new ring's frames are not dropped too.
                current.stop()
                self._batcher.drop_lane(camera)
                _log.info("camera detached", extra={"camera": camera, "ring": current.ring})
            if ring:
                self._feeds[camera] = CameraFeed(
                    camera,
                    ring,
                    self._batcher,
                    self._sink,
                    score_threshold=self._threshold,
                    pin_memory=self._pin,
                )
            self._metrics.cameras.set(len(self._feeds))

    def close(self) -> None:
        with self._lock:
            feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.stop()
        self._metrics.cameras.set(0)
