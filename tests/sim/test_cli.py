from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from its_camera_ai.sim import CLASSES, TAGS, iter_samples, load_shard, main, read_video


def test_write_video_writes_mp4_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "s.mp4"
    rc = main(
        [
            "write-video",
            "--seed",
            "1",
            "--seconds",
            "0.5",
            "--condition",
            "night",
            "--width",
            "160",
            "--height",
            "96",
            "--incidents",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert len(list(read_video(out))) == 15
    lines = [json.loads(x) for x in (tmp_path / "s.truth.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["header"] + ["frame"] * 15 + ["summary"]
    assert lines[0]["calibration"]["width"] == 160
    assert lines[0]["classes"] == list(CLASSES)
    assert lines[1]["condition"] == "night"
    assert lines[15]["frame"] == 14


def test_dataset_shards_load(tmp_path: Path) -> None:
    rc = main(
        [
            "dataset",
            "--seeds",
            "0-1",
            "--frames-per-seed",
            "2",
            "--width",
            "128",
            "--height",
            "96",
            "--out",
            str(tmp_path),
            "--quiet",
            "--interval",
            "0.5",
        ]
    )
    assert rc == 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["images"] == 4
    assert index["tags"] == list(TAGS)
    assert [s["condition"] for s in index["shards"]] == ["day", "dusk"]
    shard = load_shard(tmp_path / index["shards"][0]["file"])
    assert shard.images.shape == (2, 96, 128, 3)
    boxes, classes, difficult = shard.labels(0)
    assert boxes.shape[1] == 4
    assert len(classes) == len(difficult) == len(boxes)
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert (classes < len(CLASSES)).all()
    samples = list(iter_samples(tmp_path))
    assert len(samples) == 4
    assert samples[0][4][0] == "day"
    assert np.array_equal(samples[0][0], shard.images[0])


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"camera": {"tilt_deg": 100}}))
    assert main(["snapshot", "--config", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert (
        main(["dataset", "--seeds", "5-1", "--frames-per-seed", "1", "--out", str(tmp_path)]) == 2
    )


def test_module_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "its_camera_ai", "sim", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 0
    assert "write-video" in r.stdout
