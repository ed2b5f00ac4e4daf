"""YoloAdapter against a TorchScript module emitting the Ultralytics export format exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from its_camera_ai.inference.models import (
    ChecksumMismatchError,
    ModelLoadError,
    OutputFormatError,
    WeightsNotFoundError,
    YoloAdapter,
    nms,
)


class FixedYolo(torch.nn.Module):
    """Emits ``[B, 4+nc, N]`` predictions that do not depend on the image."""

    def __init__(self, preds: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("preds", preds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preds.unsqueeze(0).expand(x.shape[0], -1, -1).clone()


def column(
    cx: float, cy: float, w: float, h: float, cls: int, score: float, nc: int = 80
) -> list[float]:
    scores = [0.0] * nc
    scores[cls] = score
    return [cx, cy, w, h, *scores]


def script(tmp_path: Path, cols: list[list[float]], name: str = "yolo.torchscript") -> Path:
    preds = torch.tensor(cols, dtype=torch.float32).T.contiguous()
    path = tmp_path / name
    torch.jit.script(FixedYolo(preds)).save(str(path))
    return path


KNOWN = [
    column(320, 320, 100, 50, 2, 0.9),  # car
    column(322, 320, 100, 50, 2, 0.8),  # the same car again: NMS removes it
    column(320, 320, 100, 50, 7, 0.7),  # a truck on the same spot: another class, kept
    column(400, 400, 30, 30, 16, 0.95),  # a dog: not one of our classes
    column(500, 300, 20, 40, 0, 0.1),  # a person below the score threshold
    column(100, 200, 40, 40, 5, 0.6),  # a bus
]


def test_known_boxes_mapped_to_frame_and_classes(tmp_path: Path) -> None:
    path = script(tmp_path, KNOWN)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    adapter = YoloAdapter.load(path, sha256=digest)
    # 1280x720 -> 640x640: scale 0.5, padded 140 px top and bottom.
    frames = np.zeros((2, 720, 1280, 3), np.uint8)
    out = adapter.detect(frames)
    assert len(out) == 2
    d = out[0]
    assert d.classes.tolist() == [1, 2, 3]  # CAR, TRUCK, BUS (its.common.v1.ObjectClass)
    torch.testing.assert_close(d.scores, torch.tensor([0.9, 0.7, 0.6]))
    expected = torch.tensor(
        [[540.0, 310.0, 740.0, 410.0], [540.0, 310.0, 740.0, 410.0], [160.0, 80.0, 240.0, 160.0]]
    )
    torch.testing.assert_close(d.boxes, expected, atol=1e-3, rtol=0)
    # A lower threshold lets the person through.
    assert 6 in adapter.detect(frames[:1], score_threshold=0.05)[0].classes.tolist()


def test_custom_class_map(tmp_path: Path) -> None:
    cols = [column(50, 50, 20, 20, 1, 0.9, nc=2), column(150, 50, 20, 20, 0, 0.8, nc=2)]
    adapter = YoloAdapter(
        torch.jit.load(str(script(tmp_path, cols))),
        input_size=(320, 320),
        num_classes=2,
        class_map={0: 5, 1: 4},  # a user model with classes (bicycle, motorcycle)
    )
    d = adapter.detect(np.zeros((320, 320, 3), np.uint8))[0]
    assert d.classes.tolist() == [4, 5]


def test_wrong_output_shape_fails_at_load(tmp_path: Path) -> None:
    cols = [c[:-1] for c in KNOWN]  # 4 + 79 rows: not the declared 80 classes
    with pytest.raises(OutputFormatError, match=r"\[1, 84, N\]"):
        YoloAdapter.load(script(tmp_path, cols))

    class TwoD(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    with pytest.raises(OutputFormatError):
        YoloAdapter(torch.jit.script(TwoD()))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        YoloAdapter.load(tmp_path / "missing.torchscript")
    path = script(tmp_path, KNOWN)
    with pytest.raises(ChecksumMismatchError):
        YoloAdapter.load(path, sha256="0" * 64)
    junk = tmp_path / "junk.torchscript"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        YoloAdapter.load(junk)
    with pytest.raises(ModelLoadError, match="class_map"):
        YoloAdapter.load(path, class_map={99: 1})
    with pytest.raises(ModelLoadError, match=r"class_map maps to \[9\], not our class ids"):
        YoloAdapter.load(path, class_map={2: 9})


def test_nms() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
