"""The built-in sample camera: the traffic simulator's street as a live camera, configured
as an operator would configure a real one, so that something is counted within seconds.

Its counting lines are the simulator's own (projected into the image with the sim
camera), and its calibration is four road-surface points and a fifth off the centre line
projected the same way: exact, so speeds are measured too. The scene is deterministic by
its URI, which is what lets a test hold the counts against the simulator's ground truth
(``sample_scene``).
"""

from __future__ import annotations

import numpy as np

from its.camera.v1 import camera_pb2, camera_service_pb2
from its.common.v1 import geometry_pb2
from its_camera_ai.sim import Scene, SceneConfig
from its_camera_ai_client import AlreadyExistsError, connect_async

__all__ = [
    "SAMPLE_CAMERA",
    "SAMPLE_SOURCE",
    "create_sample_camera",
    "sample_camera",
    "sample_scene",
]

SAMPLE_CAMERA = "sample"
# 10 fps at 640 x 360: light enough for a laptop's CPU to decode, detect and track live.
SAMPLE_WIDTH, SAMPLE_HEIGHT, SAMPLE_FPS = 640, 360, 10
SAMPLE_SOURCE = f"sim://road?width={SAMPLE_WIDTH}&height={SAMPLE_HEIGHT}&fps={SAMPLE_FPS}"
# Road-plane points (metres along the road, across it) for the calibration: both kerbs at
# 30 m and 100 m (the near end is as close as the far kerb stays in the picture), spanning
# where vehicles are measured, plus one off the centre line so no three are collinear.
_CALIBRATION_ALONG_M = (30.0, 100.0)
_CALIBRATION_EXTRA_M = (45.0, 0.5)


def sample_scene() -> Scene:
    """The simulator scene the sample's source renders (same configuration, same seed):
    its ``crossings`` after stepping are the ground truth of the sample's counts."""
    return Scene(
        SceneConfig.model_validate(
            {"camera": {"width": SAMPLE_WIDTH, "height": SAMPLE_HEIGHT}, "fps": SAMPLE_FPS}
        )
    )


def _point(uv: np.ndarray) -> geometry_pb2.Point:
    return geometry_pb2.Point(x=float(uv[0]), y=float(uv[1]))


def sample_camera() -> camera_pb2.Camera:
    """The sample camera's resource: source, the simulator's lines, the calibration."""
    scene = sample_scene()
    lines = []
    for line in scene.lines:
        start, end = scene.camera.ground_to_image(np.array([line.a, line.b], dtype=np.float64))
        segment = geometry_pb2.LineSegment(start=_point(start), end=_point(end))
        lines.append(camera_pb2.CountingLine(id=line.name.lower(), segment=segment))
    half = scene.world.road_half
    ground = [(x, side) for x in _CALIBRATION_ALONG_M for side in (-half, half)]
    ground.append(_CALIBRATION_EXTRA_M)
    image = scene.camera.ground_to_image(np.array(ground, dtype=np.float64))
    points = [
        camera_pb2.CalibrationPoint(
            image_point=_point(uv), world_point=geometry_pb2.WorldPoint(x=x, y=y)
        )
        for uv, (x, y) in zip(image, ground, strict=True)
    ]
    return camera_pb2.Camera(
        display_name="Sample: the simulator's street",
        source_uri=SAMPLE_SOURCE,
        enabled=True,
        lines=lines,
        calibration=camera_pb2.Calibration(points=points),
    )


async def create_sample_camera(decoder_target: str, token: str) -> bool:
    """Create the sample camera through the decoder's API, with ``token``, unless a camera
    of that id exists (an operator may have changed it: it is left as it is). True when
    created."""
    request = camera_service_pb2.CreateCameraRequest(
        camera_id=SAMPLE_CAMERA, camera=sample_camera()
    )
    async with connect_async(decoder_target, token=token) as client:
        try:
            await client.cameras.CreateCamera(request)
        except AlreadyExistsError:
            return False
    return True
