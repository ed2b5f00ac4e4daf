"""One rule set: what the camera service refuses, analytics refuses too, in the same words."""

from __future__ import annotations

import pytest

from its.camera.v1 import camera_pb2
from its_camera_ai.common import InvalidArgumentError
from its_camera_ai.scene import Frame, scene_from_proto


def _zone_camera(*vertices: tuple[float, float]) -> camera_pb2.Camera:
    camera = camera_pb2.Camera()
    zone = camera.zones.add(id="z")
    for x, y in vertices:
        zone.polygon.vertices.add(x=x, y=y)
    return camera


@pytest.mark.parametrize(
    ("vertices", "words"),
    [
        (((0, 0), (10, 10), (10, 0), (0, 10)), "intersects itself"),  # a bow tie
        (((0, 0), (40, 0), (20, 0), (20, 30)), "intersects itself"),  # collinear overlap
        (((0, 0), (40, 0), (40, 40), (20, 0)), "intersects itself"),  # a vertex on an edge
        (((0, 0), (10, 0), (10, 10), (0, 0)), "must not repeat the first vertex"),
        (((0, 0), (10, 10), (20, 20)), "has zero area"),
        (((0, 0), (10, 0)), "needs at least 3 vertices"),
    ],
)
def test_degenerate_polygons_are_not_simple(
    vertices: tuple[tuple[float, float], ...], words: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(_zone_camera(*vertices))
    assert [v.field for v in err.value.violations] == ["camera.zones[0].polygon"]
    assert words in err.value.violations[0].description


def test_the_frame_bounds_image_geometry_when_given() -> None:
    camera = _zone_camera((0, 0), (900, 0), (0, 90))
    scene_from_proto(camera)  # no frame: anywhere finite
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(camera, frame=Frame(640, 360))
    assert [v.field for v in err.value.violations] == ["camera.zones[0].polygon.vertices[1]"]
    assert "outside the 640x360 frame" in err.value.violations[0].description


def test_missing_segments_are_required_not_degenerate() -> None:
    camera = camera_pb2.Camera()
    camera.lines.add(id="l")
    lane = camera.lanes.add(id="a")
    for x, y in ((0, 0), (10, 0), (10, 10)):
        lane.polygon.vertices.add(x=x, y=y)
    with pytest.raises(InvalidArgumentError) as err:
        scene_from_proto(camera)
    assert {(v.field, v.description) for v in err.value.violations} == {
        ("camera.lines[0].segment", "is required"),
        ("camera.lanes[0].travel_direction", "is required"),
    }
