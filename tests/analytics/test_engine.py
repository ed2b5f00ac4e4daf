"""The engine's contract: bad input counted never raised, rejections, determinism, restarts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from its.analytics.v1 import detection_batch_pb2
from its_camera_ai.analytics import (
    BinRecord,
    CameraAnalytics,
    DetectionIssue,
    EventRecord,
    FrameInput,
    FrameOutcome,
    FrameReject,
)
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import ZoneSpec
from tests.analytics import synth

FAR = synth.T0_NS + 10**15


def _engine(**kw: Any) -> CameraAnalytics:
    return CameraAnalytics(synth.CAMERA, synth.road_scene(**kw))


def _frame(seq: int, det: Any, t_s: float | None = None, **kw: Any) -> FrameInput:
    args: dict[str, Any] = {
        "camera": synth.CAMERA,
        "frame_sequence": seq,
        "capture_time_ns": synth.T0_NS + int((seq if t_s is None else t_s) * 4e7),
        "width": synth.W,
        "height": synth.H,
        "detections": det,
    }
    args.update(kw)
    return FrameInput(**args)


def test_malformed_detections_are_counted_and_repaired_or_dropped() -> None:
    eng = _engine()
    det = synth.to_array(
        [
            [100, 100, 150, 140, 0.9, 1],  # fine
            [np.nan, 100, 150, 140, 0.9, 1],  # NaN coordinate
            [100, 100, 150, 140, np.inf, 1],  # inf score
            [100, 100, 150, 140, 0.9, 17],  # unknown class
            [100, 100, 150, 140, 0.9, 1.5],  # not a class number
            [150, 100, 100, 140, 0.9, 1],  # negative width
            [2000, 100, 2100, 140, 0.9, 1],  # entirely outside
            [-20, 100, 30, 140, 0.9, 2],  # partly outside: clamped
            [100, 100, 100.5, 140, 0.9, 1],  # too thin
            [0, 0, 1280, 700, 0.9, 3],  # absurdly big
            [300, 300, 350, 340, 1.7, 1],  # score above 1: clamped
        ]
    )
    out = eng.process(_frame(1, det))
    assert out.accepted
    assert out.issues == {
        DetectionIssue.DROP_NONFINITE_BOX: 1,
        DetectionIssue.DROP_NONFINITE_SCORE: 1,
        DetectionIssue.DROP_UNKNOWN_CLASS: 2,
        DetectionIssue.DROP_NONPOSITIVE_SIZE: 1,
        DetectionIssue.DROP_OUTSIDE_FRAME: 1,
        DetectionIssue.CLAMPED_TO_FRAME: 1,
        DetectionIssue.DROP_TOO_SMALL: 1,
        DetectionIssue.DROP_ABSURD_SIZE: 1,
        DetectionIssue.CLAMPED_SCORE: 1,
    }
    assert len(out.track_ids) == len(det)
    assert eng.snapshot().detection_issues[DetectionIssue.DROP_UNKNOWN_CLASS] == 2


def test_too_many_detections_keeps_the_most_confident() -> None:

    eng = CameraAnalytics(
        synth.CAMERA, synth.road_scene(), AnalyticsEngineSettings(max_detections=3)
    )
    det = synth.to_array(
        [[10 * i, 10, 10 * i + 8, 30, s, 1] for i, s in enumerate([0.2, 0.9, 0.5, 0.95, 0.1])]
    )
    out = eng.process(_frame(1, det))
    assert out.issues == {DetectionIssue.DROP_OVER_LIMIT: 2}


def test_strict_mode_rejects_the_frame() -> None:

    eng = CameraAnalytics(
        synth.CAMERA,
        synth.road_scene(),
        AnalyticsEngineSettings(reject_frame_on_bad_detection=True),
    )
    out = eng.process(_frame(1, synth.to_array([[2000, 100, 2100, 140, 0.9, 1]])))
    assert out.rejected == FrameReject.BAD_DETECTION
    assert out.rejected.error_reason == 1
    assert eng.process(_frame(2, synth.to_array([[-5, 100, 50, 140, 0.9, 1]]))).accepted


def test_frame_rejections() -> None:
    eng = _engine()
    empty = np.zeros((0, 6))
    assert eng.process(_frame(5, empty)).accepted
    cases: list[tuple[FrameInput, FrameReject]] = [
        (_frame(6, empty, camera="cam-2"), FrameReject.WRONG_CAMERA),
        (_frame(5, empty), FrameReject.DUPLICATE_FRAME),
        (_frame(3, empty), FrameReject.DUPLICATE_FRAME),
        (_frame(7, empty, t_s=4.0), FrameReject.TIME_BACKWARDS),
        (_frame(8, empty, width=0), FrameReject.BAD_FRAME),
        (_frame(9, empty, height=10**6), FrameReject.BAD_FRAME),
        (_frame(10, np.zeros((3, 5))), FrameReject.BAD_FRAME),
        (_frame(11, "boxes"), FrameReject.BAD_FRAME),
        (_frame(-1, empty), FrameReject.BAD_FRAME),
        (_frame(12, empty, capture_time_ns=-5), FrameReject.BAD_FRAME),
        (_frame(13, empty, capture_time_ns=1.5e18), FrameReject.BAD_FRAME),
        (_frame(True, empty), FrameReject.BAD_FRAME),  # type: ignore[arg-type]
    ]
    for frame, reason in cases:
        out = eng.process(frame)
        assert out.rejected == reason, (frame, out)
        assert out.events == ()
    stats = eng.snapshot()
    assert stats.frames_accepted == 1
    assert sum(stats.frames_rejected.values()) == len(cases)
    assert FrameReject.LATE_DATA.error_reason == 13
    assert FrameReject.DUPLICATE_FRAME.error_reason == 14
    assert FrameReject.WRONG_CAMERA.error_reason == 6


def test_a_restarted_ring_starts_its_sequence_again() -> None:
    # A decoder restart re-creates the camera's ring, whose sequence starts again at 1: a
    # lower sequence with a later capture time is a new stream, not a duplicate. A resend
    # of an accepted frame has an earlier (or equal) capture time and stays a duplicate.
    eng = _engine()
    empty = np.zeros((0, 6))
    assert all(eng.process(_frame(seq, empty)).accepted for seq in range(1, 41))
    assert eng.process(_frame(1, empty, t_s=60.0)).accepted
    assert eng.process(_frame(2, empty, t_s=61.0)).accepted
    assert eng.process(_frame(2, empty, t_s=61.0)).rejected == FrameReject.DUPLICATE_FRAME
    # A straggler of the old stream is refused too: its time is before the new stream's.
    assert eng.process(_frame(30, empty)).rejected == FrameReject.TIME_BACKWARDS


def test_late_data_after_a_flush() -> None:
    eng = _engine()
    assert eng.process(_frame(1, np.zeros((0, 6)), t_s=0.0)).accepted
    records = eng.drain_bins(flush_before_ns=synth.T0_NS + 61 * 10**9)  # camera went silent
    assert records
    assert all(r.final for r in records if r.key.bin_seconds == 60)
    out = eng.process(_frame(2, np.zeros((0, 6)), t_s=30 / 0.04))  # 30 s, inside the final bin
    assert out.rejected == FrameReject.LATE_DATA


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_garbage = st.one_of(
    hnp.arrays(np.float64, st.tuples(st.integers(0, 12), st.just(6)), elements=_floats),
    hnp.arrays(
        np.float64, st.tuples(st.integers(0, 12), st.just(6)), elements=st.floats(-100, 1500)
    ),
    hnp.arrays(np.float64, st.tuples(st.integers(0, 4), st.integers(0, 8)), elements=_floats),
    st.lists(st.lists(st.one_of(_floats, st.integers(-10, 10)), max_size=7), max_size=5),
    st.none(),
    st.text(max_size=5),
    st.integers(),
)
_frames = st.lists(
    st.tuples(
        st.integers(-2, 40),  # sequence (repeats, zero, negatives)
        st.integers(-(10**9), 10**11),  # capture time offset (backwards jumps)
        st.sampled_from([synth.W, 0, -1, 10**7, 640]),
        st.sampled_from([synth.H, 0, 360]),
        _garbage,
        st.sampled_from([synth.CAMERA, "other", ""]),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames)
def test_garbage_frames_never_raise(frames: list[tuple[Any, ...]]) -> None:
    eng = _engine(zones=[ZoneSpec("z", synth.lane_polygon(-8.0, 8.0, 20.0, 40.0))])
    accepted = 0
    for seq, dt, w, h, det, cam in frames:
        out = eng.process(FrameInput(cam, seq, synth.T0_NS + dt, w, h, det))
        assert isinstance(out, FrameOutcome)
        accepted += out.accepted
        if out.accepted:
            assert out.track_ids.dtype == np.int64
    eng.drain_bins()
    stats = eng.snapshot()
    assert stats.frames_accepted == accepted
    json.loads(json.dumps(eng.state(), allow_nan=False))  # the state stays strict JSON
    CameraAnalytics.from_state_bytes(eng.state_bytes())


# -- determinism and restarts ----------------------------------------------------------------


def _busy_frames() -> list[FrameInput]:
    rng = np.random.default_rng(7)
    agents = [
        synth.Agent(
            synth.straight(
                0.0, float(rng.choice([-1.75, -5.25])), float(rng.uniform(40, 80)), t_start=float(t)
            )
        )
        for t in np.cumsum(rng.exponential(1.5, 60))
    ]
    stop = 40 / (50 / 3.6)
    agents.append(
        synth.Agent(synth.piecewise([(0, 10), (stop, 50), (stop + 30, 50), (stop + 33, 95)], -1.75))
    )
    agents.append(
        synth.Agent(
            lambda t: (30.0, -8 + 1.2 * t) if 20 <= t <= 33 else None,
            cls=synth.ObjectClass.PERSON,
            size=(0.6, 1.7),
        )
    )
    return synth.frames(agents, 100.0, fps=10.0, noise_px=0.8, dropout=0.05, seed=3)


def _play(
    eng: CameraAnalytics, frames: list[FrameInput]
) -> tuple[list[EventRecord], list[BinRecord], list[list[int]]]:
    events: list[EventRecord] = []
    records: list[BinRecord] = []
    tracks: list[list[int]] = []
    for i, f in enumerate(frames):
        out = eng.process(f)
        events += out.events
        tracks.append(out.track_ids.tolist())
        if i % 50 == 49:  # the servicer drains once per batch
            records += eng.drain_bins()
    return events, records, tracks


def test_engine_is_deterministic() -> None:
    frames = _busy_frames()
    a, b = _play(_engine(), frames), _play(_engine(), frames)
    assert a == b
    assert any(e.end_time_ns for e in a[0])  # the scenario does produce events


def test_restore_continues_exactly_and_replay_does_not_double_count() -> None:
    frames = _busy_frames()
    split = 437  # mid-bin, mid-incident
    ref_events, ref_records, ref_tracks = _play(_engine(), frames)

    first = _engine()
    ev1, rec1, tr1 = _play(first, frames[:split])
    checkpoint = first.state_bytes()  # committed with the batch
    # The process goes on a little, then crashes before its next commit...
    _play(first, frames[split : split + 123])
    # ...and restarts from the checkpoint; the producer resends everything not acknowledged.
    again = CameraAnalytics.from_state_bytes(checkpoint)
    events = ev1.copy()
    records = rec1.copy()
    tracks = tr1.copy()
    for i, f in enumerate(frames[split:], start=split):
        out = again.process(f)
        events += out.events
        tracks.append(out.track_ids.tolist())
        if i % 50 == 49:
            records += again.drain_bins()
    assert tracks == ref_tracks
    assert events == ref_events
    assert records == ref_records
    assert len(checkpoint) < 64_000


def test_capture_times_beyond_the_clock_limits_are_rejected_and_move_nothing() -> None:
    eng = _engine()
    det = synth.to_array([[100, 100, 150, 140, 0.9, 1]])
    now = synth.T0_NS
    assert eng.process(_frame(1, det, t_s=0.0), now).rejected is None
    eng.drain_bins()
    clock = (eng.last_seq, eng.last_ns, eng.bins.final_before_ns)
    skew_ns = int(eng.cfg.max_capture_skew_seconds * 1e9)
    horizon_ns = max(eng.cfg.bin_seconds) * 10**9
    for seq, capture_ns, reason in (
        (2, now + skew_ns + 1, FrameReject.CAPTURE_TIME_IN_FUTURE),
        (3, now + 30 * 365 * 86400 * 10**9, FrameReject.CAPTURE_TIME_IN_FUTURE),
        (4, now - horizon_ns - 1, FrameReject.CAPTURE_TIME_TOO_OLD),
    ):
        out = eng.process(_frame(seq, det, capture_time_ns=capture_ns), now)
        assert out.rejected is reason
        eng.drain_bins()
        assert (eng.last_seq, eng.last_ns, eng.bins.final_before_ns) == clock
    # At the limits themselves, and without an arrival clock (recorded traffic): accepted.
    assert eng.process(_frame(5, det, capture_time_ns=now + skew_ns), now).rejected is None
    assert eng.process(_frame(6, det, capture_time_ns=FAR)).rejected is None
    assert eng.snapshot().frames_rejected == {
        FrameReject.CAPTURE_TIME_IN_FUTURE: 2,
        FrameReject.CAPTURE_TIME_TOO_OLD: 1,
    }


def test_the_skew_setting_has_bounds() -> None:
    assert AnalyticsEngineSettings().max_capture_skew_seconds == 5.0
    for bad in (-1.0, 3601.0):
        with pytest.raises(ValidationError, match="max_capture_skew_seconds"):
            AnalyticsEngineSettings(max_capture_skew_seconds=bad)


def test_every_rejection_has_a_wire_cause_of_its_name() -> None:
    causes = detection_batch_pb2.FrameRejectionCause
    for reject in FrameReject:
        assert causes.Value(f"FRAME_REJECTION_CAUSE_{reject.name}")
    # ...and the metric's label is the cause's name in lower case (plus unknown_camera).
    names = {
        n.removeprefix("FRAME_REJECTION_CAUSE_").lower() for n in causes.DESCRIPTOR.values_by_name
    }
    assert names - {"unspecified", "unknown_camera"} == {r.value for r in FrameReject}
