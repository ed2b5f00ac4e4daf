"""``scripts/time_slice.py`` on the committed Intel clip: one row per frame, and a line
outside the frame refused with a message naming the line, the end and the frame size."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "time_slice.py"
CLIPS = ROOT / "tests" / "data" / "real_clips"
CLIP = CLIPS / "intel-car-detection.mp4"
FRAMES, WIDTH, HEIGHT = 377, 768, 432
GUTTER = 48  # time_slice.GUTTER: the frame-tick columns left of the samples


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--video", str(CLIP), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_one_row_per_frame_and_one_column_per_pixel_of_line(tmp_path: Path) -> None:
    done = _run("--line", "mid=16,216,752,216", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "intel-car-detection_mid.png") as img:
        # 736 px long: 737 samples, one per pixel, both ends included.
        assert img.size == (GUTTER + 737, FRAMES)
    with Image.open(tmp_path / "intel-car-detection_lines.png") as img:
        assert img.size == (WIDTH, HEIGHT)


def test_a_line_outside_the_frame_is_refused(tmp_path: Path) -> None:
    done = _run("--line", "mid=16,216,800,216", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "line mid (16,216 -> 800,216): end (800, 216) is outside the 768x432 frame" in (
        done.stderr
    )
    assert not list(tmp_path.iterdir())


def test_the_counts_describe_the_committed_clip() -> None:
    counts = json.loads((CLIPS / "counts.json").read_text())
    clip = next(c for c in counts["clips"] if c["file"] == CLIP.name)
    assert clip["path"] == str(CLIP.relative_to(ROOT))
    assert clip["sha256"] == hashlib.sha256(CLIP.read_bytes()).hexdigest()
    assert (clip["width"], clip["height"], clip["frames"]) == (WIDTH, HEIGHT, FRAMES)
    for line in clip["lines"]:
        by_direction = [line["totals"][d] for d in ("LEFT_TO_RIGHT", "RIGHT_TO_LEFT")]
        total = sum(n for classes in by_direction for n in classes.values())
        assert total == line["totals"]["all"] == len(line["crossings"])
