"""Traffic scene simulator with exact ground truth: synthetic cameras and training data.

A ``Scene`` is a world in metres (a two-way road with lanes, an optional signalised
intersection with a zebra crossing), road users of six classes driven by car following (IDM)
and lane changes (MOBIL), injectable incidents, and a pinhole camera whose ground-plane
homography is the calibration analytics uses. Frames are rendered with numpy under a
condition (day, dusk, night, rain, fog, glare) and come with per-frame truth: visible boxes
and occlusion from the rendered id buffer, world position and speed, counting-line crossings
and incidents. Everything is deterministic by seed.

    scene = Scene(SceneConfig(seed=1, condition="night"))
    for frame, truth in scene.frames(300):   # RGB uint8 H x W x 3, FrameTruth
        ...
"""

from __future__ import annotations

from its_camera_ai.sim._camera import Camera
from its_camera_ai.sim._cli import main
from its_camera_ai.sim._config import (
    CLASSES,
    CONDITIONS,
    CameraConfig,
    CountingLineConfig,
    EffectsConfig,
    IncidentConfig,
    IntersectionConfig,
    OsdConfig,
    RoadConfig,
    SceneConfig,
    TrafficConfig,
)
from its_camera_ai.sim._dataset import (
    DATASET_VERSION,
    TAGS,
    Shard,
    iter_samples,
    load_shard,
    parse_seeds,
    random_scene_config,
    shard_is_current,
    write_dataset,
)
from its_camera_ai.sim._effects import MAX_SMEAR_PX, image_motion
from its_camera_ai.sim._encode import VideoWriter, h264_roundtrip, read_video, write_png
from its_camera_ai.sim._scene import Scene
from its_camera_ai.sim._traffic import Agent
from its_camera_ai.sim._truth import (
    CountingLine,
    Crossing,
    FrameTruth,
    IncidentTruth,
    ObjectTruth,
    frame_tags,
    is_difficult,
)

__all__ = [
    "CLASSES",
    "CONDITIONS",
    "DATASET_VERSION",
    "MAX_SMEAR_PX",
    "TAGS",
    "Agent",
    "Camera",
    "CameraConfig",
    "CountingLine",
    "CountingLineConfig",
    "Crossing",
    "EffectsConfig",
    "FrameTruth",
    "IncidentConfig",
    "IncidentTruth",
    "IntersectionConfig",
    "ObjectTruth",
    "OsdConfig",
    "RoadConfig",
    "Scene",
    "SceneConfig",
    "Shard",
    "TrafficConfig",
    "VideoWriter",
    "frame_tags",
    "h264_roundtrip",
    "image_motion",
    "is_difficult",
    "iter_samples",
    "load_shard",
    "main",
    "parse_seeds",
    "random_scene_config",
    "read_video",
    "shard_is_current",
    "write_dataset",
    "write_png",
]
