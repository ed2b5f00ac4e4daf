"""``CameraAnalytics``: one camera's frames in; bins, events and live statistics out.

Per accepted frame: sanitise detections, track, estimate ground speeds, measure (lines,
lanes, zones), detect incidents and drift. Deterministic: the same frames from the same
state (and, where the arrival clock is given, the same clock) give the same records, event
ids and track ids.

Restarts. The whole state (tracks, open bins, open events, drift histograms, stream
position) is a JSON document, ``state()`` / ``CameraAnalytics.restore``, a few tens of KB
per camera. The servicer stores it in the same transaction as the batch's records and the
producer's de-duplication mark; after a crash the engine is restored from the last committed
state and the producer resends the unacknowledged batches, which are then processed exactly
as the first time. Nothing is counted twice, nothing is lost, and records (full cumulative
values, keyed) and events (deterministic ids) are upserted, so even re-writing them is
harmless. Live statistics (fps, latency, last-minute counts) are not part of the state: they
restart empty.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._bins import BinStore
from its_camera_ai.analytics._drift import DriftMonitor
from its_camera_ai.analytics._events import EventBook
from its_camera_ai.analytics._incidents import IncidentDetector
from its_camera_ai.analytics._measures import SceneMeasures
from its_camera_ai.analytics._records import (
    BinRecord,
    CameraStats,
    DetectionIssue,
    EventRecord,
    FrameInput,
    FrameOutcome,
    FrameReject,
    ObjectClass,
)
from its_camera_ai.analytics._sanitize import as_detection_array, sanitize_detections
from its_camera_ai.analytics._tracker import ByteTracker
from its_camera_ai.analytics._tracks import TrackTable, push_positions, regress_velocity
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import CameraScene, Homography, SceneSpec, inside_frame

__all__ = ["CameraAnalytics"]

F64 = NDArray[np.float64]
_NS = 1_000_000_000
_STATE_VERSION = 1
_MAX_TIME_NS = 2**62  # far beyond any real clock; keeps arithmetic in int64


def _same_plane(a: Homography | None, b: Homography | None) -> bool:
    if a is None or b is None:
        return a is b
    return np.array_equal(a.image_to_ground, b.image_to_ground)


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


class CameraAnalytics:
    """The analytics of one camera. Not thread-safe: one caller at a time per camera."""

    def __init__(
        self,
        camera: str,
        scene: CameraScene | SceneSpec,
        settings: AnalyticsEngineSettings | None = None,
    ) -> None:
        self.camera = camera
        self.cfg = settings or AnalyticsEngineSettings()
        self.bins = BinStore(camera, self.cfg.bin_seconds)
        self.book = EventBook(camera, self.cfg.event_update_s)
        self._build(scene if isinstance(scene, CameraScene) else CameraScene.build(scene))
        self.tracker = ByteTracker(self.cfg.tracker, self.scene.road_plane)
        self.drift = DriftMonitor(self.cfg)
        self.t0_ns: int | None = None
        self.last_seq = 0
        self.last_ns: int | None = None
        self._drift_last_ns: int | None = None
        self.frames_accepted = 0
        self.rejected: dict[FrameReject, int] = {}
        self.issues: dict[DetectionIssue, int] = {}
        self._live_reset()

    def _build(self, scene: CameraScene) -> None:
        self.scene = scene
        self.table = TrackTable()
        self.measures = SceneMeasures(scene, self.cfg, self.table, self.bins)
        self.incidents = IncidentDetector(scene, self.cfg, self.table, self.book)

    def _live_reset(self) -> None:
        self._frame_times: deque[int] = deque()
        self._counted: deque[tuple[int, int]] = deque()
        self._latency: deque[tuple[int, int]] = deque()
        self._present: NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    # -- frames ------------------------------------------------------------------------------

    def _check(self, frame: FrameInput, now_ns: int | None) -> tuple[FrameReject, str] | None:
        if frame.camera != self.camera:
            return FrameReject.WRONG_CAMERA, f"frame of {frame.camera!r} sent to {self.camera!r}"
        seq, cap = frame.frame_sequence, frame.capture_time_ns
        if not _is_int(seq) or not 0 < seq < _MAX_TIME_NS:
            return FrameReject.BAD_FRAME, f"frame_sequence {seq!r} is not a positive integer"
        if not _is_int(cap) or not 0 <= cap < _MAX_TIME_NS:
            return FrameReject.BAD_FRAME, f"capture_time_ns {cap!r} is not a valid time"
        if now_ns is not None:
            problem = self._check_clock(int(cap), now_ns)
            if problem is not None:
                return problem
        # A lower sequence captured later is a re-created ring (decoder restart, new
        # resolution) starting again at 1; a resend of an accepted frame is never later.
        if seq <= self.last_seq and (self.last_ns is None or cap <= self.last_ns):
            return FrameReject.DUPLICATE_FRAME, f"frame {seq} already accepted"
        for name, size in (("width", frame.width), ("height", frame.height)):
            if not _is_int(size) or not 0 < size <= self.cfg.max_frame_px:
                return FrameReject.BAD_FRAME, f"{name} {size!r} out of range"
        if cap < self.bins.final_before_ns:
            return FrameReject.LATE_DATA, "capture time falls in a bin already final"
        if self.last_ns is not None and cap < self.last_ns:
            return FrameReject.TIME_BACKWARDS, (
                f"capture time {cap} is before the previous frame's {self.last_ns}"
            )
        return None

    def _check_clock(self, cap: int, now_ns: int) -> tuple[FrameReject, str] | None:
        """Before anything else: a frame accepted from beyond these limits would move the
        camera's clock (and its bins' finality) where no current frame can follow."""
        ahead_s = (cap - now_ns) / _NS
        if ahead_s > self.cfg.max_capture_skew_seconds:
            return FrameReject.CAPTURE_TIME_IN_FUTURE, (
                f"capture_time is {ahead_s:.3f} s ahead of analytics' clock"
                f" (at most {self.cfg.max_capture_skew_seconds:g} s allowed)"
            )
        horizon_s = max(self.cfg.bin_seconds)
        if -ahead_s > horizon_s:
            return FrameReject.CAPTURE_TIME_TOO_OLD, (
                f"capture_time is {-ahead_s:.3f} s old, older than the largest bin"
                f" ({horizon_s} s): its bins are final"
            )
        return None

    def _reject(
        self,
        frame: FrameInput,
        reason: FrameReject,
        message: str,
        issues: dict[DetectionIssue, int] | None = None,
    ) -> FrameOutcome:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        n = 0
        with contextlib.suppress(TypeError):
            n = len(frame.detections)
        seq = int(frame.frame_sequence) if _is_int(frame.frame_sequence) else -1
        return FrameOutcome(seq, reason, message, issues or {}, np.full(n, -1, np.int64), ())

    def process(self, frame: FrameInput, now_ns: int | None = None) -> FrameOutcome:
        """Apply one frame. Never raises on bad input: it is rejected or repaired, counted.

        ``now_ns`` is the wall clock when the frame reached analytics: frames captured more
        than ``max_capture_skew_seconds`` after it, or longer than the largest bin before
        it, are rejected (before they touch any state), and it feeds the latency stats.
        None (recorded traffic replayed in tests and tools) skips both.
        """
        problem = self._check(frame, now_ns)
        if problem is not None:
            return self._reject(frame, *problem)
        det = as_detection_array(frame.detections)
        if det is None:
            return self._reject(frame, FrameReject.BAD_FRAME, "detections are not an (N, 6) array")
        clean = sanitize_detections(det, int(frame.width), int(frame.height), self.cfg)
        if self.cfg.reject_frame_on_bad_detection and any(
            k.name.startswith("DROP_") for k in clean.issues
        ):
            return self._reject(
                frame,
                FrameReject.BAD_DETECTION,
                "malformed detections: " + ", ".join(clean.issues),
                clean.issues,
            )
        for k, n in clean.issues.items():
            self.issues[k] = self.issues.get(k, 0) + n
        seq, cap = int(frame.frame_sequence), int(frame.capture_time_ns)
        if self.t0_ns is None:
            self.t0_ns = cap
        prev_ns = self.last_ns
        self.last_seq, self.last_ns = seq, cap
        self.frames_accepted += 1
        t = (cap - self.t0_ns) / _NS
        gap = 0.0 if prev_ns is None else (cap - prev_ns) / _NS
        dt_accrue = gap if gap <= self.cfg.max_frame_gap_s else 0.0

        frame_size = (int(frame.width), int(frame.height))
        out = self.tracker.update(clean.boxes, clean.scores, clean.classes, t, frame_size)
        track_ids = np.full(len(det), -1, dtype=np.int64)
        track_ids[clean.rows] = out.det_track_ids
        slots, new = self.table.slots(out.ids)
        self.measures.start_tracks(slots[new], out.birth[new])
        # Speed samples come from the filtered boxes (which partial views barely move), but
        # not from boxes cut by the frame border: their bottom-centre is not on the road.
        inside = inside_frame(out.boxes, *frame_size)
        ground = self._kinematics(slots, out.boxes, out.observed & inside, t)
        view = self.measures.frame(
            t,
            cap,
            seq,
            dt_accrue,
            slots,
            out.ids,
            out.classes,
            out.boxes,
            out.observed,
            out.foot_seen,
            out.observed & ~inside,
            out.velocity,
            ground,
        )
        events = self.incidents.frame(view)
        events += self._drift(frame.model_version, clean.classes, clean.scores, seq, cap)
        if len(out.ended):
            ended = self.table.lookup(out.ended)
            ended = ended[ended >= 0]
            self.measures.end_tracks(ended, t, cap)
            events += self.incidents.end_tracks(ended, cap)
            self.table.release(ended)
        self._live(cap, now_ns, out.classes)
        return FrameOutcome(seq, None, "", clean.issues, track_ids, tuple(events),
                            tuple(self.measures.crossings_now))  # fmt: skip

    def _kinematics(
        self, slots: NDArray[np.intp], boxes: F64, observed: NDArray[np.bool_], t: float
    ) -> F64:
        """Ground positions (metres) of the tracks' reference points, NaN if not calibrated;
        updates the speeds of observed ones, and the tracker's ground velocities (in the road
        plane's units: metres, or the lane plane's of an uncalibrated camera)."""
        plane = self.scene.road_plane
        if plane is None:
            return np.full((len(slots), 2), np.nan)
        calibrated = plane is self.scene.homography
        ref = np.column_stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, boxes[:, 3]])
        ground = plane.to_ground(ref)
        cfg = self.cfg
        obs = slots[observed]
        heights = boxes[observed, 3] - boxes[observed, 1]
        took = push_positions(self.table, obs, t, ground[observed], heights, cfg.speed_window_s)
        upd = obs[took]
        if len(upd):
            vel = regress_velocity(
                self.table, upd, t, cfg.speed_window_s, cfg.speed_min_span_s, cfg.speed_min_samples
            )
            if calibrated:
                kmh = 3.6 * np.hypot(vel[:, 0], vel[:, 1])
                with np.errstate(invalid="ignore"):
                    kmh[kmh > cfg.max_speed_kmh] = np.nan
                self.table["speed"][upd] = kmh
                vel[np.isnan(kmh)] = np.nan
            per_track = np.full((len(slots), 2), np.nan)
            per_track[observed.nonzero()[0][took]] = vel
            self.tracker.set_ground_velocity(per_track)
        return ground if calibrated else np.full((len(slots), 2), np.nan)

    def _drift(
        self, model_version: str, classes: NDArray[np.int64], scores: F64, seq: int, cap: int
    ) -> list[EventRecord]:
        events: list[EventRecord] = []
        version = model_version if isinstance(model_version, str) else ""
        if version != self.drift.model_version:
            # A new model gets a new baseline; the old model's drift no longer applies.
            rec = self.book.close("drift", cap, cap)
            events += [] if rec is None else [rec]
            self.drift.reset(version)
        interval = int(self.cfg.drift_sample_interval_s * _NS)
        if self._drift_last_ns is None or cap - self._drift_last_ns >= interval:
            self._drift_last_ns = cap
            if self.drift.observe(classes, scores):
                events += self.drift.events(self.book, seq, cap)
        return events

    # -- outputs -----------------------------------------------------------------------------

    def drain_bins(
        self, flush_before_ns: int | None = None, include_partial: bool = True
    ) -> list[BinRecord]:
        """Bin records to upsert: partial ones touched since the last call, then final ones.

        Bins ending at or before the newest frame's capture time are final. ``flush_before_ns``
        (e.g. wall clock minus a grace period for a camera that went silent) finalises bins
        ending by then too; frames older than that are afterwards rejected as LATE_DATA.
        """
        mark = self.last_ns if self.last_ns is not None else 0
        if flush_before_ns is not None:
            mark = max(mark, int(flush_before_ns))
        return self.bins.drain(mark, include_partial)

    def open_events(self) -> list[EventRecord]:
        return self.book.open_records()

    def _live(self, cap: int, now_ns: int | None, classes: NDArray[np.int64]) -> None:
        self._frame_times.append(cap)
        for cls in self.measures.counted_now:
            self._counted.append((cap, cls))
        if now_ns is not None:
            self._latency.append((cap, int(now_ns) - cap))
        self._present = classes
        horizon = cap - int(
            max(60.0, self.cfg.stats_latency_window_s, self.cfg.stats_fps_window_s) * _NS
        )
        for dq in (self._frame_times,):
            while dq and dq[0] <= horizon:
                dq.popleft()
        for dq2 in (self._counted, self._latency):
            while dq2 and dq2[0][0] <= horizon:
                dq2.popleft()

    def snapshot(self, now_ns: int | None = None) -> CameraStats:
        """Live statistics over trailing windows ending at ``now_ns`` (default: newest frame)."""
        ref = now_ns if now_ns is not None else (self.last_ns or 0)
        fps_from = ref - int(self.cfg.stats_fps_window_s * _NS)
        fps = sum(1 for x in self._frame_times if fps_from < x <= ref)
        minute = ref - 60 * _NS
        counts: dict[ObjectClass, int] = {}
        for t, cls in self._counted:
            if minute < t <= ref:
                counts[ObjectClass(cls)] = counts.get(ObjectClass(cls), 0) + 1
        lat_from = ref - int(self.cfg.stats_latency_window_s * _NS)
        lat = np.array([v for t, v in self._latency if lat_from < t <= ref], dtype=np.float64)
        by_class: dict[ObjectClass, int] = {}
        for cls in self._present.tolist():
            by_class[ObjectClass(cls)] = by_class.get(ObjectClass(cls), 0) + 1
        return CameraStats(
            camera=self.camera,
            processed_fps=fps / self.cfg.stats_fps_window_s,
            active_tracks=len(self._present),
            active_tracks_by_class=by_class,
            counts_last_minute=counts,
            open_events=len(self.book),
            latency_p50_s=float(np.percentile(lat, 50)) / _NS if len(lat) else None,
            latency_p99_s=float(np.percentile(lat, 99)) / _NS if len(lat) else None,
            last_frame_time_ns=self.last_ns,
            frames_accepted=self.frames_accepted,
            frames_rejected=dict(self.rejected),
            detection_issues=dict(self.issues),
            drift_kl_class=self.drift.kl_class,
            drift_kl_score=self.drift.kl_score,
        )

    # -- configuration changes ---------------------------------------------------------------

    def reconfigure(self, scene: CameraScene | SceneSpec) -> list[EventRecord]:
        """Adopt new scene geometry without losing tracks, open bins or drift state.

        Events tied to the old geometry (all but drift) are closed; per-track line sides and
        zone stays restart, so a track straddling a line at this moment may go uncounted.
        """
        t_ns = self.last_ns or 0
        closed = self.book.close_all(t_ns, keep=("drift",))
        keep: tuple[str, ...] = ("id", "cls", "speed", "seen_t", "counted")
        old, old_plane = self.table, self.scene.road_plane
        self._build(scene if isinstance(scene, CameraScene) else CameraScene.build(scene))
        if _same_plane(old_plane, self.scene.road_plane):
            # Position histories (speeds) are in the plane's coordinates.
            keep += ("h_t", "h_x", "h_y", "h_h", "h_head")
        else:
            self.tracker.set_ground(self.scene.road_plane)
        live = old.live_slots()
        ids = old["id"][live]
        slots, _ = self.table.slots(ids)
        for name in keep:
            self.table[name][slots] = old[name][live]
        if not self.scene.calibrated:
            self.table["speed"][slots] = np.nan
        return closed

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A JSON-ready document from which ``restore`` rebuilds this engine exactly."""
        return {
            "version": _STATE_VERSION,
            "camera": self.camera,
            "settings": self.cfg.model_dump(),
            "scene": self.scene.spec.to_state(),
            "t0_ns": self.t0_ns,
            "last_seq": self.last_seq,
            "last_ns": self.last_ns,
            "drift_last_ns": self._drift_last_ns,
            "frames_accepted": self.frames_accepted,
            "rejected": {k.value: v for k, v in self.rejected.items()},
            "issues": {k.value: v for k, v in self.issues.items()},
            "tracker": self.tracker.state(),
            "table": self.table.state(),
            "bins": self.bins.state(),
            "events": self.book.state(),
            "measures": self.measures.state(),
            "incidents": self.incidents.state(),
            "drift": self.drift.state(),
        }

    @classmethod
    def restore(cls, s: dict[str, Any]) -> CameraAnalytics:
        if s.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported analytics state version {s.get('version')!r}")
        eng = cls(
            str(s["camera"]),
            SceneSpec.from_state(s["scene"]),
            AnalyticsEngineSettings.model_validate(s["settings"]),
        )
        eng.t0_ns, eng.last_seq, eng.last_ns = s["t0_ns"], int(s["last_seq"]), s["last_ns"]
        eng.frames_accepted = int(s["frames_accepted"])
        eng._drift_last_ns = s["drift_last_ns"]
        eng.rejected = {FrameReject(k): int(v) for k, v in s["rejected"].items()}
        eng.issues = {DetectionIssue(k): int(v) for k, v in s["issues"].items()}
        eng.tracker = ByteTracker.from_state(eng.cfg.tracker, s["tracker"], eng.scene.road_plane)
        eng.table.restore(s["table"])
        eng.bins.restore(s["bins"])
        eng.book.restore(s["events"])
        eng.measures.restore(s["measures"])
        eng.incidents.restore(s["incidents"])
        eng.drift.restore(s["drift"])
        return eng

    def state_bytes(self) -> bytes:
        """``state()`` as compact compressed JSON (strict: no NaN)."""
        text = json.dumps(self.state(), separators=(",", ":"), allow_nan=False)
        return zlib.compress(text.encode(), 6)

    @classmethod
    def from_state_bytes(cls, data: bytes) -> CameraAnalytics:
        return cls.restore(json.loads(zlib.decompress(data)))
