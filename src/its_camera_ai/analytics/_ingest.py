"""One batch, applied exactly once: de-duplicate, run the engine, make it durable, answer.

Under the producer's lock (its batches apply in sequence order, even across two streams of
one producer) and the camera's lock (one caller per engine):

1. a batch at or below the producer's high-water mark was applied already: ``duplicate``;
2. the camera's engine (restored from its last durable state on first use) processes every
   frame; the touched bins' full values, the events, crossings and the new engine state are
   collected into one ``BatchWrite``;
3. the write goes to PostgreSQL, or to the spool while it is down; only then is the batch
   acknowledged. If neither can take it, the engine goes back to its state before the
   batch and the stream fails with UNAVAILABLE: the producer resends it.

Several instances may serve one camera in turn (its stream moved), so an engine kept in
memory can be older than the stored state. Each engine remembers the revision of the stored
state it was loaded at or wrote last, and PostgreSQL takes its write only if that is still
the stored one. Otherwise nothing was written: the engine is dropped, the stored state (the
other instance's) loaded, and the batch applied again on it, with the same arrival time.
Should the camera move on again meanwhile, that is tried ``STALE_RETRIES`` times in all,
then UNAVAILABLE (the producer resends). The spool's replay finds the same mismatch for
records spooled from an engine that had fallen behind; it calls ``_rebase`` here, which
applies the record's batch on the stored state the same way (see ``_durable``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass

import numpy as np
from opentelemetry.trace import Span

from its.analytics.v1 import analytics_service_pb2, detection_batch_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.analytics._durable import STALE_RETRIES, DurableWriter, Written
from its_camera_ai.analytics._engine import CameraAnalytics
from its_camera_ai.analytics._fanout import Fanout
from its_camera_ai.analytics._metrics import AnalyticsMetrics
from its_camera_ai.analytics._records import (
    CameraStats,
    EventRecord,
    FrameInput,
    FrameOutcome,
    FrameReject,
)
from its_camera_ai.analytics._store import (
    BatchWrite,
    StaleStateError,
    StoredState,
    bin_row,
    crossing_row,
    event_row,
)
from its_camera_ai.common import AnalyticsEngineSettings, NotFoundError, UnavailableError
from its_camera_ai.common._tracing import FrameTracer
from its_camera_ai.scene import CameraDirectory, KnownCamera

__all__ = ["Ingestor"]

_log = logging.getLogger(__name__)

_Ack = analytics_service_pb2.StreamDetectionBatchesResponse
_Rejection = detection_batch_pb2.FrameRejection
_NS = 1_000_000_000
# Producers whose de-duplication mark is cached (each new inference process is a new one).
_MAX_MARKS = 4096
# Spooled batches applied again (``_rebase``) are not traced: their frames' traces ended
# with the commit that spooled them.
_UNTRACED = FrameTracer("its_camera_ai.analytics", enabled=False)


def _frame_input(
    camera_id: str, frame: detection_batch_pb2.FrameDetections, scene: KnownCamera, model: str
) -> FrameInput:
    """The engine's view of a wire frame; the engine repairs or rejects what is wrong."""
    det = np.array(
        [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score, d.object_class)
         for d in frame.detections],
        dtype=np.float64,
    ).reshape(-1, 6)  # fmt: skip
    width, height = frame.frame_size.width, frame.frame_size.height
    if not frame.HasField("frame_size"):
        width, height = scene.width, scene.height
    # A missing capture time becomes an invalid one, which the engine rejects (never 1970).
    capture_ns = -1
    if frame.HasField("capture_time"):
        capture_ns = frame.capture_time.seconds * _NS + frame.capture_time.nanos
    return FrameInput(camera_id, frame.frame_sequence, capture_ns, width, height, det, model)


def _rejection(outcome: FrameOutcome, rejected: FrameReject) -> _Rejection:
    return _Rejection(
        frame_sequence=outcome.frame_sequence,
        # The engine's reasons are the wire enum's numbers (see _records.FrameReject), its
        # causes the wire's cause names.
        reason=error_reason_pb2.ErrorReason.ValueType(rejected.error_reason),
        message=outcome.message,
        cause=detection_batch_pb2.FrameRejectionCause.Value(
            f"FRAME_REJECTION_CAUSE_{rejected.name}"
        ),
    )


def _unknown_camera(batch: detection_batch_pb2.DetectionBatch) -> list[_Rejection]:
    return [
        _Rejection(
            frame_sequence=frame.frame_sequence,
            reason=error_reason_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
            message=f"unknown camera {batch.camera!r}",
            cause=detection_batch_pb2.FRAME_REJECTION_CAUSE_UNKNOWN_CAMERA,
        )
        for frame in batch.frames
    ]


class _Camera:
    """A camera's engine, the durable state it was last restored from or wrote, and that
    state's revision in the store: the one its next write must find there (None: a state
    spooled before revisions existed, written unconditionally)."""

    def __init__(self, engine: CameraAnalytics, stored: StoredState) -> None:
        self.engine = engine
        self.state = stored.state
        self.revision = stored.revision


@dataclass(frozen=True, slots=True)
class _Run:
    """A batch through an engine: each frame's outcome, the events, the write, and the
    frames' spans (ended; for the commit's span to tie to)."""

    outcomes: list[FrameOutcome]
    events: list[EventRecord]
    write: BatchWrite
    frame_spans: list[Span]


def _run(
    engine: CameraAnalytics,
    batch: detection_batch_pb2.DetectionBatch,
    scene: KnownCamera,
    arrival_ns: int,
    revision: int | None,
    source: bytes,
    tracer: FrameTracer = _UNTRACED,
) -> _Run:
    """``batch``'s frames through ``engine`` (time sanity by ``arrival_ns``), written at
    ``revision``; each frame's tracking and measuring is its span in the frame's trace."""
    camera_id = scene.camera_id
    events: list[EventRecord] = []
    if engine.scene.spec != scene.scene.spec:
        events += engine.reconfigure(scene.scene)
    outcomes: list[FrameOutcome] = []
    frame_spans: list[Span] = []
    for frame in batch.frames:
        span = tracer.frame("analytics.frame", frame.traceparent)
        outcome = engine.process(_frame_input(camera_id, frame, scene, batch.model_version),
                                 arrival_ns)  # fmt: skip
        if span is not None:
            _end_frame_span(span, camera_id, frame, outcome)
            frame_spans.append(span)
        outcomes.append(outcome)
        events += outcome.events
    write = BatchWrite(
        batch.producer_id,
        batch.sequence,
        camera_id,
        [bin_row(b) for b in engine.drain_bins()],
        # Several versions of one event in a batch: the newest is the one to keep.
        list({e.event_id: event_row(e) for e in events}.values()),
        [crossing_row(camera_id, c) for o in outcomes for c in o.crossings],
        engine.state_bytes(),
        revision,
        arrival_ns,
        source,
    )
    return _Run(outcomes, events, write, frame_spans)


def _end_frame_span(
    span: Span, camera_id: str, frame: detection_batch_pb2.FrameDetections, outcome: FrameOutcome
) -> None:
    # Few attributes: each costs ~3 us (the batch's counts are on the commit's span).
    span.set_attributes({
        "camera": camera_id,
        "frame_sequence": frame.frame_sequence,
        "detections": len(frame.detections),
        "outcome": "accepted" if outcome.rejected is None else outcome.rejected.value,
    })  # fmt: skip
    span.end()


def _changed_span(write: BatchWrite) -> tuple[int, int] | None:
    """The capture times whose stored traffic ``write`` changed: its bins' extent, and its
    crossings' times (a crossing is timed between frames, so it may precede every bin)."""
    starts = [row[5] for row in write.bins] + [row[3] for row in write.crossings]
    if not starts:
        return None
    ends = [row[5] + row[6] * _NS for row in write.bins] + [row[3] + 1 for row in write.crossings]
    return min(starts), max(ends)


class Ingestor:
    def __init__(
        self,
        *,
        cameras: CameraDirectory,
        writer: DurableWriter,
        fanout: Fanout | None,
        metrics: AnalyticsMetrics,
        engine_settings: AnalyticsEngineSettings | None = None,
        traced: bool = False,
    ) -> None:
        """``traced``: spans leave the process (``tracing.otlp_endpoint``), so each frame's
        trace is continued here (``FrameTracer``)."""
        self._cameras = cameras
        self._writer = writer
        self._fanout = fanout
        self._metrics = metrics
        self._engine_settings = engine_settings or AnalyticsEngineSettings()
        self._engines: dict[str, _Camera] = {}
        # A producer id lives as long as its process, so both are bounded: a lock is needed
        # while the producer has a stream open; a mark is a cache of the store's (kept past
        # the stream, so a producer reconnecting while PostgreSQL is down is still served),
        # the least recently used beyond _MAX_MARKS forgotten.
        self._streams: Counter[str] = Counter()
        self._producer_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._marks: OrderedDict[str, int] = OrderedDict()
        self._camera_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tracer = FrameTracer("its_camera_ai.analytics", enabled=traced)
        writer.set_rebase(self._rebase)

    def engine(self, camera_id: str) -> CameraAnalytics | None:
        """This instance's engine of the camera (None before its first batch here); to read
        between batches only, on the event loop."""
        camera = self._engines.get(camera_id)
        return None if camera is None else camera.engine

    def open_stream(self, producer: str) -> None:
        self._streams[producer] += 1

    def close_stream(self, producer: str) -> None:
        self._streams[producer] -= 1
        if self._streams[producer] <= 0:
            del self._streams[producer]
            self._producer_locks.pop(producer, None)

    async def apply(self, batch: detection_batch_pb2.DetectionBatch, camera_id: str) -> _Ack:
        producer = batch.producer_id
        async with self._producer_locks[producer]:
            if producer not in self._marks:
                self._marks[producer] = await self._writer.producer_mark(producer)
            if batch.sequence <= self._marks[producer]:
                self._metrics.batches.labels("duplicate").inc()
                return _Ack(acknowledged_sequence=batch.sequence, duplicate=True)
            try:
                async with self._camera_locks[camera_id]:
                    ack, events, stats, span = await self._apply_new(batch, camera_id)
            except BaseException:
                # Whether the write happened is unknown (cancelled mid-commit): ask the
                # store again next time rather than trust this mark.
                del self._marks[producer]
                raise
            self._marks[producer] = batch.sequence
            self._marks.move_to_end(producer)
            if len(self._marks) > _MAX_MARKS:
                self._marks.popitem(last=False)
        self._metrics.batches.labels("duplicate" if ack.duplicate else "applied").inc()
        if self._fanout is not None and stats is not None:
            self._fanout.offer(camera_id, events, stats, span)
        return ack

    async def _apply_new(
        self, batch: detection_batch_pb2.DetectionBatch, camera_id: str
    ) -> tuple[_Ack, list[EventRecord], CameraStats | None, tuple[int, int] | None]:
        scene = await self._cameras.get(camera_id)
        if scene is None:
            return await self._apply_unknown(batch, camera_id)
        arrival_ns = time.time_ns()
        # Kept in the write: the spool's replay may have to apply the batch again.
        source = batch.SerializeToString()
        for _ in range(1 + STALE_RETRIES):
            camera = await self._camera(camera_id, scene, arrival_ns)
            run = _run(
                camera.engine, batch, scene, arrival_ns, camera.revision, source, self._tracer
            )
            try:
                written = await self._commit(camera_id, camera, run)
            except StaleStateError:
                # Another instance advanced the camera past this engine, which is dropped:
                # the batch again, on the stored state.
                self._metrics.state_conflicts.labels("live").inc()
                _log.info("camera state moved on elsewhere: applying the batch again",
                          extra={"camera": camera_id, "revision": camera.revision})  # fmt: skip
                continue
            return self._applied(batch, camera_id, camera, run, written)
        raise UnavailableError(
            f"camera {camera_id!r} is being written by another analytics instance: resend",
            metadata={"camera": camera_id},
        )

    async def _apply_unknown(
        self, batch: detection_batch_pb2.DetectionBatch, camera_id: str
    ) -> tuple[_Ack, list[EventRecord], CameraStats | None, tuple[int, int] | None]:
        # Rejections are final, so the batch is still recorded (its mark) as applied.
        write = BatchWrite(
            batch.producer_id, batch.sequence, camera_id, [], [], [], None, None, None, None
        )
        await self._writer.write(write)
        rejections = _unknown_camera(batch)
        self._metrics.frames.labels("rejected", "unknown_camera").inc(len(rejections))
        return (
            _Ack(acknowledged_sequence=batch.sequence, rejected_frames=len(rejections),
                 rejections=rejections),
            [],
            None,
            None,
        )  # fmt: skip

    async def _commit(self, camera_id: str, camera: _Camera, run: _Run) -> Written:
        """``run``'s write made durable, as one span tied to its frames' spans (one that
        failed, e.g. on a camera state moved on elsewhere, records its error)."""
        write = run.write
        attributes: dict[str, str | int] = {
            "camera": camera_id, "producer": write.producer_id, "batch_sequence": write.sequence,
            "frames": len(run.outcomes), "bins": len(write.bins), "events": len(write.events),
            "crossings": len(write.crossings),
        }  # fmt: skip
        with self._tracer.joined("analytics.commit", run.frame_spans, attributes) as span:
            written = await self._write(camera_id, camera, write)
            span.set_attribute("written", written.value)
        return written

    async def _write(self, camera_id: str, camera: _Camera, write: BatchWrite) -> Written:
        try:
            return await self._writer.write(write)
        except UnavailableError:
            # Known not written: back to the state of the last durable batch.
            if camera.state is None:
                del self._engines[camera_id]
            else:
                camera.engine = CameraAnalytics.from_state_bytes(camera.state)
            raise
        except StaleStateError:
            # Known not written, and the engine behind the store: reload it next time.
            del self._engines[camera_id]
            raise
        except BaseException:
            # Maybe written (cancelled mid-commit): reload from the durable state next time.
            del self._engines[camera_id]
            raise

    def _applied(
        self,
        batch: detection_batch_pb2.DetectionBatch,
        camera_id: str,
        camera: _Camera,
        run: _Run,
        written: Written,
    ) -> tuple[_Ack, list[EventRecord], CameraStats | None, tuple[int, int] | None]:
        write = run.write
        if written is Written.ALREADY_APPLIED:
            # Another writer applied this batch first: our engine ran ahead of the store.
            del self._engines[camera_id]
            return _Ack(acknowledged_sequence=batch.sequence, duplicate=True), [], None, None
        camera.state = write.state
        # Written (or, spooled, to be written) at the next revision.
        camera.revision = None if write.revision is None else write.revision + 1
        if written is Written.COMMITTED and write.revision is None:
            # A chain spooled before revisions, now in PostgreSQL: reload to learn the stored
            # revision (until then the writes stay unconditional).
            del self._engines[camera_id]
        rejections = [_rejection(o, o.rejected) for o in run.outcomes if o.rejected is not None]
        stats = camera.engine.snapshot()
        self._count(batch, run.outcomes, run.events, stats)
        ack = _Ack(
            acknowledged_sequence=batch.sequence,
            accepted_frames=len(run.outcomes) - len(rejections),
            rejected_frames=len(rejections),
            rejections=rejections,
        )
        return ack, run.events, stats, _changed_span(write)

    async def _camera(self, camera_id: str, scene: KnownCamera, now_ns: int) -> _Camera:
        camera = self._engines.get(camera_id)
        if camera is None:
            stored = await self._writer.camera_state(camera_id)
            camera = self._engines[camera_id] = _Camera(
                await self._engine(camera_id, scene, stored, now_ns), stored
            )
        return camera

    async def _engine(
        self, camera_id: str, scene: KnownCamera, stored: StoredState, now_ns: int
    ) -> CameraAnalytics:
        """The camera's engine restored from ``stored``, or, without a state (first use, or
        after a reset), starting afresh: it then continues the stored bins a frame arriving
        at ``now_ns`` could reach, since a new value would otherwise replace the stored one.
        Bins further ahead can only come from frames refused today (or accepted before time
        sanity): current data replaces them when the camera gets there."""
        if stored.state is not None:
            return CameraAnalytics.from_state_bytes(stored.state)
        settings = self._engine_settings
        engine = CameraAnalytics(camera_id, scene.scene, settings)
        oldest_ns = now_ns - max(settings.bin_seconds) * _NS
        newest_ns = now_ns + int(settings.max_capture_skew_seconds * _NS)
        engine.bins.adopt(await self._writer.open_bins(camera_id, oldest_ns, newest_ns))
        return engine

    async def _rebase(self, write: BatchWrite, stored: StoredState) -> BatchWrite:
        """For the spool's replay: ``write``'s camera was advanced by another writer after
        it was spooled, so its batch again on the stored state, at the stored revision, with
        time sanity by the batch's arrival. This instance's engine of the camera is left
        alone: its own next write finds the revision moved and reloads it."""
        # Every record with a revision (the only ones that can mismatch) has both.
        assert write.source is not None
        assert write.arrival_ns is not None
        camera_id = write.camera_id
        batch = detection_batch_pb2.DetectionBatch.FromString(write.source)
        scene = await self._cameras.get(camera_id)
        if scene is None:
            # Deleted from the decoder since: nothing to apply the frames to any more.
            _log.error("spooled batch of a camera no longer known: its frames are dropped",
                       extra={"camera": camera_id, "frames": len(batch.frames)})  # fmt: skip
            return BatchWrite(write.producer_id, write.sequence, camera_id, [], [], [], None,
                              None, write.arrival_ns, write.source)  # fmt: skip
        self._metrics.state_conflicts.labels("replay").inc()
        engine = await self._engine(camera_id, scene, stored, write.arrival_ns)
        run = _run(engine, batch, scene, write.arrival_ns, stored.revision, write.source)
        # Frames behind that state's clock (duplicate, late, time backwards) were
        # acknowledged, yet cannot be counted any more: said here, by cause.
        refused = Counter(o.rejected.name for o in run.outcomes if o.rejected is not None)
        _log.warning(
            "spooled batch applied again on the camera state another instance stored",
            extra={"camera": camera_id, "producer": write.producer_id,
                   "sequence": write.sequence, "frames": len(run.outcomes),
                   "refused_frames": dict(refused)},
        )  # fmt: skip
        return run.write

    async def reset(self, camera_id: str) -> tuple[int | None, int]:
        """Discard the camera's engine state, in memory and persisted, between two of its
        batches; the events it held open are closed. Returns the discarded state's clock
        (None without a state) and how many events were closed."""
        if await self._cameras.get(camera_id) is None:
            raise NotFoundError(
                f"camera 'cameras/{camera_id}' not found",
                metadata={"resource": f"cameras/{camera_id}"},
            )
        async with self._camera_locks[camera_id]:
            for _ in range(1 + STALE_RETRIES):
                # From the stored state, not this instance's engine (another instance may
                # have moved the camera on); the engine stays untouched should this fail.
                stored = await self._writer.camera_state(camera_id)
                old = (
                    None if stored.state is None else CameraAnalytics.from_state_bytes(stored.state)
                )
                closed = [] if old is None else old.book.close_all(old.last_ns or 0)
                try:
                    rows = [event_row(e) for e in closed]
                    await self._writer.reset_camera(camera_id, rows, stored.revision)
                except StaleStateError:
                    continue  # written meanwhile: read it again
                break
            else:
                raise UnavailableError(
                    f"camera {camera_id!r} is being written by another analytics instance:"
                    " retry the reset",
                    metadata={"camera": camera_id},
                )
            self._engines.pop(camera_id, None)
        self._metrics.camera_resets.inc()
        return (None if old is None else old.last_ns), len(closed)

    def _count(
        self,
        batch: detection_batch_pb2.DetectionBatch,
        outcomes: list[FrameOutcome],
        events: list[EventRecord],
        stats: CameraStats,
    ) -> None:
        metrics = self._metrics
        metrics.detections.inc(sum(len(f.detections) for f in batch.frames))
        for outcome in outcomes:
            for issue, n in outcome.issues.items():
                metrics.detection_issues.labels(issue.value).inc(n)
            if outcome.rejected is None:
                metrics.frames.labels("accepted", "").inc()
            else:
                metrics.frames.labels("rejected", outcome.rejected.value).inc()
        for event in events:
            metrics.events.labels(event.type.name.lower()).inc()
        metrics.camera_changed(stats)
