from __future__ import annotations

import numpy as np
import pytest

from its_camera_ai.sim import CONDITIONS, Agent, Scene, SceneConfig

from .helpers import EMPTY, QUIET, small


def _empty_scene(**kw: object) -> Scene:
    return Scene(
        small(
            5,
            width=640,
            height=360,
            traffic=EMPTY,
            effects=QUIET,
            scenery=False,
            intersection=None,
            warmup_s=0.0,
            **kw,
        )
    )  # type: ignore[arg-type]


def _place(scene: Scene, cls: str, lane: str, x: float) -> Agent:
    ln = scene.world.lane(lane)
    s = ln.coords(x, 0.0)[0]
    return scene.sim.new_agent(cls, ln, s, v=0.0)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def test_same_seed_same_frames_and_truth() -> None:
    a, b = Scene(small(3)), Scene(small(3))
    for (fa, ta), (fb, tb) in zip(a.frames(3), b.frames(3), strict=True):
        assert np.array_equal(fa, fb)
        assert ta.to_dict() == tb.to_dict()
    fc, _ = Scene(small(4)).render()
    assert not np.array_equal(fa, fc)


def test_box_contains_the_rendered_pixels() -> None:
    scene = _empty_scene()
    empty, _ = scene.render()
    car = _place(scene, "car", "main+0", 35.0)
    frame, truth = scene.render()
    (obj,) = truth.objects
    assert obj.track_id == car.id
    assert obj.cls == "car"
    assert obj.occlusion == 0.0
    ys, xs = np.nonzero(_changed(frame, empty))
    x0, y0, x1, y1 = obj.box
    assert xs.min() >= x0
    assert xs.max() < x1
    assert ys.min() >= y0
    assert ys.max() < y1
    # Tight: the box is the extent of the drawn pixels (shadows are off).
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert obj.box == obj.full_box
    # And it sits inside the projection of the car's 3D bounding box.
    uv = scene.camera.project_box(*obj.world_xy, np.radians(obj.heading_deg), *obj.dims_m)
    assert uv[:, 0].min() - 1 <= x0
    assert x1 <= uv[:, 0].max() + 1
    assert uv[:, 1].min() - 1 <= y0
    assert y1 <= uv[:, 1].max() + 1


def test_bus_hiding_a_car_gives_the_rendered_occlusion() -> None:
    scene = _empty_scene()
    empty, _ = scene.render()
    # The bus is nearer in the same lane: the camera sees over it onto part of the car.
    car = _place(scene, "car", "main+1", 56.0)
    bus = _place(scene, "bus", "main+1", 40.0)
    scene.sim.agents = [car]
    only_car, t_car = scene.render()
    scene.sim.agents = [bus]
    only_bus, _ = scene.render()
    scene.sim.agents = [car, bus]
    _both, truth = scene.render()
    car_px = _changed(only_car, empty)
    bus_px = _changed(only_bus, empty)
    expected_visible = car_px & ~bus_px
    got = {o.cls: o for o in truth.objects}
    assert got["bus"].occlusion == 0.0
    full = t_car.objects[0].visible_px
    assert abs(full - car_px.sum()) <= 0.01 * full  # colour ties with the road are rare
    occ = 1.0 - expected_visible.sum() / car_px.sum()
    assert occ > 0.3  # a real occlusion case
    assert got["car"].occlusion == pytest.approx(occ, abs=0.02)
    ys, xs = np.nonzero(expected_visible)
    x0, y0, x1, y1 = got["car"].box
    assert abs(xs.min() - x0) <= 1
    assert abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1
    assert abs(ys.max() + 1 - y1) <= 1
    assert got["car"].full_box == t_car.objects[0].box
    assert "heavy_occlusion" in truth.tags or got["car"].occlusion < 0.5


def test_scenery_hides_what_is_behind_it() -> None:
    # A walker right behind a tree crown, on the camera ray through the crown's centre.
    def scene_with(scenery: bool) -> Scene:
        return Scene(
            small(
                5,
                width=640,
                height=360,
                traffic=EMPTY,
                effects=QUIET,
                intersection=None,
                warmup_s=0.0,
                scenery=scenery,
            )
        )

    def walker_truth(scene: Scene, gx: float, gy: float) -> list[object]:
        lane = scene.world.lane("walk+L")
        walker = scene.sim.new_agent("person", lane, lane.coords(gx, gy)[0], v=0.0)
        walker.lat = lane.coords(gx, gy)[1]
        return list(scene.render()[1].objects)

    scene = scene_with(True)
    cam = scene.camera
    ball = next(b for b in scene.world.scenery.balls if b.y > 0 and 25 < b.x - cam.C[0] < 60)
    # Aim just below the crown, beside the trunk: the walker is partly hidden.
    aim = np.array([ball.x + 1.0, ball.y, ball.z - ball.r * 1.3])
    t = cam.C[2] / (cam.C[2] - aim[2])
    gx, gy = (cam.C + t * (aim - cam.C))[:2]
    (hidden,) = walker_truth(scene, gx, gy)
    (clear,) = walker_truth(scene_with(False), gx, gy)
    assert clear.occlusion == 0.0  # type: ignore[attr-defined]
    assert 0.1 < hidden.occlusion < 0.95  # type: ignore[attr-defined]
    assert hidden.full_box == clear.box  # type: ignore[attr-defined]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_renders(condition: str) -> None:
    frame, truth = Scene(small(2, condition=condition, warmup_s=1.0)).render()
    assert frame.shape == (180, 320, 3)
    assert frame.dtype == np.uint8
    assert truth.condition == condition
    assert condition in truth.tags
    assert truth.objects


def _road_patch(scene: Scene, frame: np.ndarray) -> np.ndarray:
    h = frame.shape[0]
    return frame[int(h * 0.45) :, :].astype(np.float64)


def test_night_is_darker_and_fog_flatter_than_day() -> None:
    frames = {}
    for cond in ("day", "night", "fog", "dusk"):
        scene = Scene(small(2, condition=cond, warmup_s=1.0))
        frames[cond] = scene.render()[0].astype(np.float64)
    mean = {c: f.mean() for c, f in frames.items()}
    assert mean["night"] < 0.5 * mean["day"]
    assert mean["night"] < mean["dusk"] < mean["day"]
    # Fog: the far half of the picture loses contrast (RMS contrast of luminance).
    far = {c: f[: f.shape[0] // 2].mean(axis=2) for c, f in frames.items()}
    assert far["fog"].std() < 0.6 * far["day"].std()


def test_any_resolution_keeps_the_traffic() -> None:
    scene = Scene(small(6))
    _small_frame, t_small = scene.render()
    big_frame, t_big = scene.render((640, 360))
    assert big_frame.shape == (360, 640, 3)
    near = {o.track_id for o in t_small.objects if not o.difficult}
    assert near <= {o.track_id for o in t_big.objects}
    with pytest.raises(ValueError, match="even"):
        scene.render((641, 360))


def test_frames_stream_at_the_configured_rate() -> None:
    scene = Scene(SceneConfig(seed=1, fps=60, warmup_s=0.5, camera={"width": 64, "height": 48}))  # type: ignore[arg-type]
    import time

    t0 = time.monotonic()
    got = [t.frame for _, t in scene.frames(4, realtime=True)]
    assert got == [0, 1, 2, 3]
    assert time.monotonic() - t0 >= 3 / 60 - 1e-3
