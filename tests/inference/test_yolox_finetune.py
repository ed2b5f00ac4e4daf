"""Fine-tuning YOLOX on simulator data: the loss rewards what it should, the script runs a
few steps end to end (resuming from its checkpoint) and ships a model the service loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from its_camera_ai.inference.models import load_model
from its_camera_ai.inference.training import (
    SIM_TO_COCO,
    FinetuneConfig,
    anchor_points,
    finetune_yolox,
    load_trainset,
    render_missing,
    yolox_loss,
)
from tests.conftest import ROOT, script_main

SIZE = (416, 416)
STRIDES = (8, 16, 32)
INIT = ROOT / "src/its_camera_ai/inference/models/yolox-nano-coco.pt"


def _output_for(boxes: np.ndarray[Any, Any], *, right: bool) -> torch.Tensor:
    """A network output [1, A, 85] whose every point predicts the box of the object whose
    centre is nearest (``right``) or a fixed wrong one, with undecided scores (0.5)."""
    cells, stride = anchor_points(SIZE, STRIDES)
    centres = (cells + 0.5) * stride[:, None]
    mids = torch.from_numpy((boxes[:, :2] + boxes[:, 2:]) / 2)
    nearest = torch.cdist(centres, mids).argmin(1)
    target = torch.from_numpy(boxes)[nearest] if right else torch.tensor([[0.0, 0.0, 30, 30]])
    out = torch.full((1, len(cells), 85), 0.5)
    out[0, :, :2] = (target[:, :2] + target[:, 2:]) / 2 / stride[:, None] - cells
    out[0, :, 2:4] = torch.log((target[:, 2:] - target[:, :2]) / stride[:, None])
    return out


def _point_at(x: float, y: float, level_stride: int) -> int:
    cells, stride = anchor_points(SIZE, STRIDES)
    centres = (cells + 0.5) * stride[:, None]
    d = (centres - torch.tensor([x, y])).norm(dim=1) + 1e9 * (stride != level_stride)
    return int(d.argmin())


def test_the_loss_fits_boxes_and_pushes_scores_the_right_way() -> None:
    boxes = np.array([[100, 100, 180, 160], [250, 200, 300, 330]], np.float32)
    classes = np.array([0, 5])  # a car and a person
    cells, stride = anchor_points(SIZE, STRIDES)

    def loss(out: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return yolox_loss(out, [boxes], [classes], [np.zeros(2, bool)], SIZE, cells, stride)

    assert loss(_output_for(boxes, right=True))[1]["box"] < 0.05
    assert loss(_output_for(boxes, right=False))[1]["box"] > 0.5
    out = _output_for(boxes, right=True).requires_grad_(True)
    loss(out)[0].backward()  # type: ignore[no-untyped-call]
    assert out.grad is not None
    grad = out.grad[0]
    # Gradient descent raises objectness at the points SimOTA gave an object (inside its
    # box) and lowers it everywhere else; at the car's points it raises the car class (COCO
    # "car") and lowers the person class, at the person's the other way round.
    centres = (cells + 0.5) * stride[:, None]
    raised = (grad[:, 4] < 0).nonzero().squeeze(1)
    assert 2 <= len(raised) <= 20
    inside = [
        int(((c >= torch.from_numpy(b[:2])) & (c <= torch.from_numpy(b[2:]))).all().item())
        for c in centres[raised]
        for b in boxes
    ]
    assert sum(inside) == len(raised)
    car_coco, person_coco = SIM_TO_COCO[0], SIM_TO_COCO[5]
    for point in raised.tolist():
        is_car = bool((centres[point, 0] < 200).item())
        own, other = (car_coco, person_coco) if is_car else (person_coco, car_coco)
        assert float(grad[point, 5 + own]) < 0 < float(grad[point, 5 + other])
    assert float(grad[_point_at(400, 20, 8), 4]) > 0


def test_difficult_objects_are_neither_positive_nor_negative() -> None:
    boxes = np.array([[100, 100, 180, 160]], np.float32)
    cells, stride = anchor_points(SIZE, STRIDES)
    out = _output_for(boxes, right=True).requires_grad_(True)
    loss, parts = yolox_loss(out, [boxes], [np.array([0])], [np.ones(1, bool)], SIZE, cells, stride)
    assert (parts["box"], parts["cls"]) == (0.0, 0.0)
    loss.backward()  # type: ignore[no-untyped-call]
    assert out.grad is not None
    # Its points are not pushed either way; a point far from it is pushed down.
    assert float(out.grad[0, _point_at(140, 130, 8), 4]) == 0.0
    assert float(out.grad[0, _point_at(400, 20, 8), 4]) > 0


def _moved_by_depth(before: Path, after: Path, bounds: tuple[int, ...]) -> list[float]:
    """Mean absolute weight change of the convolutions (graph order) cut at ``bounds``."""
    old, new = (dict(torch.jit.load(str(p)).named_parameters()) for p in (before, after))
    convs = sorted(
        {name.rsplit(".", 1)[0] for name in old},
        key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")],
    )
    depth = {conv: sum(i >= b for b in bounds) for i, conv in enumerate(convs)}
    moved: list[list[float]] = [[] for _ in range(len(bounds) + 1)]
    for name, weight in old.items():
        change = (new[name] - weight).abs().mean().item()
        moved[depth[name.rsplit(".", 1)[0]]].append(change)
    return [float(np.mean(m)) for m in moved]


def test_finetune_smoke_resumes_and_ships_a_loadable_model(tmp_path: Path) -> None:
    data, out, checkpoint = tmp_path / "data", tmp_path / "model", tmp_path / "ck.pt"
    args = [
        "--data", str(data), "--seeds", "0-1", "--frames-per-seed", "2", "--batch-size", "2",
        "--workers", "1", "--out", str(out), "--checkpoint", str(checkpoint),
        "--checkpoint-every", "1", "--freeze", "20", "--slow", "40", "--slow-lr-scale", "0.1",
        "--version", "smoke", "--input-size", "640x384", "--crop-size", "416x288",
    ]  # fmt: skip
    main = script_main("finetune_yolox")
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "3"]) == 0  # cut after 2 steps, continued to 3
    manifest = json.loads((out / "yolox-nano-its.json").read_text())
    assert manifest["training"]["steps"] == 3
    assert manifest["training"]["resumed_at_step"] == 2
    assert manifest["training"]["frozen_convolutions"] == 20
    assert (manifest["training"]["slow"], manifest["training"]["slow_lr_scale"]) == (40, 0.1)
    frozen, slowed, rest = _moved_by_depth(INIT, out / "yolox-nano-its.pt", (20, 40))
    assert frozen == 0.0
    # Adam moves every weight by about the rate at each step: the slowed ones by a tenth.
    assert 0.0 < slowed < 0.3 * rest
    # Trained on crops of frames letterboxed to 640x384; the model runs at 640x384.
    assert manifest["training"]["crop_size"] == [416, 288]
    assert (manifest["input"]["width"], manifest["input"]["height"]) == (640, 384)
    assert (
        manifest["class_map"]
        == json.loads(
            (ROOT / "src/its_camera_ai/inference/models/yolox-nano-coco.json").read_text()
        )["class_map"]
    )
    assert manifest["training_history"] == []  # COCO's weights were not a fine-tune
    model = load_model(out / "yolox-nano-its.json")  # sha256 checked
    assert len(model.detect([np.zeros((360, 640, 3), np.uint8)])) == 1

    # Going on from that fine-tune keeps its record, so the file holds the whole chain.
    again = tmp_path / "again"
    assert main([
        *args, "--out", str(again), "--checkpoint", str(tmp_path / "again.pt"),  # the last wins
        "--init", str(out / "yolox-nano-its.json"), "--steps", "1", "--version", "again",
    ]) == 0  # fmt: skip
    chained = json.loads((again / "yolox-nano-its.json").read_text())
    assert chained["training"]["init"].startswith("yolox-nano-its smoke ")
    assert chained["training_history"] == [manifest["training"]]
    assert (
        "fine-tuned from yolox-nano-its smoke (fine-tuned from yolox-nano-coco "
        in chained["source"]
    )


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--input-size", "640", "expected WxH"),
        ("--crop-size", "400x288", "multiples of 32"),
    ],
)
def test_a_bad_size_is_refused_naming_its_flag(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script_main("finetune_yolox")(["--data", "unused", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: '{value}': " in err
    assert says in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--close-share", "1.5", "--close-zoom", "1.5", "3"], "--close-share 1.5: a share from 0"),
        (["--close-share", "0.2"], "--close-share 0.2: --close-zoom LOW HIGH is needed"),
        (["--close-zoom", "3", "1.5"], "--close-zoom 3 1.5: LOW HIGH with 0 < LOW <= HIGH"),
        (["--zoom", "0", "1.3"], "--zoom 0 1.3: LOW HIGH with 0 < LOW <= HIGH"),
        (["--slow-lr-scale", "0"], "--slow-lr-scale 0.0: a factor above 0, at most 1"),
    ],
)
def test_a_bad_zoom_close_share_or_rate_is_refused_naming_its_flag(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script_main("finetune_yolox")(["--data", "unused", *args])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


@torch.no_grad()
def _drift(model: torch.nn.Module, start: torch.nn.Module) -> float:
    return sum(
        float(((p - p0) ** 2).sum())
        for p, p0 in zip(model.parameters(), start.parameters(), strict=True)
    )


@pytest.fixture(scope="module")
def free_run(tmp_path_factory: pytest.TempPathFactory) -> FinetuneConfig:
    """A short, fast-moving run on one rendered scene, nothing holding it back."""
    data = tmp_path_factory.mktemp("data")
    render_missing(data, [0], frames_per_seed=2, interval_s=1.5, workers=1, log=lambda _: None)
    return FinetuneConfig(
        data=str(data), init=str(INIT), steps=4, batch_size=2, lr=1e-2, warmup_steps=0,
        ema_decay=0.0, threads=1,
    )  # fmt: skip


def test_the_anchor_weight_holds_the_network_near_its_pretrained_weights(
    free_run: FinetuneConfig,
) -> None:
    start = torch.jit.load(str(INIT))  # type: ignore[no-untyped-call]
    drifts = {}
    for weight in (0.0, 100.0):
        model, _ = finetune_yolox(replace(free_run, anchor_weight=weight), log=lambda _: None)
        drifts[weight] = _drift(model, start)
    # Adam's first step moves every weight by ~lr whatever pulls it; the anchor then pulls
    # them back where the free run keeps going.
    assert drifts[100.0] < 0.5 * drifts[0.0], drifts


@torch.no_grad()
def _class_shift(model: torch.nn.Module, start: torch.nn.Module, frames: torch.Tensor) -> float:
    """How far the class outputs moved from the start's where the start sees an object."""
    before, after = start(frames), model(frames)
    weight = before[..., 4:5]
    return float(((after[..., 5:] - before[..., 5:]).abs() * weight).sum() / weight.sum())


def test_the_distil_weight_holds_the_class_outputs_near_the_teachers(
    free_run: FinetuneConfig,
) -> None:
    start = torch.jit.load(str(INIT)).eval()  # type: ignore[no-untyped-call]
    images = load_trainset(Path(free_run.data), free_run.input_size, None).images
    frames = images[:2].permute(0, 3, 1, 2)[:, [2, 1, 0]].float()  # network input: BGR, 0-255
    shifts, distilled = {}, {}
    # A slower run than the anchor's: at its rate the class outputs swing either way.
    slower = replace(free_run, lr=1e-3, steps=10)
    for weight in (0.0, 10.0):
        model, stats = finetune_yolox(replace(slower, distil_weight=weight), log=lambda _: None)
        shifts[weight] = _class_shift(model, start, frames)
        distilled[weight] = "distil" in stats["final_losses"]
    assert distilled == {0.0: False, 10.0: True}  # no teacher runs when it is off
    assert shifts[10.0] < 0.7 * shifts[0.0], shifts
