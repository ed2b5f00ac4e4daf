"""Command line: write a video with its truth, build a detector dataset, or take a snapshot.

its-camera-ai sim write-video --seed 1 --seconds 10 --condition day --out sample.mp4
its-camera-ai sim dataset --seeds 0-99 --frames-per-seed 40 --out data/sim
its-camera-ai sim snapshot --seed 1 --condition night --out night.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from its_camera_ai.sim._config import CONDITIONS, CameraConfig, SceneConfig
from its_camera_ai.sim._dataset import parse_seeds, random_incidents, write_dataset
from its_camera_ai.sim._encode import VideoWriter, write_png
from its_camera_ai.sim._scene import Scene

__all__ = ["main"]


def _scene_config(a: argparse.Namespace, seconds: float) -> SceneConfig:
    if a.config:
        text = Path(a.config).read_text()
        return SceneConfig.model_validate_json(text)
    rng = np.random.default_rng([a.seed, 0x1C1])
    incidents = random_incidents(rng, a.incidents, seconds, 2) if a.incidents else ()
    return SceneConfig(
        seed=a.seed,
        condition=a.condition,
        fps=a.fps,
        camera=CameraConfig(width=a.width, height=a.height),
        incidents=incidents,
    )


def _write_video(a: argparse.Namespace) -> int:
    cfg = _scene_config(a, a.seconds)
    scene = Scene(cfg)
    out = Path(a.out)
    truth_path = Path(a.truth) if a.truth else out.with_suffix(".truth.jsonl")
    n = max(1, round(a.seconds * cfg.fps))
    t0 = time.perf_counter()
    with (
        VideoWriter(out, cfg.camera.width, cfg.camera.height, cfg.fps, crf=a.crf) as vw,
        truth_path.open("w") as tf,
    ):
        header: dict[str, Any] = {"type": "header", **scene.summary()}
        header.pop("incidents")
        header.pop("crossings")
        header.pop("frames")
        tf.write(json.dumps(header) + "\n")
        for frame, truth in scene.frames(n):
            vw.write(frame)
            tf.write(json.dumps({"type": "frame", **truth.to_dict()}) + "\n")
        summary = scene.summary()
        summary["frames"] = n
        tf.write(
            json.dumps(
                {
                    "type": "summary",
                    "frames": n,
                    "incidents": summary["incidents"],
                    "crossings": summary["crossings"],
                }
            )
            + "\n"
        )
    dt = time.perf_counter() - t0
    print(
        f"wrote {n} frames to {out} and truth to {truth_path} in {dt:.1f} s ({n / dt:.1f} frames/s)"
    )
    return 0


def _dataset(a: argparse.Namespace) -> int:
    seeds = parse_seeds(a.seeds)
    conditions = [c.strip() for c in a.conditions.split(",") if c.strip()]
    t0 = time.perf_counter()

    def progress(entry: dict[str, Any]) -> None:
        if not a.quiet:
            print(
                f"seed {entry['seed']}: {entry['images']} images, {entry['boxes']} boxes, "
                f"{entry['condition']}",
                flush=True,
            )

    index = write_dataset(
        a.out,
        seeds,
        a.frames_per_seed,
        width=a.width,
        height=a.height,
        conditions=conditions,
        interval_s=a.interval,
        workers=a.workers,
        h264_fraction=a.h264_fraction,
        compress=a.compress,
        progress=progress,
    )
    dt = time.perf_counter() - t0
    print(
        f"wrote {index['images']} images / {index['boxes']} boxes in {len(seeds)} shards to "
        f"{a.out} in {dt:.1f} s; tags: {index['tag_counts']}"
    )
    return 0


def _snapshot(a: argparse.Namespace) -> int:
    scene = Scene(_scene_config(a, a.at))
    for _ in range(round(a.at * scene.fps)):
        scene.step()
    frame, truth = scene.render()
    write_png(a.out, frame)
    print(f"wrote {a.out}: {len(truth.objects)} objects, tags {list(truth.tags)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="its-camera-ai sim",
        description="Traffic scene simulator with exact ground truth.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def scene_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--condition", choices=CONDITIONS, default="day")
        sp.add_argument("--width", type=int, default=1280)
        sp.add_argument("--height", type=int, default=720)
        sp.add_argument("--fps", type=float, default=30.0)
        sp.add_argument(
            "--incidents", type=int, default=0, help="number of random incidents to inject"
        )
        sp.add_argument("--config", help="SceneConfig as JSON (overrides the options above)")

    v = sub.add_parser("write-video", help="render an H.264 mp4 and its truth (JSONL)")
    scene_args(v)
    v.add_argument("--seconds", type=float, default=10.0)
    v.add_argument("--out", required=True)
    v.add_argument("--truth", help="truth JSONL path (default: OUT with .truth.jsonl)")
    v.add_argument("--crf", type=int, default=23)
    v.set_defaults(run=_write_video)

    d = sub.add_parser("dataset", help="render detector training/eval shards")
    d.add_argument("--seeds", required=True, help="e.g. 0-99 or 1,5,9")
    d.add_argument("--frames-per-seed", type=int, required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--width", type=int, default=640)
    d.add_argument("--height", type=int, default=384)
    d.add_argument("--conditions", default=",".join(CONDITIONS))
    d.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    d.add_argument(
        "--h264-fraction",
        type=float,
        default=0.3,
        help="fraction of seeds whose images pass through H.264",
    )
    d.add_argument(
        "--compress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="deflate the shards (about 3x smaller; --no-compress loads faster)",
    )
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(run=_dataset)

    s = sub.add_parser("snapshot", help="render one frame to PNG")
    scene_args(s)
    s.add_argument("--at", type=float, default=0.0, help="seconds into the scene")
    s.add_argument("--out", required=True)
    s.set_defaults(run=_snapshot)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValidationError as e:
        print(f"invalid scene configuration:\n{e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
