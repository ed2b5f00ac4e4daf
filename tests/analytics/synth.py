"""A small synthetic road for the analytics tests: exact homography, boxes from ground tracks.

The road runs along world x (metres, away from the camera), lanes across world y. Image
points come from a fixed ground->image homography, so the engine calibrated with the same
correspondences recovers ground positions exactly and any speed error is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics import FrameInput, ObjectClass
from its_camera_ai.scene import (
    CalibrationSpec,
    LaneSpec,
    LineSpec,
    SceneSpec,
    ZoneSpec,
    fit_homography,
)

W, H = 1280, 720
CAMERA = "cam-1"
T0_NS = 1_699_999_200 * 1_000_000_000  # a multiple of 15 min since the epoch
# Ground trapezoid -> image: near edge (x=0) wide at the bottom, far edge (x=100) narrow.
GROUND_PTS = ((0.0, -8.0), (0.0, 8.0), (100.0, 8.0), (100.0, -8.0))
IMAGE_PTS = ((1180.0, 700.0), (100.0, 700.0), (560.0, 200.0), (720.0, 200.0))
_HOM = fit_homography(np.array(IMAGE_PTS), np.array(GROUND_PTS))


def to_image(x: float, y: float) -> tuple[float, float]:
    p = _HOM.to_image(np.array([[x, y]]))[0]
    return float(p[0]), float(p[1])


def box_at(
    x: float, y: float, width_m: float = 1.8, height_m: float = 1.5
) -> tuple[float, float, float, float]:
    """Box whose bottom-centre is the ground point (x, y), sized by the local scale."""
    u, v = to_image(x, y)
    ul, _ = to_image(x, y + 0.5)
    ur, _ = to_image(x, y - 0.5)
    s = abs(ur - ul)  # pixels per metre across the road here
    w, h = width_m * s, height_m * s
    return (u - w / 2, v - h, u + w / 2, v)


def calibration() -> CalibrationSpec:
    return CalibrationSpec(IMAGE_PTS, GROUND_PTS)


def lane_polygon(
    y0: float, y1: float, x0: float = 5.0, x1: float = 95.0
) -> tuple[tuple[float, float], ...]:
    return (to_image(x0, y0), to_image(x0, y1), to_image(x1, y1), to_image(x1, y0))


def road_scene(calibrated: bool = True, zones: Sequence[ZoneSpec] = ()) -> SceneSpec:
    """Two lanes away from the camera (y in [-7, 0]: lane a1 [-3.5,0], a2 [-7,-3.5]) and one
    towards it (b1: y in [0, 3.5]); a counting line across the whole road at x = 40 m, and a
    short one across lane a1 only at x = 60 m."""
    lanes = (
        LaneSpec("a1", lane_polygon(-3.5, 0.0), to_image(5.0, -1.75), to_image(95.0, -1.75)),
        LaneSpec("a2", lane_polygon(-7.0, -3.5), to_image(5.0, -5.25), to_image(95.0, -5.25)),
        LaneSpec("b1", lane_polygon(0.0, 3.5), to_image(95.0, 1.75), to_image(5.0, 1.75)),
    )
    lines = (
        LineSpec("all", to_image(40.0, -8.0), to_image(40.0, 8.0)),
        LineSpec("a1-only", to_image(60.0, -3.5), to_image(60.0, 0.0)),
    )
    return SceneSpec(
        lines=lines,
        zones=tuple(zones),
        lanes=lanes,
        calibration=calibration() if calibrated else None,
    )


@dataclass
class Agent:
    """An object moving on the ground: position(t) -> (x, y) or None when absent."""

    position: Callable[[float], tuple[float, float] | None]
    cls: ObjectClass = ObjectClass.CAR
    score: Callable[[float], float] = lambda t: 0.9
    size: tuple[float, float] = (1.8, 1.5)
    hidden: Callable[[float], bool] = lambda t: False


def straight(
    x0: float, y: float, speed_kmh: float, t_start: float = 0.0, t_end: float = 1e9
) -> Callable[[float], tuple[float, float] | None]:
    v = speed_kmh / 3.6

    def pos(t: float) -> tuple[float, float] | None:
        if not t_start <= t < t_end:
            return None
        x = x0 + v * (t - t_start)
        return (x, y) if -5.0 <= x <= 105.0 else None

    return pos


@dataclass
class Run:
    frames: list[FrameInput] = field(default_factory=list)


def frames(
    agents: Sequence[Agent],
    duration_s: float,
    fps: float = 25.0,
    noise_px: float = 0.0,
    dropout: float = 0.0,
    seed: int = 0,
    start_ns: int = T0_NS,
    first_seq: int = 1,
) -> list[FrameInput]:
    """Render agents into detection frames (optionally with box noise and missed detections)."""
    rng = np.random.default_rng(seed)
    out = []
    n = round(duration_s * fps)
    for k in range(n):
        t = k / fps
        rows = []
        for a in agents:
            p = a.position(t)
            if p is None or a.hidden(t):
                continue
            if dropout and rng.random() < dropout:
                continue
            b = np.array(box_at(p[0], p[1], *a.size))
            if noise_px:
                b = b + rng.normal(0.0, noise_px, 4)
            b[0::2] = np.clip(b[0::2], 0, W)
            b[1::2] = np.clip(b[1::2], 0, H)
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            rows.append([*b, a.score(t), float(a.cls)])
        det = np.array(rows, dtype=np.float64).reshape(-1, 6)
        out.append(FrameInput(CAMERA, first_seq + k, start_ns + round(t * 1e9), W, H, det))
    return out


def run(engine: object, frames_: Iterable[FrameInput]) -> list[object]:
    return [engine.process(f) for f in frames_]  # type: ignore[attr-defined]


PixelPath = Callable[[int], tuple[float, float, float, float] | None]


def pixel_frames(
    paths: Sequence[tuple[PixelPath, float, int]],
    n_frames: int,
    fps: float = 25.0,
    start_ns: int = T0_NS,
    camera: str = CAMERA,
) -> list[FrameInput]:
    """Frames from per-frame pixel boxes: each path is (frame -> box or None, score, class)."""
    out = []
    for k in range(n_frames):
        rows = []
        for path, score, cls in paths:
            b = path(k)
            if b is not None:
                rows.append([*b, score, float(cls)])
        det = np.array(rows, dtype=np.float64).reshape(-1, 6)
        out.append(FrameInput(camera, k + 1, start_ns + round(k / fps * 1e9), W, H, det))
    return out


def moving_box(
    x0: float,
    y0: float,
    vx: float,
    vy: float,
    w: float = 60.0,
    h: float = 40.0,
    visible: Callable[[int], bool] = lambda k: True,
) -> PixelPath:
    """A box whose bottom-centre starts at (x0, y0) and moves (vx, vy) pixels per frame."""

    def path(k: int) -> tuple[float, float, float, float] | None:
        if not visible(k):
            return None
        cx, by = x0 + vx * k, y0 + vy * k
        return (cx - w / 2, by - h, cx + w / 2, by)

    return path


def to_array(rows: Sequence[Sequence[float]]) -> NDArray[np.float64]:
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def piecewise(
    knots: Sequence[tuple[float, float]], y: float
) -> Callable[[float], tuple[float, float] | None]:
    """Along x through (time, x) knots, linearly; absent before the first and after the last."""
    ts = np.array([k[0] for k in knots])
    xs = np.array([k[1] for k in knots])

    def pos(t: float) -> tuple[float, float] | None:
        if not ts[0] <= t <= ts[-1]:
            return None
        return (float(np.interp(t, ts, xs)), y)

    return pos


def wrong_way_traffic(duration_s: float, start_ns: int) -> list[FrameInput]:
    """A driver going the wrong way down the road scene's lane (from 90 m towards the
    camera's end at 50 km/h) among five cars going the right way: one WRONG_WAY incident."""
    ghost = Agent(piecewise([(0, 90), (90 * 3.6 / 50, 0)], -1.75))
    cars = [Agent(straight(0.0, -5.25, 60.0, t_start=3.0 * i)) for i in range(5)]
    return frames([ghost, *cars], duration_s, fps=10.0, start_ns=start_ns)
