"""One camera's ingest loop, in its own thread: connect, decode, write the ring, recover.

Threads, not processes: FFmpeg demuxes, decodes and scales with the GIL released, so
cameras decode in parallel on all cores while sharing the status board and the ring
writers of one process (docs/benchmarks.md has the measurements behind the choice).

The loop's states are the camera's: CONNECTING until the first frame is written, then
STREAMING; a transient failure (unreachable, timed out, stalled, end of a live stream) is
BACKING_OFF for a capped, jittered, exponentially growing delay before reconnecting; a
permanent one (file missing, password rejected, no video) is FAILED until the camera is
changed; a file that ends without ``loop`` is STOPPED. Nothing that goes wrong here can
take the service down: even a bug ends as a FAILED camera with a logged traceback.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

from its_camera_ai.common import Backoff, DecoderSettings
from its_camera_ai.decoder._egress import EgressPolicy
from its_camera_ai.decoder._metrics import CameraMetrics
from its_camera_ai.decoder._sink import RingSink
from its_camera_ai.decoder._sources import (
    Picture,
    SourceError,
    SourceOpener,
    open_source,
    stoppable,
)
from its_camera_ai.decoder._status import CameraState, StatusTracker
from its_camera_ai.decoder._timing import FrameClock, Verdict
from its_camera_ai.decoder._uri import SourceKind, SourceUri, scrub

__all__ = ["CameraWorker", "DecodeSpec"]

_log = logging.getLogger(__name__)

# A connection that delivered frames this long had recovered: if it fails, reconnecting
# starts again from the shortest delay. (Shorter ones keep growing the delay, so a camera
# that drops every few seconds is not hammered.)
_STABLE = 10.0


@dataclass(frozen=True, slots=True)
class DecodeSpec:
    """Everything about a camera that decoding depends on; a change restarts the worker."""

    camera_id: str
    source: SourceUri
    loop: bool
    target_fps: float
    resolution: tuple[int, int] | None


class _Stop(Exception):
    """Raised inside the loop when a stop was requested."""


class CameraWorker:
    def __init__(
        self,
        spec: DecodeSpec,
        settings: DecoderSettings,
        *,
        ring_name: str,
        tracker: StatusTracker,
        metrics: CameraMetrics,
        opener: SourceOpener = open_source,
        egress: EgressPolicy | None = None,
    ) -> None:
        """``egress`` checks the destination before every connect; None skips the check
        (scripted openers in tests, local files in benchmarks): the service passes one."""
        self.spec = spec
        self._open_source = opener
        self._egress = egress
        self._settings = settings
        self._tracker = tracker
        self._metrics = metrics
        self._stop = threading.Event()
        self._sink = RingSink(
            ring_name,
            slots=settings.ring_slots,
            pixel_format=settings.ring_pixel_format,
            resolution=spec.resolution,
            scale_threads=settings.codec_threads,
            tracker=tracker,
        )
        self._backoff = Backoff(
            settings.backoff_initial_seconds,
            settings.backoff_max_seconds,
            settings.backoff_multiplier,
            settings.backoff_jitter,
        )
        self._clock = FrameClock(
            target_fps=spec.target_fps,
            pace=settings.pace_files or spec.source.kind is SourceKind.SYNTHETIC,
            live=spec.source.kind.live,
            max_lag=settings.max_lag_seconds,
            stop=self._stop,
        )
        # When the current connection delivered its first frame (0: not yet).
        self._streamed_since = 0.0
        self._file_ended = False
        self._thread = threading.Thread(
            target=self._run, name=f"decoder-{spec.camera_id}", daemon=True
        )

    # --- control, from the event loop ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end: between packets, or by interrupting FFmpeg's blocking open
        or read within its polling period (0.1 s)."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join()

    @property
    def ended(self) -> bool:
        """The loop has returned (stopped, failed, or its file ended)."""
        return not self._thread.is_alive()

    # --- the loop, in the worker thread --------------------------------------------------

    def _run(self) -> None:
        camera = self.spec.camera_id
        try:
            with stoppable(self._stop):
                self._connect_until_done()
        except _Stop:
            pass
        except Exception:
            # A bug, not the source: keep the service up, park the camera, keep the trace
            # (scrubbed: an FFmpeg error's text carries the URL it was opening).
            _log.error(
                "decoder worker crashed",
                extra={
                    "camera": camera,
                    "traceback": scrub(traceback.format_exc(), self.spec.source.uri),
                },
            )
            self._tracker.set_state(CameraState.CAMERA_STATE_FAILED, "internal decoder error")
        finally:
            self._sink.close()
            if self._stop.is_set() or self._file_ended:
                self._tracker.set_state(CameraState.CAMERA_STATE_STOPPED)

    def _connect_until_done(self) -> None:
        while True:
            try:
                self._stream()
                return
            except SourceError as exc:
                # Interrupted by a stop request: no failure to report.
                self._check_stop()
                extra = {"camera": self.spec.camera_id, "error": exc.message}
                if exc.permanent:
                    _log.warning("camera failed", extra=extra)
                    self._tracker.set_state(CameraState.CAMERA_STATE_FAILED, exc.message)
                    return
                if self._streamed_since and time.monotonic() - self._streamed_since >= _STABLE:
                    # It had recovered: this is a new failure, not the same one recurring.
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                _log.info("camera backing off", extra={**extra, "delay_seconds": round(delay, 2)})
                self._tracker.set_state(CameraState.CAMERA_STATE_BACKING_OFF, exc.message)
                if self._stop.wait(delay):
                    raise _Stop from None
                self._tracker.reconnecting()

    def _stream(self) -> None:
        """One connection: open, pump pictures until the end of the stream."""
        self._check_stop()
        self._streamed_since = 0.0
        self._tracker.set_state(CameraState.CAMERA_STATE_CONNECTING)
        if self._egress is not None:
            # Every time: the name may resolve elsewhere now than when the camera was set.
            self._egress.check_connect(self.spec.source)
        source = self._open_source(
            self.spec.source,
            self._settings,
            on_loss=self._tracker.frames_lost,
            pace=self._clock.wait_until if self._clock.pace else None,
        )
        try:
            self._clock.restart()
            while True:
                self._pump(source.pictures())
                if self.spec.source.kind is not SourceKind.FILE:
                    raise SourceError(f"{self.spec.source.masked}: end of stream", permanent=False)
                if not self.spec.loop:
                    # STOPPED is published by _run once the ring is closed, so a watcher
                    # that sees it never sees the ring still named.
                    self._file_ended = True
                    return
                source.rewind()
                self._clock.restart()
        finally:
            source.close()

    def _pump(self, pictures: Iterator[Picture | None]) -> None:
        stall = self._settings.stall_timeout_seconds
        last_progress = time.monotonic()
        for picture in pictures:
            self._check_stop()
            now = time.monotonic()
            if picture is None:
                # A packet that gave no picture: alive, but is it still making progress?
                if now - last_progress > stall:
                    raise SourceError(
                        f"{self.spec.source.masked}: stalled (no frame for {stall:g} s)",
                        permanent=False,
                    )
                continue
            last_progress = now
            verdict = self._clock.judge(picture.media_time)
            if verdict is Verdict.LATE:
                self._tracker.frames_lost(1)
            elif verdict is Verdict.DELIVER:
                self._deliver(picture)

    def _deliver(self, picture: Picture) -> None:
        span, context = self._metrics.frame_span()
        try:
            sequence = self._sink.write(picture, context)
            span.set_attribute("frame.sequence", sequence)
        finally:
            span.end()
        self._metrics.observe_latency(time.perf_counter() - picture.started)
        self._tracker.frame_written(picture.capture_ns)
        if not self._streamed_since:
            self._streamed_since = time.monotonic()
            self._tracker.set_state(CameraState.CAMERA_STATE_STREAMING)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stop
