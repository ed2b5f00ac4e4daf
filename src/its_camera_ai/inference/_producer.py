"""The inference server's one long-lived detection stream to AnalyticsService.

``DetectionProducer`` speaks the producer side of ``StreamDetectionBatches`` (see
``protos/its/analytics/v1/analytics_service.proto``): every frame the batching thread hands to
``submit()`` is delivered exactly once or counted, by reason, as not delivered (what is counted,
and under which label: ``_producer_accounting``).

How it is built, and why:

* ``submit()`` runs on the inference batching thread, never on the event loop. It only appends
  to a per-camera queue under a ``threading.Lock`` and schedules one wake-up of the loop, so a
  slow or absent analytics service can never stall inference.
* One background task owns the stream. While fewer than ``max_unacked_batches`` batches are
  unacknowledged it sends at once one batch per camera with that camera's pending frames (the
  to-analytics budget is 5 ms p99); while the window is full frames wait and are coalesced
  into bigger batches on the next free slot, so batching grows exactly with back-pressure.
* Pending frames are bounded: beyond ``max_pending_frames`` the oldest are dropped, counted
  (``buffer_full``) and logged. Unacknowledged batches are bounded by the window.
* Batches are numbered once (``sequence``, 1, 2, ... over the producer's lifetime) and kept
  until a cumulative acknowledgement covers them. A broken stream is reopened after capped,
  jittered exponential backoff and every unacknowledged batch is resent, in order, before new
  ones; analytics recognises those it already made durable (``duplicate``), so each frame is
  counted exactly once.

The channel is built here rather than with ``its_camera_ai.client.aio_channel``: that one
enables gRPC retries on streaming methods (the first ``grpc.enable_retries`` option wins,
so callers cannot turn it off), which would replay requests behind the producer's back, hide
breaks from its accounting and delay failure detection. This stream has no deadline: it lives
as long as the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.common import ERROR_DOMAIN, camera_id_from_name, is_token
from its_camera_ai.inference._producer_accounting import (
    BUFFER_FULL,
    INVALID_BATCH,
    SHUTDOWN,
    ProducerMetrics,
    ProducerStats,
)

__all__ = [
    "DetectionProducer",
    "new_producer_id",
]

_log = logging.getLogger(__name__)

_Request = analytics_service_pb2.StreamDetectionBatchesRequest
_Ack = analytics_service_pb2.StreamDetectionBatchesResponse
_Call = grpc.aio.StreamStreamCall[_Request, _Ack]

# The protocol's limits (analytics_service.proto, detection_batch.proto).
PROTOCOL_MAX_UNACKED = 64
PROTOCOL_MAX_FRAMES = 256
# Checked here as analytics checks them: a batch analytics finds malformed fails the whole
# stream (INVALID_ARGUMENT), which would stall every camera for one producer bug.

# Repeated conditions (drops, an outage, rejections) are logged at most this often.
_LOG_INTERVAL_SECONDS = 10.0


def new_producer_id(prefix: str) -> str:
    """A producer id unique to this process lifetime: ``"{prefix}/{uuid4}"``."""
    producer_id = f"{prefix}/{uuid.uuid4()}"
    if not is_token(producer_id):
        raise ValueError(f"producer id prefix {prefix!r} must be printable ASCII, no spaces")
    return producer_id


def _reason_name(reason: int) -> str:
    """An ``ErrorReason``'s wire name (``RESOURCE_NOT_FOUND``), or its number if unknown."""
    try:
        name = error_reason_pb2.ErrorReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return str(reason)
    return name.removeprefix("ERROR_REASON_")


def _invalid_field(trailing: grpc.aio.Metadata | None) -> bool:
    """Whether a status's ``google.rpc.Status`` details carry analytics' ErrorInfo
    ``INVALID_FIELD`` (what it answers for a malformed batch)."""
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return False
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return bool(info.domain == ERROR_DOMAIN and info.reason == "INVALID_FIELD")
    return False


class _Batch:
    """A numbered batch, kept until an acknowledgement covers it."""

    __slots__ = ("camera", "frames", "request", "sent", "sent_at", "sequence")

    def __init__(self, sequence: int, camera: str, frames: int, request: _Request) -> None:
        self.sequence = sequence
        self.camera = camera
        self.frames = frames
        self.request = request
        self.sent = False
        self.sent_at = 0.0


class _Every:
    """Lets a repeated log line through at most once per interval; counts the ones held back."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self.held_back = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.held_back += 1
            return False
        self._next = now + self._interval
        return True

    def take_held_back(self) -> int:
        held, self.held_back = self.held_back, 0
        return held


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
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not is_token(producer_id):
            raise ValueError("producer_id must be 1-128 printable ASCII characters")
        model_id = model.removeprefix("models/")
        if model_id == model or not is_token(model_id) or not is_token(model_version):
            raise ValueError(
                'model must be "models/{model}" and model_version 1-128 printable ASCII characters'
            )
        if not 1 <= max_unacked_batches <= PROTOCOL_MAX_UNACKED:
            raise ValueError(f"max_unacked_batches must be 1..{PROTOCOL_MAX_UNACKED}")
        if not 1 <= max_frames_per_batch <= PROTOCOL_MAX_FRAMES:
            raise ValueError(f"max_frames_per_batch must be 1..{PROTOCOL_MAX_FRAMES}")
        if max_pending_frames < 1:
            raise ValueError("max_pending_frames must be at least 1")
        if not 0 < backoff_initial_seconds <= backoff_max_seconds:
            raise ValueError("need 0 < backoff_initial_seconds <= backoff_max_seconds")
        self._target = target
        self._producer_id = producer_id
        self._model = model
        self._model_version = model_version
        self._metrics = metrics
        self._window = max_unacked_batches
        self._max_pending = max_pending_frames
        self._max_frames = max_frames_per_batch
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._credentials = credentials
        self._channel_options = tuple(channel_options)

        # Shared with submit() (any thread): guarded by _lock.
        self._lock = threading.Lock()
        self._pending: dict[str, deque[tuple[int, detection_batch_pb2.FrameDetections]]] = {}
        self._pending_count = 0
        self._arrival = 0  # global submit order: "oldest pending" across cameras
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._dropped: Tally[str] = Tally()  # per camera, not yet logged
        self._submitted = 0
        self._acknowledged = 0
        self._rejected: Tally[str] = Tally()
        self._undelivered: Tally[str] = Tally()
        self._batches_sent = 0
        self._batches_resent = 0
        self._batches_acknowledged = 0
        self._reconnects = 0
        self._connected = False
        self._refused_cameras: set[str] = set()

        # Event-loop only.
        self._unacked: deque[_Batch] = deque()
        self._next_sequence = 1
        self._started = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._ever_connected = False
        self._stream_writes = 0  # on the current stream
        self._drop_log = _Every(_LOG_INTERVAL_SECONDS)
        self._failure_log = _Every(_LOG_INTERVAL_SECONDS)
        self._reject_log = _Every(_LOG_INTERVAL_SECONDS)

    # -- any thread --------------------------------------------------------------------------

    def submit(self, camera: str, frame: detection_batch_pb2.FrameDetections) -> None:
        """Queue one frame's detections of ``camera`` ("cameras/{id}") for delivery.

        Thread-safe and non-blocking. The frame is kept by reference until it is sent: do not
        change it afterwards.
        """
        loop: asyncio.AbstractEventLoop | None = None
        refused = ""  # why the frame is not even queued
        dropped = 0
        with self._lock:
            self._submitted += 1
            if not self._accepting:
                refused = SHUTDOWN
            elif camera_id_from_name(camera) is None:
                refused = INVALID_BATCH
            else:
                queue = self._pending.get(camera)
                if queue is None:
                    queue = self._pending[camera] = deque()
                self._arrival += 1
                queue.append((self._arrival, frame))
                self._pending_count += 1
                while self._pending_count > self._max_pending:
                    self._drop_oldest_locked()
                    dropped += 1
                if self._loop is not None and not self._wake_scheduled:
                    self._wake_scheduled = True
                    loop = self._loop
            if refused:
                self._undelivered[refused] += 1
        self._metrics.frames_submitted.inc()
        if refused:
            self._refused(refused, camera)
            return
        self._metrics.pending_frames.inc(1 - dropped)
        if dropped:
            self._metrics.frames_undelivered.labels(BUFFER_FULL).inc(dropped)
        if loop is not None:
            # The loop may be shutting down under us: the frame stays pending, and close()
            # counts it as undelivered.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_submit)

    def _refused(self, reason: str, camera: str) -> None:
        self._metrics.frames_undelivered.labels(reason).inc()
        # A producer bug, logged once per camera name (a bounded set), not once per frame.
        with self._lock:
            first = camera not in self._refused_cameras and len(self._refused_cameras) < 100
            if first:
                self._refused_cameras.add(camera)
        if first:
            _log.error(
                "frame not sent to analytics: producer closed"
                if reason == SHUTDOWN
                else 'frame not sent to analytics: camera is not "cameras/{camera}"',
                extra={"camera": camera, "reason": reason},
            )

    def _drop_oldest_locked(self) -> None:
        oldest_camera = min(
            (camera for camera, queue in self._pending.items() if queue),
            key=lambda camera: self._pending[camera][0][0],
        )
        self._pending[oldest_camera].popleft()
        self._pending_count -= 1
        self._undelivered[BUFFER_FULL] += 1
        self._dropped[oldest_camera] += 1

    @property
    def producer_id(self) -> str:
        return self._producer_id

    @property
    def target(self) -> str:
        """Analytics' address."""
        return self._target

    @property
    def stats(self) -> ProducerStats:
        with self._lock:
            return ProducerStats(
                frames_submitted=self._submitted,
                frames_acknowledged=self._acknowledged,
                frames_rejected=dict(self._rejected),
                frames_undelivered=dict(self._undelivered),
                batches_sent=self._batches_sent,
                batches_resent=self._batches_resent,
                batches_acknowledged=self._batches_acknowledged,
                reconnects=self._reconnects,
                connected=self._connected,
                pending_frames=self._pending_count,
                unacked_batches=len(self._unacked),
            )

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and start the stream task on the running loop."""
        if self._started:
            raise RuntimeError("a producer starts once")
        if not self._target:
            raise ValueError("the producer has no target")
        self._started = True
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        options = [
            # The caller's options first: gRPC keeps the first of duplicate options.
            *self._channel_options,
            # The producer retries itself: it must resend unacknowledged batches in order.
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Keep probing a silent peer while no frames flow (the default stops after 2).
            ("grpc.http2.max_pings_without_data", 0),
            # The channel's own reconnect backoff (default up to 120 s) would otherwise fail
            # our attempts fast long after analytics is back.
            ("grpc.initial_reconnect_backoff_ms", int(self._backoff_initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._backoff_max * 1000)),
        ]
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._target, self._credentials, options=options
            )
        with self._lock:
            self._loop = loop
        self._wake.set()  # frames submitted before start
        self._task = asyncio.create_task(self._run(), name=f"detection-producer:{self._target}")

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting frames, send what is pending and wait up to ``drain_timeout`` s for
        the acknowledgements. Frames still unacknowledged then are counted undelivered
        (``shutdown``) and logged. Returns within about ``drain_timeout`` even if analytics is
        down."""
        with self._lock:
            already_closed = not self._accepting
            self._accepting = False
        if already_closed and self._task is None:
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
        self._log_drops(force=True)
        lost_pending, lost_unacked, batches = self._abandon()
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
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _abandon(self) -> tuple[int, int, int]:
        """Count everything still pending or unacknowledged as undelivered (shutdown)."""
        unacked_frames = sum(batch.frames for batch in self._unacked)
        batches = len(self._unacked)
        self._unacked.clear()
        with self._lock:
            pending = self._pending_count
            self._pending.clear()
            self._pending_count = 0
            self._undelivered[SHUTDOWN] += pending + unacked_frames
        self._metrics.pending_frames.dec(pending)
        self._metrics.unacked_batches.set(0)
        if pending + unacked_frames:
            self._metrics.frames_undelivered.labels(SHUTDOWN).inc(pending + unacked_frames)
        return pending, unacked_frames, batches

    # -- event loop: the stream --------------------------------------------------------------

    def _on_submit(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        if self._wake is not None:
            self._wake.set()
        self._log_drops()

    def _drained(self) -> bool:
        with self._lock:
            pending = self._pending_count
        return not pending and not self._unacked

    async def _run(self) -> None:
        attempt = 0
        while not (self._closing and self._drained()):
            try:
                progressed = await self._stream_once()
            except Exception:
                # A bug here must not end delivery for good: log it and reopen.
                _log.exception("detection stream failed unexpectedly")
                progressed = False
            if self._closing and self._drained():
                return
            attempt = 0 if progressed else attempt + 1
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        # Jittered so that the producers of a fleet do not reconnect in lock-step.
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0 ** min(attempt, 32))
        return ceiling * random.uniform(0.5, 1.0)

    def _set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected
        self._metrics.connected.set(1 if connected else 0)

    async def _stream_once(self) -> bool:
        """Run one stream until it ends; True if it moved any batch forward."""
        assert self._channel is not None
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(self._channel)
        # No timeout: the stream lives as long as the producer.
        call: _Call = stub.StreamDetectionBatches()
        acked_before = self._batches_acknowledged
        self._stream_writes = 0
        writer: asyncio.Task[None] | None = None
        reader: asyncio.Task[None] | None = None
        try:
            try:
                await call.wait_for_connection()
            except grpc.aio.AioRpcError as error:
                self._log_failure(error.code(), error.details() or "", connected=False)
                return False
            self._set_connected(True)
            if self._ever_connected:
                with self._lock:
                    self._reconnects += 1
                self._metrics.reconnects.inc()
                _log.info(
                    "detection stream to analytics re-established",
                    extra={"target": self._target, "unacked_batches": len(self._unacked)},
                )
            self._ever_connected = True
            writer = asyncio.create_task(self._write(call))
            reader = asyncio.create_task(self._read(call))
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled():
                failure = writer.exception()
                if failure is not None and not isinstance(
                    failure, grpc.RpcError | asyncio.InvalidStateError
                ):
                    # Not the stream failing (that ends the call, and the reader with it).
                    _log.error("detection stream writer failed", exc_info=failure)
                    call.cancel()
            # The reader ends when the call does; it reads every acknowledgement sent
            # before the final status, which the handling below relies on. (Waited for, not
            # awaited: a locally cancelled call makes read() raise CancelledError.)
            await asyncio.wait({reader})
        finally:
            for task in (writer, reader):
                if task is not None and not task.done():
                    task.cancel()
            if not call.done():
                call.cancel()
            # Their own errors are settled above; a cancellation of this task still propagates.
            await asyncio.gather(*(t for t in (writer, reader) if t is not None),
                                 return_exceptions=True)  # fmt: skip
            self._set_connected(False)
        code, details = await call.code(), await call.details()
        # Analytics' verdict on the head batch, not some proxy's complaint about the request:
        # only that may cost a batch.
        batch_refused = (
            code is grpc.StatusCode.INVALID_ARGUMENT
            and self._stream_writes > 0
            and _invalid_field(await call.trailing_metadata())
        )
        progressed = self._batches_acknowledged > acked_before
        return self._stream_ended(code, details or "", batch_refused) or progressed

    async def _read(self, call: _Call) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    return
                assert isinstance(ack, _Ack)
                self._on_ack(ack)

    async def _write(self, call: _Call) -> None:
        wake = self._wake
        assert wake is not None
        # Resend, in order, what the broken stream left unacknowledged. The first one goes
        # alone: if analytics finds it malformed the stream fails with INVALID_ARGUMENT and
        # nothing else in flight. (A write racing a stream's failure turns its status into
        # INTERNAL in grpc.aio, which would hide which batch was at fault.)
        for i, batch in enumerate(list(self._unacked)):
            if not self._unacked or batch.sequence < self._unacked[0].sequence:
                continue  # covered meanwhile by a cumulative acknowledgement
            await self._send(call, batch)
            while i == 0 and self._unacked and self._unacked[0] is batch:
                wake.clear()
                await wake.wait()
        while True:
            wake.clear()
            while len(self._unacked) < self._window:
                new = self._next_batch()
                if new is None:
                    break
                # Unacknowledged from now on: if the write fails it is resent.
                self._unacked.append(new)
                self._metrics.unacked_batches.set(len(self._unacked))
                await self._send(call, new)
            if self._closing and not self._pending_count:
                # Half-close: analytics acknowledges what it has, then ends with OK.
                await call.done_writing()
                return
            await wake.wait()

    async def _send(self, call: _Call, batch: _Batch) -> None:
        await call.write(batch.request)
        self._stream_writes += 1
        batch.sent_at = time.monotonic()
        if batch.sent:
            with self._lock:
                self._batches_resent += 1
            self._metrics.batches_resent.inc()
            return
        batch.sent = True
        with self._lock:
            self._batches_sent += 1
        self._metrics.batches_sent.inc()
        now = time.time()
        observe = self._metrics.capture_to_send.observe
        for frame in batch.request.batch.frames:
            if frame.HasField("capture_time"):
                captured = frame.capture_time.seconds + frame.capture_time.nanos / 1e9
                observe(max(0.0, now - captured))

    def _next_batch(self) -> _Batch | None:
        """The next batch: the pending frames of the camera waiting longest, up to the
        batch limit, in frame_sequence order."""
        with self._lock:
            waiting = [(queue[0][0], camera) for camera, queue in self._pending.items() if queue]
            if not waiting:
                return None
            _, camera = min(waiting)
            queue = self._pending[camera]
            taken = [queue.popleft()[1] for _ in range(min(self._max_frames, len(queue)))]
            if not queue:
                del self._pending[camera]
            self._pending_count -= len(taken)
        self._metrics.pending_frames.dec(len(taken))
        request = _Request()
        wire = request.batch
        wire.producer_id = self._producer_id
        wire.sequence = self._next_sequence
        wire.camera = camera
        wire.model = self._model
        wire.model_version = self._model_version
        # Stable: the batching thread's order is kept where frame_sequence ties.
        wire.frames.extend(sorted(taken, key=lambda frame: frame.frame_sequence))
        self._next_sequence += 1
        return _Batch(wire.sequence, camera, len(taken), request)

    def _on_ack(self, ack: _Ack) -> None:
        sequence = ack.acknowledged_sequence
        if not self._unacked or sequence < self._unacked[0].sequence:
            _log.warning(
                "analytics acknowledged a batch not outstanding",
                extra={"sequence": sequence, "duplicate": ack.duplicate},
            )
            return
        now = time.monotonic()
        while self._unacked and self._unacked[0].sequence <= sequence:
            batch = self._unacked.popleft()
            # Earlier batches are confirmed by the cumulative acknowledgement, without detail.
            self._settle(batch, ack if batch.sequence == sequence else None)
            if batch.sent_at:
                self._metrics.ack_latency.observe(now - batch.sent_at)
        self._metrics.unacked_batches.set(len(self._unacked))
        assert self._wake is not None
        self._wake.set()

    def _settle(self, batch: _Batch, ack: _Ack | None) -> None:
        rejected: Tally[str] = Tally()
        if ack is not None and not ack.duplicate:
            for rejection in ack.rejections:
                rejected[_reason_name(rejection.reason)] += 1
        refused = min(sum(rejected.values()), batch.frames)
        with self._lock:
            self._acknowledged += batch.frames - refused
            self._rejected.update(rejected)
            self._batches_acknowledged += 1
        self._metrics.frames_acknowledged.inc(batch.frames - refused)
        for reason, count in rejected.items():
            self._metrics.frames_rejected.labels(reason).inc(count)
        if rejected and ack is not None and self._reject_log.ready():
            _log.warning(
                "analytics rejected frames",
                extra={
                    "camera": batch.camera,
                    "sequence": batch.sequence,
                    "rejected": dict(rejected),
                    "example": ack.rejections[0].message,
                    "similar_logs_held_back": self._reject_log.take_held_back(),
                },
            )

    def _stream_ended(self, code: grpc.StatusCode, details: str, batch_refused: bool) -> bool:
        """Act on how a stream ended; True if that itself was progress."""
        if code is grpc.StatusCode.OK and self._closing:
            return True
        if batch_refused and self._unacked:
            # Analytics acknowledged everything before the batch it refused: the head.
            batch = self._unacked.popleft()
            self._metrics.unacked_batches.set(len(self._unacked))
            with self._lock:
                self._undelivered[INVALID_BATCH] += batch.frames
            self._metrics.frames_undelivered.labels(INVALID_BATCH).inc(batch.frames)
            _log.error(
                "analytics refused a malformed detection batch; dropped",
                extra={"details": details, "sequence": batch.sequence, "camera": batch.camera,
                       "frames": batch.frames},
            )  # fmt: skip
            return True
        self._log_failure(code, details, connected=True)
        return False

    def _log_failure(self, code: grpc.StatusCode, details: str, *, connected: bool) -> None:
        # Retried all the same, but a person has to act on these.
        denied = code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # A stream that was up and broke is always worth a line; failed attempts during an
        # outage are summarised.
        if not (connected or self._failure_log.ready()):
            return
        _log.log(
            logging.ERROR if denied else logging.WARNING,
            "detection stream to analytics broke" if connected
            else "cannot open the detection stream to analytics",
            extra={
                "target": self._target,
                "status": code.name,
                "details": details,
                "unacked_batches": len(self._unacked),
                "pending_frames": self._pending_count,
                "failed_attempts_not_logged": self._failure_log.take_held_back(),
            },
        )  # fmt: skip

    def _log_drops(self, *, force: bool = False) -> None:
        with self._lock:
            if not self._dropped or not (force or self._drop_log.ready()):
                return
            dropped, self._dropped = self._dropped, Tally()
            pending = self._pending_count
        _log.warning(
            "pending frame buffer full: dropped the oldest frames",
            extra={
                "dropped_frames": sum(dropped.values()),
                "by_camera": dict(dropped.most_common(10)),
                "cameras": len(dropped),
                "pending_frames": pending,
                "max_pending_frames": self._max_pending,
            },
        )
