from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from its_camera_ai.sim import Scene, VideoWriter, h264_roundtrip, read_video, write_png

from .helpers import small


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-9))


def test_h264_file_round_trip(tmp_path: Path) -> None:
    scene = Scene(small(1, width=160, height=96))
    frames = [f for f, _ in scene.frames(12)]
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, 160, 96, 30.0, crf=18) as vw:
        for f in frames:
            vw.write(f)
    back = list(read_video(out))
    assert len(back) == 12
    assert all(b.shape == (96, 160, 3) and b.dtype == np.uint8 for b in back)
    assert min(_psnr(a, b) for a, b in zip(frames, back, strict=True)) > 28.0


def test_in_memory_round_trip_and_png(tmp_path: Path) -> None:
    frame, _ = Scene(small(2, width=96, height=64)).render()
    back = h264_roundtrip([frame, frame], crf=30)
    assert len(back) == 2
    assert back[0].shape == frame.shape
    assert not np.array_equal(back[0], frame)  # real compression artefacts
    write_png(tmp_path / "f.png", frame)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_odd_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "x.mp4", 161, 96, 30.0)
