"""CI training smoke: the training script runs a few steps end to end and ships loadable
weights with a manifest (accuracy is the gate test's business)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from its_camera_ai.inference.models import load_detector
from its_camera_ai.inference.training import (
    augment,
    build_targets,
    class_weights,
    focal_loss,
    jitter_colour,
    load_trainset,
)
from its_camera_ai.sim import load_shard, write_dataset
from tests.conftest import script_main


def test_training_smoke(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "model"
    rc = script_main("train_detector")(
        [
            "--data", str(data), "--seeds", "0-1", "--frames-per-seed", "2",
            "--max-steps", "3", "--batch-size", "2", "--out", str(out), "--version", "smoke",
            "--workers", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "its-detector-v1.json").read_text())
    assert manifest["training"]["steps"] == 3
    assert manifest["training"]["seeds"] == "0-1"
    det = load_detector(out / "its-detector-v1.json")
    assert len(det.detect(np.zeros((1, 384, 640, 3), np.uint8))) == 1


def test_targets_match_boxes(tmp_path: Path) -> None:
    """Targets decode back to the boxes they were built from, and augmentation moves boxes
    with the pixels (a flipped frame flips its boxes)."""
    write_dataset(tmp_path, [3], 2, compress=False)
    ds = load_trainset(tmp_path, (480, 288))
    heat, ignore, box, weight = build_targets(
        ds.boxes[:1], ds.classes[:1], ds.difficult[:1], (480, 288), 6
    )
    peaks = heat.eq(1.0)
    assert int(peaks.sum()) > 0
    # Every regression cell carries one of the image's (kept) boxes.
    cells = box.permute(0, 2, 3, 1)[weight[:, 0] > 0]
    known = torch.from_numpy(ds.boxes[0])
    known = torch.stack(
        (
            known[:, 0].clamp(0, 480),
            known[:, 1].clamp(0, 288),
            known[:, 2].clamp(0, 480),
            known[:, 3].clamp(0, 288),
        ),
        dim=1,
    )
    d = (cells[:, None, :] - known[None, :, :]).abs().max(dim=2).values.min(dim=1).values
    assert float(d.max()) < 1e-3
    assert float(ignore.min()) >= 0.0
    # A perfect heatmap has a lower loss than a blank one.
    good = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    assert focal_loss(good, heat, ignore) < focal_loss(torch.full_like(heat, -4.6), heat, ignore)
    gen = torch.Generator().manual_seed(0)
    x, boxes = augment(ds.images[:2], ds.boxes[:2], gen, scale=(1.0, 1.0), colour=0.0)
    assert x.shape == (2, 3, 288, 480)
    for b_in, b_out in zip(ds.boxes[:2], boxes, strict=True):
        w_in, w_out = b_in[:, 2] - b_in[:, 0], b_out[:, 2] - b_out[:, 0]
        np.testing.assert_allclose(w_in, w_out, atol=1e-3)


def test_augmented_crops_carry_their_boxes() -> None:
    """Zoomed, flipped crops smaller than the frame: each box lands where its pixels went."""
    frames = torch.zeros(6, 384, 640, 3, dtype=torch.uint8)
    frames[:, 170:214, 290:350] = 255  # one white object on black, near the centre
    box = np.array([[290.0, 170.0, 350.0, 214.0]], np.float32)
    gen = torch.Generator().manual_seed(3)
    x, boxes = augment(frames, [box] * 6, gen, scale=(0.8, 1.25), colour=0.0, out_size=(480, 288))
    assert x.shape == (6, 3, 288, 480)
    for image, moved in zip(x, boxes, strict=True):
        ys, xs = torch.nonzero(image.mean(0) > 0.75, as_tuple=True)
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(seen, moved[0], atol=1.5)


def test_a_share_of_crops_zooms_close_and_none_changes_nothing() -> None:
    """``close_share`` of the crops take the close zoom (their object as large as it is
    there, where its pixels went); share 0 draws exactly what the plain zoom draws."""
    frames = torch.zeros(64, 384, 640, 3, dtype=torch.uint8)
    frames[:, 72:312, 80:560] = 255  # 480 x 240 px, in the centre
    box = np.array([[80.0, 72.0, 560.0, 312.0]], np.float32)

    def crops(**close: Any) -> tuple[torch.Tensor, list[NDArray[np.float32]]]:
        gen = torch.Generator().manual_seed(7)
        return augment(
            frames, [box] * 64, gen, scale=(0.8, 0.9), colour=0.0, out_size=(416, 288), **close
        )

    x, boxes = crops(close_scale=(2.5, 3.0), close_share=0.25)
    widths = np.array([float(b[0, 2] - b[0, 0]) for b in boxes])
    close = widths >= 2.5 * 480 - 1e-3
    assert np.all(close | (widths <= 0.9 * 480 + 1e-3))
    assert 6 <= close.sum() <= 26  # a quarter of 64, give or take the draw
    checked = 0
    for image, moved, is_close in zip(x, boxes, close, strict=True):
        if not is_close:
            continue
        visible = moved[0].copy()
        visible[[0, 2]] = visible[[0, 2]].clip(0, 416)
        visible[[1, 3]] = visible[[1, 3]].clip(0, 288)
        if min(visible[2] - visible[0], visible[3] - visible[1]) < 2:
            continue  # the crop missed the object
        ys, xs = torch.nonzero(image.mean(0) > 0.75, as_tuple=True)
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(seen, visible, atol=1.5)
        checked += 1
    assert checked >= 8
    plain, plain_boxes = crops()
    unused, unused_boxes = crops(close_scale=(2.5, 3.0), close_share=0.0)
    assert torch.equal(plain, unused)
    for a, b in zip(plain_boxes, unused_boxes, strict=True):
        np.testing.assert_array_equal(a, b)


def test_colour_jitter_is_the_three_steps_in_order() -> None:
    """The fused colour jitter equals saturation, contrast, then brightness applied in turn."""
    gen = torch.Generator().manual_seed(5)
    pixels = torch.rand(4, 3, 24, 32, generator=gen)
    sat, contrast, bright = (0.7 + 0.6 * torch.rand(4, 1, 1, 1, generator=gen) for _ in "abc")
    grey = pixels.mean(dim=1, keepdim=True)
    expected = grey + (pixels - grey) * sat
    mean = expected.mean(dim=(1, 2, 3), keepdim=True)
    expected = (((expected - mean) * contrast + mean) * bright).clamp(0.0, 1.0)
    offset = 0.45
    fused = jitter_colour(pixels - offset, offset, sat, contrast, bright)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)


def test_frames_of_the_input_size_load_unchanged(tmp_path: Path) -> None:
    """At the simulator's native size letterboxing is the identity: the loaded frames and
    boxes are the shard's own (the fast path skips the float round trip)."""
    write_dataset(tmp_path, [7], 2, compress=False)
    shard = load_shard(tmp_path / "seed_000007.npz")
    _, h, w, _ = shard.images.shape
    ds = load_trainset(tmp_path, (w, h))
    assert torch.equal(ds.images, torch.from_numpy(shard.images))
    for i in range(len(shard)):
        np.testing.assert_array_equal(ds.boxes[i], shard.labels(i)[0])


def test_class_weights_lift_rare_classes_and_keep_the_mean() -> None:
    """(count)^-power per class, difficult objects not counted, mean weight per object 1."""
    classes = [np.array([0] * 8 + [1] * 2 + [2] * 2), np.array([0] * 8)]
    difficult = [np.array([False] * 10 + [True] * 2), np.zeros(8, bool)]
    w = class_weights(classes, difficult, 3, 0.5)
    counts = np.array([16, 2, 0])
    assert float(w[1] / w[0]) == pytest.approx(np.sqrt(16 / 2))
    assert float((w[:2].numpy() * counts[:2]).sum() / counts.sum()) == pytest.approx(1.0)
    flat = class_weights(classes, difficult, 3, 0.0)
    torch.testing.assert_close(flat[:2], torch.ones(2))
