"""Feed the traffic simulator's ground truth through the analytics engine and score it.

The scene handed to analytics is what an operator would configure for the sim camera: the
sim's counting lines and lanes projected into the image, lanes split at the intersection so
each approach ends at its stop line, and a calibration from ground points projected with the
sim camera (its homography, exactly). Detections are the truth boxes (visible extent) of the
objects a detector could see (not ``difficult``), with optional noise, missed detections and
score jitter; classes map from the sim's 0-based label space to ObjectClass. Scores are
float32, as on the wire, so the same frames sent to the service (``SimRun.inputs``) give the
service exactly the engine's input. Given a detector, the detections are instead what it
finds in the rendered frames from the score the service's frame pipeline sends analytics
(``feed_score_threshold``), each matched to the truth box it overlaps most (IoU >= 0.3)
so that scoring still knows which vehicle a track followed.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from its_camera_ai.analytics import (
    CameraAnalytics,
    EventRecord,
    EventType,
    FrameInput,
    LineCrossing,
)
from its_camera_ai.common import AnalyticsEngineSettings, InferenceSettings
from its_camera_ai.inference import feed_score_threshold
from its_camera_ai.inference.models import DetectionModel
from its_camera_ai.inference.training import box_iou
from its_camera_ai.scene import CalibrationSpec, Direction, LaneSpec, LineSpec, SceneSpec
from its_camera_ai.sim import Crossing, FrameTruth, IncidentTruth, Scene, SceneConfig

CAMERA = "sim"
T0_NS = 1_699_999_200 * 10**9
KIND = {
    "stopped_vehicle": EventType.STOPPED_VEHICLE,
    "wrong_way": EventType.WRONG_WAY,
    "pedestrian_on_road": EventType.PEDESTRIAN_ON_ROADWAY,
}


def _img(scene: Scene, pts: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    uv = scene.camera.ground_to_image(np.array(pts, dtype=np.float64))
    return tuple((float(u), float(v)) for u, v in uv)


def analytics_scene(
    scene: Scene, x_near: float = 12.0, x_far: float = 160.0, *, calibrated: bool = True
) -> SceneSpec:
    w = scene.world
    lanes = []
    for ln in w.lanes:
        if ln.kind not in ("vehicle", "bike") or ln.dy != 0.0:
            continue  # the cross street is out of this camera's scope
        y0, y1 = ln.oy - ln.width / 2, ln.oy + ln.width / 2
        if w.cross_x is None:
            pieces = [("", x_near, x_far)]
        else:
            stop_x = ln.ox + ln.dx * (ln.stop_s or 0.0)
            before = (x_near, stop_x) if ln.dx > 0 else (stop_x, x_far)
            after_start = w.cross_x + w.cross_half + 0.5
            after = (after_start, x_far) if ln.dx > 0 else (x_near, w.crosswalk[0] - 0.5)
            pieces = [("a", *before), ("d", *after)]
        for tag, xa, xb in pieces:
            poly = _img(scene, [(xa, y0), (xa, y1), (xb, y1), (xb, y0)])
            up, down = (xa, xb) if ln.dx > 0 else (xb, xa)
            start, end = _img(scene, [(up, ln.oy), (down, ln.oy)])
            name = ln.name.replace("+", "p").replace("-", "m")
            lanes.append(LaneSpec(f"{name}{tag}".lower(), poly, start, end))
    lines = []
    for cl in scene.lines:
        a, b = _img(scene, [cl.a, cl.b])
        lines.append(LineSpec(cl.name.lower(), a, b))
    h = w.road_half
    ground = [(20.0, -h), (20.0, h), (100.0, -h), (100.0, h), (45.0, 0.5)]
    cal = CalibrationSpec(_img(scene, ground), tuple(ground)) if calibrated else None
    return SceneSpec(lines=tuple(lines), lanes=tuple(lanes), calibration=cal)


@dataclass
class SimRun:
    duration_s: float
    spec: SceneSpec
    size: tuple[int, int]  # width, height
    t0_ns: int = T0_NS  # capture time of the scene's time 0
    # the frames as fed to the engine, for replaying them elsewhere (the service)
    inputs: list[FrameInput] = field(default_factory=list)
    crossings_truth: list[Crossing] = field(default_factory=list)
    crossings: list[LineCrossing] = field(default_factory=list)
    events: dict[str, EventRecord] = field(default_factory=dict)
    incidents: tuple[IncidentTruth, ...] = ()
    # engine track id -> Counter of sim ids of the detections it took
    votes: dict[int, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    # (sim id, frame) -> truth speed km/h
    truth_speed: dict[tuple[int, int], float] = field(default_factory=dict)
    # the sim id each counted crossing's track held in the frame it was counted (or, ended
    # there, held last)
    crossing_sid: list[int | None] = field(default_factory=list)
    # sim id -> frames in which it was detectable (not ``difficult``)
    visible: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    fps: float = 10.0
    frames: int = 0
    detections: int = 0

    def sim_id(self, track: int) -> int | None:
        v = self.votes.get(track)
        return v.most_common(1)[0][0] if v else None

    def seconds(self, ns: int) -> float:
        """Scene time (s) of a capture timestamp."""
        return (ns - self.t0_ns) / 1e9


def _detected(
    detector: DetectionModel, threshold: float, image: np.ndarray, truth: FrameTruth
) -> tuple[np.ndarray, list[int]]:
    """The detector's rows for ``image`` from ``threshold`` and, per row, the sim id of the
    truth box it overlaps most (IoU >= 0.3), -1 for none."""
    (found,) = detector.detect(image[None], threshold)
    boxes = found.boxes.numpy().astype(np.float64)
    rows = np.column_stack([boxes, found.scores.numpy(), found.classes.numpy()]).reshape(-1, 6)
    if not truth.objects or not len(boxes):
        return rows, [-1] * len(boxes)
    iou = box_iou(boxes, np.array([o.box for o in truth.objects], dtype=np.float64))
    best = iou.argmax(axis=1)
    return rows, [truth.objects[j].track_id if iou[i, j] >= 0.3 else -1 for i, j in enumerate(best)]


def run_sim(
    cfg: SceneConfig,
    duration_s: float,
    *,
    size: tuple[int, int] = (640, 360),
    noise_px: float = 0.0,
    dropout: float = 0.0,
    seed: int = 0,
    settings: AnalyticsEngineSettings | None = None,
    start_ns: int = T0_NS,
    calibrated: bool = True,
    detector: DetectionModel | None = None,
) -> SimRun:
    scene = Scene(cfg, size=size)
    spec = analytics_scene(scene, calibrated=calibrated)
    engine = CameraAnalytics(CAMERA, spec, settings)
    rng = np.random.default_rng(seed)
    run = SimRun(duration_s, spec, size, start_ns, fps=cfg.fps)
    n = round(duration_s * cfg.fps)
    held: dict[int, int] = {}  # engine track id -> the sim id it held last
    detect = (
        None
        if detector is None
        else functools.partial(
            _detected, detector, feed_score_threshold(InferenceSettings(), detector)
        )
    )
    for image, truth in scene.frames(n, size=size):
        rows, ids = [], []
        for o in truth.objects:
            run.truth_speed[(o.track_id, truth.frame)] = o.speed_kmh
            if o.difficult:
                continue
            run.visible[o.track_id].add(truth.frame)
            if detector is not None or (dropout and rng.random() < dropout):
                continue
            box = np.array(o.box, dtype=np.float64)
            if noise_px:
                box += rng.normal(0.0, noise_px, 4)
            score = float(np.float32(rng.uniform(0.55, 0.95)))
            rows.append([*box, score, float(o.class_id + 1)])
            ids.append(o.track_id)
        det = np.array(rows, dtype=np.float64).reshape(-1, 6)
        if detect is not None:
            det, ids = detect(image, truth)
        capture = start_ns + round(truth.time_s * 1e9)
        frame = FrameInput(CAMERA, truth.frame + 1, capture, truth.width, truth.height, det, "1")
        run.inputs.append(frame)
        out = engine.process(frame)
        assert out.accepted, out.message
        now: dict[int, int] = {}
        for tid, sid in zip(out.track_ids.tolist(), ids, strict=True):
            if tid > 0:
                run.votes[tid][sid] += 1
                now[tid] = sid
        run.crossings += out.crossings
        # A track that ended in this frame (a crossing inferred as it left the picture) is
        # the vehicle it held last.
        run.crossing_sid += [now.get(c.track_id, held.get(c.track_id)) for c in out.crossings]
        held.update(now)
        for e in out.events:
            run.events[e.event_id] = e
        run.crossings_truth += truth.crossings
        run.frames += 1
        run.detections += len(det)
    run.incidents = scene.incident_truths()
    return run


@dataclass
class CountScore:
    truth: int = 0  # observable truth crossings in the window
    missed: int = 0  # of those, not counted
    extra: int = 0  # counted crossings in the window matching no truth crossing

    @property
    def measured(self) -> int:
        return self.truth - self.missed + self.extra

    @property
    def error(self) -> float:
        """Count errors of either kind over the truth (stricter than the net difference)."""
        return (self.missed + self.extra) / max(self.truth, 1)


# Sim direction +1: from the left of a->b to its right on the ground (x along the road, y to
# its left, seen from above). The camera looks down on the road, so left and right of the
# projected line are the same in the image: +1 is LEFT_TO_RIGHT.
TO_SIM = {Direction.LEFT_TO_RIGHT: 1, Direction.RIGHT_TO_LEFT: -1}


def _observable(run: SimRun) -> Callable[[Crossing], bool]:
    near = round(1.5 * run.fps)

    def observable(c: Crossing) -> bool:
        seen = run.visible.get(c.track_id, set())
        return any(c.frame - near <= f < c.frame for f in seen) and any(
            c.frame <= f <= c.frame + near for f in seen
        )

    return observable


def missed_crossings(run: SimRun, margin_s: float = 3.0) -> list[Crossing]:
    """Observable truth crossings in the window that the engine did not count (for messages)."""
    observable = _observable(run)
    ours = {
        (c.line_id, sid, TO_SIM[c.direction])
        for c, sid in zip(run.crossings, run.crossing_sid, strict=True)
    }
    return [
        c
        for c in run.crossings_truth
        if margin_s <= c.time_s <= run.duration_s - margin_s
        and observable(c)
        and (c.line.lower(), c.track_id, c.direction) not in ours
    ]


def score_counts(
    run: SimRun, margin_s: float = 3.0
) -> tuple[dict[tuple[str, int], CountScore], list[float]]:
    """Counts per (line, sim direction) and the speed errors (km/h) of matched crossings.

    The truth is every sim crossing in [margin, T - margin] that a camera could see: the
    vehicle detectable (not ``difficult``) within 1.5 s before and within 1.5 s after it.
    Crossings match on (line, vehicle, direction), the vehicle being the one the engine's
    track held in the frame it counted. Speed error: the engine's speed at its crossing
    against the sim's speed of that vehicle in the crossing frame.
    """
    lo, hi = margin_s, run.duration_s - margin_s
    observable = _observable(run)
    every = {(c.line.lower(), c.track_id, c.direction): c for c in run.crossings_truth}
    ours = {
        (c.line_id, sid, TO_SIM[c.direction]): c
        for c, sid in zip(run.crossings, run.crossing_sid, strict=True)
    }
    scores: dict[tuple[str, int], CountScore] = {}
    errors: list[float] = []
    for key, c in every.items():
        if lo <= c.time_s <= hi and observable(c):
            s = scores.setdefault((key[0], key[2]), CountScore())
            s.truth += 1
            if key not in ours:
                s.missed += 1
    for key, c in ours.items():
        if lo <= run.seconds(c.time_ns) <= hi and key not in every:
            scores.setdefault((key[0], key[2]), CountScore()).extra += 1
        hit = every.get(key)
        if hit is not None and c.speed_kmh is not None and lo <= hit.time_s <= hi:
            true_speed = run.truth_speed.get((hit.track_id, hit.frame))
            if true_speed is not None and true_speed > 1.0:
                errors.append(abs(c.speed_kmh - true_speed))
    return scores, errors


def score_incidents(
    run: SimRun, early_s: float = 2.0
) -> tuple[list[IncidentTruth], list[EventRecord], list[float]]:
    """(missed truths, false events, start delays in s).

    An event matches a truth of its type when it is on the same sim vehicle (the engine's
    track's majority vote), starts no earlier than ``early_s`` before it and overlaps it.
    Delays are measured from the truth's start or from when the vehicle first became
    detectable, whichever is later (a wrong-way driver "starts" far beyond the view)."""
    events = list(run.events.values())
    matched: set[str] = set()
    missed, delays = [], []
    for inc in run.incidents:
        end = inc.end_s if inc.end_s is not None else run.duration_s
        seen = run.visible.get(inc.track_id, set())
        first_seen = min(seen) / run.fps if seen else inc.start_s
        found = None
        for e in events:
            if e.type != KIND[inc.kind] or e.track_id is None or e.event_id in matched:
                continue
            if run.sim_id(e.track_id) != inc.track_id:
                continue
            start = run.seconds(e.start_time_ns)
            e_end = run.seconds(e.end_time_ns) if e.end_time_ns is not None else run.duration_s
            if start >= inc.start_s - early_s and start <= end and e_end >= inc.start_s:
                found = e
                break
        if found is None:
            missed.append(inc)
        else:
            matched.add(found.event_id)
            delays.append(run.seconds(found.start_time_ns) - max(inc.start_s, first_seen))
    false = [e for e in events if e.event_id not in matched]
    return missed, false, delays
