"""Detector training/evaluation data: many random scenes, sampled frames, exact labels.

Layout of a dataset directory::

    index.json            classes, tag names, image size, one entry per shard, tag counts
    seed_000042.npz       one shard per seed (numpy ``np.load``; no pickle)

A shard holds N images and M boxes; boxes of image i are rows ``box_offsets[i]`` to
``box_offsets[i + 1]``:

    images       uint8   (N, H, W, 3)  RGB
    box_offsets  int64   (N + 1,)
    boxes        float32 (M, 4)  visible extent x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    full_boxes   float32 (M, 4)  whole projected object, clipped to the image
    classes      uint8   (M,)    index into ``CLASSES``
    track_ids    int32   (M,)
    occlusion    float16 (M,)    hidden fraction of the in-frame silhouette
    truncation   float16 (M,)
    difficult    bool    (M,)    too small or hidden to demand (evaluate as "ignore")
    tags         bool    (N, T)  T = ``TAGS``: condition, heavy_occlusion, small_objects
    frame        int32   (N,)    frame index within the seed's scene
    seed         int64   ()

Each seed gets its own random camera, road, demand and condition (and, for a share of
seeds, burnt-in on-screen text), so held-out seeds are held-out scenes. Conditions cycle
with the seed so every condition is equally represented.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._config import (
    CLASSES,
    CONDITIONS,
    CameraConfig,
    EffectsConfig,
    IncidentConfig,
    IntersectionConfig,
    OsdConfig,
    RoadConfig,
    SceneConfig,
    TrafficConfig,
)
from its_camera_ai.sim._encode import h264_roundtrip
from its_camera_ai.sim._scene import Scene

__all__ = [
    "DATASET_VERSION",
    "TAGS",
    "Shard",
    "iter_samples",
    "load_shard",
    "parse_seeds",
    "random_incidents",
    "random_scene_config",
    "shard_is_current",
    "write_dataset",
]

TAGS: tuple[str, ...] = (*CONDITIONS, "heavy_occlusion", "small_objects")
# 2: a share of the random scenes carries on-screen text; 3: a share is seen from above;
# 4: cars have body styles (sedan, hatchback, SUV) and tumblehome, glass mirrors the sky.
# Every shard records the version it was rendered by, so a cache of shards from an older
# one is rendered again, not reused.
DATASET_VERSION = 4
_OSD_FRACTION = 0.6
_OVERHEAD_FRACTION = 0.2
_OSD_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_incidents(
    rng: np.random.Generator, count: int, seconds: float, lanes_per_direction: int
) -> tuple[IncidentConfig, ...]:
    kinds = ["stopped_vehicle", "pedestrian_on_road"]
    if lanes_per_direction >= 2:
        kinds.append("wrong_way")
    out = []
    for i in range(count):
        kind = kinds[(i + int(rng.integers(len(kinds)))) % len(kinds)]
        start = float(rng.uniform(0.0, max(seconds * 0.5, 0.1)))
        out.append(
            IncidentConfig.model_validate(
                {
                    "kind": kind,
                    "start_s": round(start, 2),
                    "duration_s": round(float(rng.uniform(8.0, 30.0)), 2),
                }
            )
        )
    return tuple(out)


def _random_osd(seed: int, height: int) -> OsdConfig | None:
    """On-screen text for a share of scenes, so the detector learns to ignore it.

    Drawn from its own stream so that adding it left every other parameter of a seed as
    it was: datasets and held-out scenes keep their cameras, roads and traffic.
    """
    rng = np.random.default_rng([seed, 0x05D])
    if rng.random() >= _OSD_FRACTION:
        return None
    words = [
        "".join(rng.choice(list(_OSD_CHARS), int(rng.integers(2, 8))).tolist())
        for _ in range(int(rng.integers(1, 3)))
    ]
    start = datetime(2019, 1, 1) + timedelta(seconds=int(rng.integers(0, 7 * 365 * 86400)))
    return OsdConfig(
        label=" ".join(words),
        timestamp=bool(rng.random() < 0.85),
        start=start,
        corner=rng.choice(["top_left", "top_right", "bottom_left", "bottom_right"]).item(),
        # 10-30 px at 720 lines, as on real cameras; the font needs 8 px to stay legible.
        height_px=int(np.clip(round(height * rng.uniform(0.014, 0.042)), 8, 40)),
        color=rng.choice(["white", "white", "yellow"]).item(),
        background=rng.choice(["outline", "outline", "box", "none"]).item(),
    )


def _overhead_camera(seed: int, width: int, height: int, road_half_m: float) -> CameraConfig | None:
    """For a share of scenes, a camera looking steeply down on the road (a bridge, a gantry,
    a tall mast over a junction), turned any way, so vehicles are also seen from above.

    Drawn from its own stream, as the OSD is: the other scenes keep their pole cameras.
    """
    rng = np.random.default_rng([seed, 0x0BE4EAD])
    if rng.random() >= _OVERHEAD_FRACTION:
        return None
    h, tilt = rng.uniform(6.0, 30.0), rng.uniform(50.0, 88.0)
    pan = rng.uniform(-90.0, 90.0)
    # The view centre lands on the road: the camera stands back from it along the pan.
    reach = h / np.tan(np.radians(tilt))
    aim_y = rng.uniform(-road_half_m, road_half_m)
    return CameraConfig(
        width=width,
        height=height,
        x_m=float(-reach * np.cos(np.radians(pan))),
        y_m=float(aim_y - reach * np.sin(np.radians(pan))),
        height_m=float(h),
        hfov_deg=float(rng.uniform(40.0, 75.0)),
        pan_deg=float(pan),
        tilt_deg=float(tilt),
    )


def random_scene_config(
    seed: int, condition: str, width: int, height: int, *, seconds: float = 60.0
) -> SceneConfig:
    """A varied scene: camera pose and lens, road layout, demand mix, incidents, OSD."""
    rng = np.random.default_rng([seed, 0xDA7A5E7])
    lanes = int(rng.choice([1, 2, 2, 3, 3]))
    style = rng.random()
    # A few scene styles so small objects and heavy occlusion both get plenty of samples:
    # (pole height, distance the view centre is aimed at, horizontal field of view).
    if style < 0.25:  # high, far and wide: small objects
        h, aim, fov = rng.uniform(9, 18), rng.uniform(70, 150), rng.uniform(55, 85)
    elif style < 0.5:  # low and close: big vehicles hiding each other
        h, aim, fov = rng.uniform(4, 7), rng.uniform(18, 40), rng.uniform(45, 70)
    else:
        h, aim, fov = rng.uniform(6, 14), rng.uniform(30, 90), rng.uniform(40, 75)
    road = RoadConfig(
        lanes_per_direction=lanes,
        bike_lanes=bool(rng.random() < 0.7),
        lane_width_m=float(rng.uniform(3.0, 3.75)),
        speed_limit_kmh=float(rng.choice([30, 40, 50, 50, 60, 70, 80])),
    )
    half = lanes * road.lane_width_m + (road.bike_lane_width_m if road.bike_lanes else 0)
    # Beside the road on a pole, or above it on a gantry; aimed at the road centre ahead.
    y = (
        -(half + float(rng.uniform(1.0, 9.0)))
        if rng.random() < 0.75
        else float(rng.uniform(-half, half * 0.3))
    )
    camera = CameraConfig(
        width=width,
        height=height,
        y_m=y,
        height_m=float(h),
        hfov_deg=float(fov),
        pan_deg=float(np.degrees(np.arctan2(-y, aim)) + rng.uniform(-6, 6)),
        tilt_deg=float(np.clip(np.degrees(np.arctan2(h, aim)) + rng.uniform(-2, 3), 2, 60)),
    )
    # Drawn after the pole camera so that every later draw is the same either way.
    camera = _overhead_camera(seed, width, height, half) or camera
    inter = None
    if rng.random() < 0.65:
        inter = IntersectionConfig(
            x_m=float(rng.uniform(45, 110)),
            lanes_per_direction=int(rng.integers(1, 3)),
            offset_s=float(rng.uniform(0, 60)),
        )
    heavy = style >= 0.25 and style < 0.5
    mix = {
        "car": float(rng.uniform(0.5, 0.85)),
        "truck": float(rng.uniform(0.03, 0.2)),
        "bus": float(rng.uniform(0.02, 0.15)),
        "motorcycle": float(rng.uniform(0.03, 0.15)),
    }
    traffic = TrafficConfig(
        flow_veh_h_per_lane=float(rng.uniform(700, 1400) if heavy else rng.uniform(250, 1100)),
        cross_flow_veh_h_per_lane=float(rng.uniform(100, 600)),
        bicycle_flow_h=float(rng.uniform(20, 200)),
        pedestrian_flow_h=float(rng.uniform(40, 500)),
        class_mix=mix,
    )
    effects = EffectsConfig(
        noise=int(rng.choice([1, 3, 3, 7])) if condition != "night" else 7,
        osd=_random_osd(seed, height),
    )
    return SceneConfig.model_validate(
        {
            "seed": seed,
            "condition": condition,
            "camera": camera,
            "road": road,
            "intersection": inter,
            "traffic": traffic,
            "effects": effects,
            "warmup_s": 8.0,
            "incidents": random_incidents(rng, int(rng.integers(0, 3)), seconds, lanes),
        }
    )


def _seed_samples(
    seed: int,
    frames: int,
    width: int,
    height: int,
    conditions: Sequence[str],
    interval_s: float,
    h264_fraction: float,
) -> dict[str, NDArray[Any]]:
    condition = conditions[seed % len(conditions)]
    cfg = random_scene_config(seed, condition, width, height, seconds=frames * interval_s)
    scene = Scene(cfg)
    every = max(1, round(interval_s * cfg.fps))
    images, truths = [], []
    for i in range(frames):
        if i:
            for _ in range(every):
                scene.step()
        img, truth = scene.render()
        images.append(img)
        truths.append(truth)
    rng = np.random.default_rng([seed, 0x264])
    if rng.random() < h264_fraction:
        # What a decoder hands the detector: real H.264 artefacts at a random quality.
        images = h264_roundtrip(images, crf=int(rng.integers(20, 33)), fps=cfg.fps)
    objs = [o for t in truths for o in t.objects]
    offsets = np.zeros(frames + 1, np.int64)
    np.cumsum([len(t.objects) for t in truths], out=offsets[1:])
    tags = np.array([[tag in t.tags for tag in TAGS] for t in truths], bool).reshape(
        frames, len(TAGS)
    )
    return {
        "images": np.stack(images),
        "box_offsets": offsets,
        "boxes": np.array([o.box for o in objs], np.float32).reshape(-1, 4),
        "full_boxes": np.array([o.full_box for o in objs], np.float32).reshape(-1, 4),
        "classes": np.array([o.class_id for o in objs], np.uint8),
        "track_ids": np.array([o.track_id for o in objs], np.int32),
        "occlusion": np.array([o.occlusion for o in objs], np.float16),
        "truncation": np.array([o.truncation for o in objs], np.float16),
        "difficult": np.array([o.difficult for o in objs], bool),
        "tags": tags,
        "frame": np.array([t.frame for t in truths], np.int32),
        "seed": np.array(seed, np.int64),
    }


def _write_seed(
    args: tuple[Path, int, int, int, int, tuple[str, ...], float, float, bool],
) -> dict[str, Any]:
    out, seed, frames, width, height, conditions, interval, h264, compress = args
    data = _seed_samples(seed, frames, width, height, conditions, interval, h264)
    data["version"] = np.asarray(DATASET_VERSION)
    name = f"seed_{seed:06d}.npz"
    if compress:
        np.savez_compressed(out / name, allow_pickle=False, **data)
    else:
        np.savez(out / name, allow_pickle=False, **data)
    return {
        "file": name,
        "seed": seed,
        "condition": conditions[seed % len(conditions)],
        "images": int(data["images"].shape[0]),
        "boxes": int(data["boxes"].shape[0]),
        "tag_counts": {t: int(c) for t, c in zip(TAGS, data["tags"].sum(0).tolist(), strict=True)},
    }


def write_dataset(
    out: str | Path,
    seeds: Sequence[int],
    frames_per_seed: int,
    *,
    width: int = 640,
    height: int = 384,
    conditions: Sequence[str] = CONDITIONS,
    interval_s: float = 1.0,
    h264_fraction: float = 0.3,
    compress: bool = True,
    workers: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Render ``frames_per_seed`` samples for every seed into ``out``; returns the index."""
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions: unknown {bad}; allowed {list(CONDITIONS)}")
    if frames_per_seed < 1:
        raise ValueError("frames_per_seed must be >= 1")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            root,
            s,
            frames_per_seed,
            width,
            height,
            tuple(conditions),
            interval_s,
            h264_fraction,
            compress,
        )
        for s in seeds
    ]
    shards: list[dict[str, Any]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for entry in pool.map(_write_seed, jobs):
                shards.append(entry)
                if progress:
                    progress(entry)
    else:
        for job in jobs:
            entry = _write_seed(job)
            shards.append(entry)
            if progress:
                progress(entry)
    totals = {t: sum(s["tag_counts"][t] for s in shards) for t in TAGS}
    index = {
        "format": "its-sim-npz",
        "version": DATASET_VERSION,
        "classes": list(CLASSES),
        "tags": list(TAGS),
        "width": width,
        "height": height,
        "interval_s": interval_s,
        "difficult_rule": "box h < 8 px or w < 4 px or < 24 visible px or occlusion >= 0.8",
        "shards": shards,
        "tag_counts": totals,
        "images": sum(s["images"] for s in shards),
        "boxes": sum(s["boxes"] for s in shards),
    }
    (root / "index.json").write_text(json.dumps(index, indent=1))
    return index


@dataclass(frozen=True, slots=True)
class Shard:
    images: NDArray[np.uint8]
    box_offsets: NDArray[np.int64]
    boxes: NDArray[np.float32]
    full_boxes: NDArray[np.float32]
    classes: NDArray[np.uint8]
    track_ids: NDArray[np.int32]
    occlusion: NDArray[np.float16]
    truncation: NDArray[np.float16]
    difficult: NDArray[np.bool_]
    tags: NDArray[np.bool_]
    frame: NDArray[np.int32]
    seed: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def labels(self, i: int) -> tuple[NDArray[np.float32], NDArray[np.uint8], NDArray[np.bool_]]:
        """Boxes, classes and difficult flags of image ``i``."""
        a, b = int(self.box_offsets[i]), int(self.box_offsets[i + 1])
        return self.boxes[a:b], self.classes[a:b], self.difficult[a:b]


def shard_is_current(path: str | Path) -> bool:
    """Whether ``path`` is a shard the simulator as it is now would render (False if it is
    missing, cut short by an interrupted render, or rendered by an older version: same seed,
    other pixels)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "version" in z.files and int(z["version"]) == DATASET_VERSION
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def load_shard(path: str | Path) -> Shard:
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    return Shard(
        d["images"],
        d["box_offsets"],
        d["boxes"],
        d["full_boxes"],
        d["classes"],
        d["track_ids"],
        d["occlusion"],
        d["truncation"],
        d["difficult"],
        d["tags"],
        d["frame"],
        int(d["seed"]),
    )


def iter_samples(
    root: str | Path,
) -> Iterator[
    tuple[
        NDArray[np.uint8],
        NDArray[np.float32],
        NDArray[np.uint8],
        NDArray[np.bool_],
        tuple[str, ...],
    ]
]:
    """(image, boxes, classes, difficult, tags) for every image of a dataset directory."""
    base = Path(root)
    index = json.loads((base / "index.json").read_text())
    tags = index["tags"]
    for entry in index["shards"]:
        shard = load_shard(base / entry["file"])
        for i in range(len(shard)):
            boxes, classes, difficult = shard.labels(i)
            on = tuple(t for t, v in zip(tags, shard.tags[i].tolist(), strict=True) if v)
            yield shard.images[i], boxes, classes, difficult, on


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3', '1,4,9' or combinations like '0-9,20-29'."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"seed range {part!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError("no seeds given")
    return out
