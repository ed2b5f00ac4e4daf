"""Homography fitting, polygons, segments, and scene validation from the Camera proto."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from its.camera.v1 import camera_pb2
from its.common.v1 import geometry_pb2
from its_camera_ai.common import InvalidArgumentError
from its_camera_ai.scene import (
    CameraScene,
    Direction,
    GeometryError,
    LaneSpec,
    PolygonSet,
    SceneSpec,
    fit_homography,
    points_in_polygon,
    scene_from_proto,
    segment_crossing,
    signed_distances,
)
from tests.analytics import synth

IMG = np.array(synth.IMAGE_PTS)
GND = np.array(synth.GROUND_PTS)


def test_homography_round_trip() -> None:
    h = fit_homography(IMG, GND)
    assert h.rms_reprojection_error_px < 1e-6
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(0, 100, 200), rng.uniform(-8, 8, 200)])
    back = h.to_ground(h.to_image(ground))
    assert np.allclose(back, ground, atol=1e-6)
    assert np.allclose(h.to_ground(IMG), GND, atol=1e-6)


def test_homography_more_points_least_squares() -> None:
    h0 = fit_homography(IMG, GND)
    rng = np.random.default_rng(1)
    ground = np.column_stack([rng.uniform(0, 100, 12), rng.uniform(-8, 8, 12)])
    image = h0.to_image(ground) + rng.normal(0, 0.5, (12, 2))
    h = fit_homography(image, ground)
    assert 0.1 < h.rms_reprojection_error_px < 1.5
    err = np.hypot(*(h.to_ground(h0.to_image(ground)) - ground).T)
    assert np.median(err) < 0.5  # metres; 0.5 px noise is metres along the road far away


def test_image_motion_is_the_projection_and_its_derivative() -> None:
    h = fit_homography(IMG, GND)
    ground = np.array([[10.0, -2.0], [60.0, 3.0], [95.0, 0.0]])
    vel = np.array([[12.0, 0.5], [-8.0, 0.0], [0.0, 1.0]])
    pos, pos_v, depth, depth_v = h.image_motion(ground, vel)
    assert np.allclose(pos, h.to_image(ground))
    dt = 1e-6
    later, _, depth_later, _ = h.image_motion(ground + vel * dt, vel)
    assert np.allclose(pos_v, (later - pos) / dt, rtol=1e-4, atol=1e-6)
    assert np.allclose(depth_v, (depth_later - depth) / dt, rtol=1e-4, atol=1e-9)
    # Farther along the road, deeper: ratios are positive and grow with the distance.
    assert 1.0 < depth[1] / depth[0] < depth[2] / depth[0]


def test_points_above_the_horizon_have_no_ground_point() -> None:
    h = fit_homography(IMG, GND)
    horizon_probe = np.array([[640.0, 0.0], [640.0, 400.0]])  # far above the far edge
    g = h.to_ground(horizon_probe)
    assert np.isnan(g[0]).all() or g[0, 0] > 100  # beyond the horizon -> NaN
    assert np.isfinite(g[1]).all()


@pytest.mark.parametrize(
    ("image", "world", "field", "words"),
    [
        (IMG[:3], GND[:3], "points", "at least 4"),
        (np.array([[0, 0], [10, 0], [20, 0], [5, 9.0]]), GND, "points", "collinear"),
        (IMG, np.array([[0, 0], [1, 1], [2, 2], [0, 5.0]]), "points", "collinear"),
        (np.vstack([IMG[:3], IMG[:1]]), GND, "points[3].image_point", "repeats"),
        (np.vstack([IMG[:3], [[np.nan, 1]]]), GND, "points[3]", "finite"),
    ],
)
def test_degenerate_calibration_is_rejected_naming_the_field(
    image: np.ndarray, world: np.ndarray, field: str, words: str
) -> None:
    with pytest.raises(GeometryError) as err:
        fit_homography(image, world)
    assert err.value.field == field
    assert words in err.value.description


def test_points_in_polygon_and_polygon_set_agree() -> None:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10.0]])
    tri = np.array([[20, 0], [30, 0], [25, 10.0]])
    pts = np.array([[5, 5], [15, 5], [25, 2], [10.5, 5], [-1, -1], [24, 9.5]])
    ps = PolygonSet((square, tri))
    got = ps.contains(pts)
    assert got[:, 0].tolist() == points_in_polygon(pts, square).tolist()
    assert got[:, 1].tolist() == points_in_polygon(pts, tri).tolist()
    assert got.tolist() == [
        [True, False],
        [False, False],
        [False, True],
        [False, False],
        [False, False],
        [False, False],
    ]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=20))
def test_polygon_set_matches_single_polygon_test(points: list[tuple[float, float]]) -> None:
    poly = np.array([[0, 0], [30, -10], [40, 20], [10, 30], [-20, 10.0]])
    pts = np.array(points)
    assert PolygonSet((poly,)).contains(pts)[:, 0].tolist() == points_in_polygon(pts, poly).tolist()


def test_signed_distance_sides_follow_the_proto() -> None:
    seg = np.array([[0.0, 100.0, 200.0, 100.0]])  # drawn left to right
    d = signed_distances(np.array([[50.0, 120.0], [50.0, 80.0]]), seg)
    assert d[0, 0] == pytest.approx(20.0)  # below (towards the camera) = right side
    assert d[1, 0] == pytest.approx(-20.0)
    u, lam = segment_crossing((50, 90), (50, 110), (0, 100, 200, 100))  # type: ignore[misc]
    assert u == pytest.approx(0.5)
    assert lam == pytest.approx(0.25)


def _pt(x: float, y: float) -> geometry_pb2.Point:
    return geometry_pb2.Point(x=x, y=y)


def _camera() -> camera_pb2.Camera:
    cam = camera_pb2.Camera(name="cameras/cam-1")
    line = cam.lines.add(id="stop-nb", direction=1)
    line.segment.start.CopyFrom(_pt(100, 500))
    line.segment.end.CopyFrom(_pt(1100, 500))
    lane = cam.lanes.add(id="nb-1")
    for x, y in synth.lane_polygon(-3.5, 0.0):
        lane.polygon.vertices.add(x=x, y=y)
    lane.travel_direction.start.CopyFrom(_pt(*synth.to_image(5, -1.75)))
    lane.travel_direction.end.CopyFrom(_pt(*synth.to_image(95, -1.75)))
    zone = cam.zones.add(id="shoulder")
    for x, y in ((0, 600), (200, 600), (200, 700), (0, 700)):
        zone.polygon.vertices.add(x=x, y=y)
    for (u, v), (x, y) in zip(synth.IMAGE_PTS, synth.GROUND_PTS, strict=True):
        p = cam.calibration.points.add()
        p.image_point.CopyFrom(_pt(u, v))
        p.world_point.x, p.world_point.y = x, y
    return cam


def test_scene_from_proto() -> None:
    scene = scene_from_proto(_camera())
    assert scene.calibrated
    assert scene.line_directions == (Direction.LEFT_TO_RIGHT,)
    assert scene.lane_length_m[0] == pytest.approx(90.0, abs=1e-6)
    assert scene.lane_end_s[0] == pytest.approx(90.0, abs=1e-6)  # from x = 5 m to 95 m
    assert [z.id for z in scene.spec.zones] == ["shoulder"]


def test_scene_errors_name_every_bad_field() -> None:
    cam = _camera()
    cam.lines.add(id="Bad_Id").segment.start.CopyFrom(_pt(1, 1))  # end defaults to (0, 0)
    cam.lines.add(id="stop-nb")
    cam.zones[0].polygon.vertices.pop()
    cam.zones[0].polygon.vertices.pop()
    cam.calibration.points[2].image_point.CopyFrom(_pt(1180.0, 450.0))  # on a line with 0, 1?
    cam.calibration.points[2].image_point.CopyFrom(_pt(640.0, 700.0))  # collinear with 0 and 1
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(cam)
    fields = {v.field for v in err.value.violations}
    assert "camera.lines[1].id" in fields
    assert "camera.lines[2].id" in fields  # duplicate
    assert "camera.lines[2].segment" in fields  # start == end
    assert "camera.zones[0].polygon" in fields
    assert "camera.calibration.points" in fields
    assert "collinear" in str(err.value)


def test_self_intersecting_polygon_and_unknown_direction() -> None:
    cam = _camera()
    z = cam.zones[0].polygon
    del z.vertices[:]
    for x, y in ((0, 0), (10, 10), (10, 0), (0, 10)):  # a bow tie
        z.vertices.add(x=x, y=y)
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(cam, field_prefix="update.camera")
    assert [v.field for v in err.value.violations] == ["update.camera.zones[0].polygon"]
    cam = _camera()
    cam.lines[0].direction = 7  # type: ignore[assignment]
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(cam)
    assert [v.field for v in err.value.violations] == ["camera.lines[0].direction"]


def test_uncalibrated_scene_uses_image_lane_coordinates() -> None:
    scene = CameraScene.build(synth.road_scene(calibrated=False))
    assert not scene.calibrated
    assert np.isnan(scene.lane_length_m).all()
    assert np.allclose(np.hypot(*scene.lane_axis.T), 1.0)


def test_road_plane_is_the_calibration_or_a_rectangular_lane() -> None:
    calibrated = CameraScene.build(synth.road_scene())
    assert calibrated.road_plane is calibrated.homography is not None

    lane = ((100.0, 700.0), (400.0, 700.0), (560.0, 300.0), (500.0, 300.0))
    spec = SceneSpec(lanes=(LaneSpec("a", lane, (250.0, 700.0), (530.0, 300.0)),))
    plane = CameraScene.build(spec).road_plane
    assert plane is not None
    # The lane is taken for a rectangle on the road: its corners are the unit square.
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    assert np.allclose(plane.to_ground(np.array(lane)), square)

    pentagon = (*lane, (90.0, 500.0))
    spec = SceneSpec(lanes=(LaneSpec("a", pentagon, (250.0, 700.0), (530.0, 300.0)),))
    assert CameraScene.build(spec).road_plane is None
