"""The inference server's one long-lived detection stream to AnalyticsService.

``DetectionProducer`` speaks the producer side of ``StreamDetectionBatches`` (see
``protos/its/analytics/v1/analytics_service.proto``): every frame the batching thread hands to
``submit()`` is delivered exactly once or counted, by reason, as not delivered (what is counted,
and under which label: ``_producer_accounting``).

It composes three parts, each in a module of its own:

* ``PendingFrames`` (``_producer_pending``): ``submit()`` runs on the inference batching
  thread, never on the event loop. It only appends to a per-camera queue under a lock and
  schedules one wake-up of the loop, so a slow or absent analytics service can never stall
  inference. Beyond ``max_pending_frames`` the oldest frames are dropped, counted
  (``buffer_full``) and logged.
* ``AckWindow`` (``_producer_window``): while fewer than ``max_unacked_batches`` batches are
  unacknowledged the producer sends at once one batch per camera with that camera's pending
  frames (the to-analytics budget is 5 ms p99); while the window is full frames wait and are
  coalesced into bigger batches on the next free slot, so batching grows exactly with
  back-pressure. Batches are numbered once and resent, in order, after a broken stream.
* ``AnalyticsConnection`` (``_producer_connection``): the channel and the one background
  stream, reopened after capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from its.analytics.v1 import analytics_service_pb2, detection_batch_pb2
from its_camera_ai.common import PLAINTEXT, PeerAccess, camera_id_from_name, is_token
from its_camera_ai.inference._producer_accounting import (
    BUFFER_FULL,
    INVALID_BATCH,
    SHUTDOWN,
    ProducerLedger,
    ProducerMetrics,
    ProducerStats,
)
from its_camera_ai.inference._producer_connection import AnalyticsConnection, DetectionStream
from its_camera_ai.inference._producer_pending import PendingFrames
from its_camera_ai.inference._producer_window import AckWindow, Batch

__all__ = [
    "PROTOCOL_MAX_FRAMES",
    "PROTOCOL_MAX_UNACKED",
    "DetectionProducer",
    "new_producer_id",
]

_log = logging.getLogger(__name__)

_Request = analytics_service_pb2.StreamDetectionBatchesRequest
_Ack = analytics_service_pb2.StreamDetectionBatchesResponse

# The protocol's limits (analytics_service.proto, detection_batch.proto).
PROTOCOL_MAX_UNACKED = 64
PROTOCOL_MAX_FRAMES = 256
# Checked here as analytics checks them: a batch analytics finds malformed fails the whole
# stream (INVALID_ARGUMENT), which would stall every camera for one producer bug.

# Camera names that were refused are logged once each, up to this many names.
_REFUSED_CAMERAS_LOGGED = 100


def new_producer_id(prefix: str) -> str:
    """A producer id unique to this process lifetime: ``"{prefix}/{uuid4}"``."""
    producer_id = f"{prefix}/{uuid.uuid4()}"
    if not is_token(producer_id):
        raise ValueError(f"producer id prefix {prefix!r} must be printable ASCII, no spaces")
    return producer_id


def _check_limits(
    max_unacked_batches: int,
    max_frames_per_batch: int,
    max_pending_frames: int,
    backoff_initial_seconds: float,
    backoff_max_seconds: float,
) -> None:
    if not 1 <= max_unacked_batches <= PROTOCOL_MAX_UNACKED:
        raise ValueError(f"max_unacked_batches must be 1..{PROTOCOL_MAX_UNACKED}")
    if not 1 <= max_frames_per_batch <= PROTOCOL_MAX_FRAMES:
        raise ValueError(f"max_frames_per_batch must be 1..{PROTOCOL_MAX_FRAMES}")
    if max_pending_frames < 1:
        raise ValueError("max_pending_frames must be at least 1")
    if not 0 < backoff_initial_seconds <= backoff_max_seconds:
        raise ValueError("need 0 < backoff_initial_seconds <= backoff_max_seconds")


class DetectionProducer:
    """Delivers detections to AnalyticsService exactly once over one long-lived stream.

    ``submit()`` is thread-safe and never blocks; ``start()`` and ``close()`` run on the event
    loop that owns the stream.

    ``max_unacked_batches`` trades latency for throughput: analytics applies one producer's
    batches one after another, so while it is slower than the frame rate a frame can queue
    behind a full window of batches before coalescing starts. A smaller window starts
    coalescing sooner.
    """

    def __init__(
        self,
        target: str,
        *,
        producer_id: str,
        model: str,
        model_version: str,
        metrics: ProducerMetrics,
        max_unacked_batches: int = PROTOCOL_MAX_UNACKED,
        max_pending_frames: int = 9000,
        max_frames_per_batch: int = PROTOCOL_MAX_FRAMES,
        backoff_initial_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        access: PeerAccess = PLAINTEXT,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not is_token(producer_id):
            raise ValueError("producer_id must be 1-128 printable ASCII characters")
        model_id = model.removeprefix("models/")
        if model_id == model or not is_token(model_id) or not is_token(model_version):
            raise ValueError(
                'model must be "models/{model}" and model_version 1-128 printable ASCII characters'
            )
        _check_limits(
            max_unacked_batches,
            max_frames_per_batch,
            max_pending_frames,
            backoff_initial_seconds,
            backoff_max_seconds,
        )
        self._target = target
        self._producer_id = producer_id
        self._model = model
        self._model_version = model_version
        self._metrics = metrics
        self._max_frames = max_frames_per_batch
        self._ledger = ProducerLedger(metrics)
        self._pending = PendingFrames(max_pending_frames)
        self._window = AckWindow(max_unacked_batches, self._ledger, metrics)
        self._connection = AnalyticsConnection(
            target,
            self._ledger,
            backoff_initial_seconds=backoff_initial_seconds,
            backoff_max_seconds=backoff_max_seconds,
            access=access,
            channel_options=channel_options,
        )
        self._refused_lock = threading.Lock()  # submit() runs on any thread
        self._refused_cameras: set[str] = set()

        # Event-loop only.
        self._started = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def camera_id(camera: str) -> str | None:
        """The producer's own check of a frame's camera: the id of a ``cameras/{camera}``
        name, None for anything else (refused, ``invalid_batch``)."""
        return camera_id_from_name(camera)

    # -- any thread --------------------------------------------------------------------------

    def submit(self, camera: str, frame: detection_batch_pb2.FrameDetections) -> None:
        """Queue one frame's detections of ``camera`` ("cameras/{id}") for delivery.

        Thread-safe and non-blocking. The frame is kept by reference until it is sent: do not
        change it afterwards.
        """
        self._ledger.count_submitted()
        dropped: int | None = None
        if self.camera_id(camera) is not None:
            dropped = self._pending.add(camera, frame)
        if dropped is None:
            # Why the frame is not even queued; a closed producer's reason comes first.
            self._refused(SHUTDOWN if self._pending.closed else INVALID_BATCH, camera)
            return
        self._metrics.pending_frames.inc(1 - dropped)
        if dropped:
            self._ledger.count_undelivered(BUFFER_FULL, dropped)

    def _refused(self, reason: str, camera: str) -> None:
        self._ledger.count_undelivered(reason, 1)
        # A producer bug, logged once per camera name (a bounded set), not once per frame.
        with self._refused_lock:
            refused = self._refused_cameras
            if camera in refused or len(refused) >= _REFUSED_CAMERAS_LOGGED:
                return
            refused.add(camera)
        _log.error(
            "frame not sent to analytics: producer closed"
            if reason == SHUTDOWN
            else 'frame not sent to analytics: camera is not "cameras/{camera}"',
            extra={"camera": camera, "reason": reason},
        )

    @property
    def producer_id(self) -> str:
        return self._producer_id

    @property
    def target(self) -> str:
        """Analytics' address."""
        return self._target

    @property
    def stats(self) -> ProducerStats:
        return self._ledger.snapshot(
            pending_frames=len(self._pending), unacked_batches=len(self._window)
        )

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and start the stream task on the running loop."""
        if self._started:
            raise RuntimeError("a producer starts once")
        if not self._target:
            raise ValueError("the producer has no target")
        self._started = True
        self._wake = asyncio.Event()
        self._connection.open()
        self._pending.notify(asyncio.get_running_loop(), self._wake.set)
        self._wake.set()  # frames submitted before start
        self._task = asyncio.create_task(
            self._connection.run(self), name=f"detection-producer:{self._target}"
        )

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting frames, send what is pending and wait up to ``drain_timeout`` s for
        the acknowledgements. Frames still unacknowledged then are counted undelivered
        (``shutdown``) and logged. Returns within about ``drain_timeout`` even if analytics is
        down."""
        if not self._pending.close() and self._task is None:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            assert self._wake is not None
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=drain_timeout)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pending.log_drops(force=True)
        lost_pending = self._pending.clear()
        lost_unacked, batches = self._window.abandon()
        self._metrics.pending_frames.dec(lost_pending)
        self._ledger.count_undelivered(SHUTDOWN, lost_pending + lost_unacked)
        if lost_pending or lost_unacked:
            _log.warning(
                "detection producer closed with frames not acknowledged by analytics",
                extra={
                    "pending_frames": lost_pending,
                    "unacked_frames": lost_unacked,
                    "unacked_batches": batches,
                    "drain_timeout_seconds": drain_timeout,
                },
            )
        self._log_closed()
        await self._connection.close()

    def _log_closed(self) -> None:
        stats = self.stats
        _log.info(
            "detection producer closed",
            extra={
                "producer_id": self._producer_id,
                "frames_submitted": stats.frames_submitted,
                "frames_acknowledged": stats.frames_acknowledged,
                "frames_rejected": stats.frames_rejected,
                "frames_undelivered": stats.frames_undelivered,
            },
        )

    # -- event loop: the stream session (see ``StreamSession``) ------------------------------

    def finished(self) -> bool:
        return self._closing and not len(self._pending) and not len(self._window)

    def backlog(self) -> dict[str, int]:
        return {"unacked_batches": len(self._window), "pending_frames": len(self._pending)}

    async def write(self, stream: DetectionStream) -> None:
        wake = self._wake
        assert wake is not None
        await self._window.resend(stream, wake)
        while True:
            wake.clear()
            while self._window.has_room():
                new = self._next_batch()
                if new is None:
                    break
                await self._window.send(stream, new)
            if self._closing and not len(self._pending):
                await stream.done_writing()
                return
            await wake.wait()

    def _next_batch(self) -> Batch | None:
        """The next batch, unacknowledged from now on: the pending frames of the camera
        waiting longest, up to the batch limit, in frame_sequence order."""
        taken = self._pending.take(self._max_frames)
        if taken is None:
            return None
        camera, frames = taken
        self._metrics.pending_frames.dec(len(frames))
        request = _Request()
        wire = request.batch
        wire.producer_id = self._producer_id
        wire.camera = camera
        wire.model = self._model
        wire.model_version = self._model_version
        # Stable: the batching thread's order is kept where frame_sequence ties.
        wire.frames.extend(sorted(frames, key=lambda frame: frame.frame_sequence))
        return self._window.open(request)

    def on_ack(self, ack: _Ack) -> bool:
        if not self._window.acknowledge(ack):
            return False
        assert self._wake is not None
        self._wake.set()
        return True

    def ended(self, code: grpc.StatusCode, details: str, batch_refused: bool) -> bool:
        if code is grpc.StatusCode.OK and self._closing:
            return True
        # Analytics acknowledged everything before the batch it refused: the head.
        return batch_refused and self._window.drop_refused_head(details)
