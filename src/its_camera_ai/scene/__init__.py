"""A camera's scene: counting lines, zones, lanes and the ground-plane calibration.

One model shared by the decoder, which validates cameras with it (``scene_from_proto``), and
analytics, which builds its per-frame geometry from it (``CameraScene``): one rule set, one
set of error messages. The plane geometry (polygons, segments, homography) lives here too,
and ``CameraDirectory``: the decoder's cameras and scenes, followed through its API.
"""

from __future__ import annotations

from its_camera_ai.scene._directory import DECODER_FAILURES, CameraDirectory, KnownCamera
from its_camera_ai.scene._geometry import (
    GeometryError,
    Homography,
    PolygonSet,
    distance_to_boundary,
    fit_homography,
    inside_frame,
    points_in_polygon,
    polygon_area,
    polygon_problem,
    segment_crossing,
    signed_distances,
)
from its_camera_ai.scene._proto import scene_from_proto
from its_camera_ai.scene._rules import ID_RULE, MAX_FRAME_HEIGHT, MAX_FRAME_WIDTH, Frame
from its_camera_ai.scene._scene import (
    CalibrationSpec,
    CameraScene,
    Direction,
    LaneSpec,
    LineSpec,
    SceneSpec,
    ZoneSpec,
)

__all__ = [
    "DECODER_FAILURES",
    "ID_RULE",
    "MAX_FRAME_HEIGHT",
    "MAX_FRAME_WIDTH",
    "CalibrationSpec",
    "CameraDirectory",
    "CameraScene",
    "Direction",
    "Frame",
    "GeometryError",
    "Homography",
    "KnownCamera",
    "LaneSpec",
    "LineSpec",
    "PolygonSet",
    "SceneSpec",
    "ZoneSpec",
    "distance_to_boundary",
    "fit_homography",
    "inside_frame",
    "points_in_polygon",
    "polygon_area",
    "polygon_problem",
    "scene_from_proto",
    "segment_crossing",
    "signed_distances",
]
