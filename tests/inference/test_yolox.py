"""YOLOX exports through ``YoloAdapter``, ONNX graphs rebuilt in torch, and the shipped
YOLOX-nano (COCO) model with its manifest."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import av
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.progress import Progress

from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference import configured_model, feed_score_threshold
from its_camera_ai.inference.models import (
    SHIPPED_MODELS,
    ChecksumMismatchError,
    Detections,
    ManifestError,
    ModelLoadError,
    OutputFormatError,
    YoloAdapter,
    load_model,
    load_onnx,
    set_memory_format,
)
from its_camera_ai.inference.training import box_iou
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ONNX = REPO.parent / "shared/assets/models/yolox_nano.onnx"
INTEL_CLIP = REPO / "tests/data/real_clips/intel-car-detection.mp4"
CAR, TRUCK, BUS = 1, 2, 3


class FixedYolox(torch.nn.Module):
    """Emits the same ``[B, N, 5+nc]`` raw YOLOX output for every image."""

    def __init__(self, raw: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("raw", raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw.unsqueeze(0).expand(x.shape[0], -1, -1).clone()


def _raw(points: int, entries: dict[int, tuple[float, float, float, float, float, int, float]]):
    """Raw YOLOX rows: at each anchor index (x offset, y offset, log w, log h, objectness,
    class, class score); everywhere else nothing."""
    raw = torch.zeros(points, 85)
    for index, (dx, dy, log_w, log_h, objectness, cls, score) in entries.items():
        raw[index, :5] = torch.tensor([dx, dy, log_w, log_h, objectness])
        raw[index, 5 + cls] = score
    return raw


def test_yolox_rows_decode_to_boxes_in_frame_pixels() -> None:
    # A 64x64 input: levels of 8x8 (stride 8), 4x4 (16) and 2x2 (32) anchor points.
    level_16 = 64 + 2 * 4 + 1  # stride 16, cell x=1, y=2
    level_32 = 64 + 16 + 3  # stride 32, cell x=1, y=1
    raw = _raw(84, {
        level_16: (0.5, 0.5, math.log(2), math.log(1), 0.9, 2, 0.8),  # a car
        level_32: (0.0, 0.0, 0.0, 0.0, 0.9, 16, 0.9),  # a dog: not ours
        3: (0.0, 0.0, 0.0, 0.0, 0.5, 0, 0.2),  # a person below the threshold
    })  # fmt: skip
    model = YoloAdapter(
        FixedYolox(raw), input_size=(64, 64), output="yolox", strides=(8, 16, 32),
        channels="bgr", pixel_scale=255.0, score_threshold=0.3,
    )  # fmt: skip
    (found,) = model.detect(np.zeros((64, 64, 3), np.uint8))
    assert found.classes.tolist() == [CAR]
    assert found.scores.tolist() == pytest.approx([0.72])
    # Centre ((1 + 0.5) * 16, (2 + 0.5) * 16), 32 x 16 pixels.
    assert found.boxes.tolist() == [pytest.approx([8.0, 32.0, 40.0, 48.0])]
    # A frame twice the size maps back to its own pixels.
    (bigger,) = model.detect(np.zeros((128, 128, 3), np.uint8))
    assert bigger.boxes.tolist() == [pytest.approx([16.0, 64.0, 80.0, 96.0])]


def test_classes_of_one_nms_group_suppress_each_other_and_others_do_not() -> None:
    # One box (centre (24, 40), 32 x 16) predicted from five anchor points of the stride-16
    # level under five classes: a car that other points call a truck and a bus, and a
    # person riding a motorcycle.
    def row(x: int, y: int, cls: int, score: float) -> tuple[int, tuple[float, ...]]:
        index = 64 + 4 * y + x  # after the 8x8 stride-8 level
        return index, (1.5 - x, 2.5 - y, math.log(2), math.log(1), 0.9, cls, score)

    raw = _raw(84, dict([
        row(1, 2, 2, 0.8), row(2, 2, 7, 0.7), row(3, 2, 5, 0.6),  # car, truck, bus
        row(1, 1, 3, 0.8), row(2, 1, 0, 0.7),  # motorcycle, person
    ]))  # fmt: skip
    motorcycle, bicycle, person = 4, 5, 6

    def classes(nms_groups: tuple[tuple[int, ...], ...] = ()) -> list[int]:
        model = YoloAdapter(
            FixedYolox(raw), input_size=(64, 64), output="yolox", strides=(8, 16, 32),
            score_threshold=0.3, nms_groups=nms_groups,
        )  # fmt: skip
        (found,) = model.detect(np.zeros((64, 64, 3), np.uint8))
        assert {tuple(box) for box in found.boxes.tolist()} == {(8.0, 32.0, 40.0, 48.0)}
        return sorted(found.classes.tolist())

    assert classes() == [CAR, TRUCK, BUS, motorcycle, person]  # class by class
    grouped = classes(((CAR, TRUCK, BUS), (motorcycle, bicycle)))
    assert grouped == [CAR, motorcycle, person]  # one vehicle; the rider stays


def test_the_declared_preprocessing_is_applied() -> None:
    model = YoloAdapter(
        FixedYolox(_raw(84, {})), input_size=(64, 64), output="yolox", strides=(8, 16, 32),
        channels="bgr", pixel_scale=255.0,
    )  # fmt: skip
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    assert model.normalise(rgb)[0, :, 0, 0].tolist() == pytest.approx([153.0, 102.0, 51.0])


def test_a_model_not_emitting_its_declared_format_fails_at_load() -> None:
    with pytest.raises(OutputFormatError, match=r"YOLOX format .*\[1, 84, 85\]"):
        YoloAdapter(FixedYolox(_raw(80, {})), input_size=(64, 64), output="yolox",
                    strides=(8, 16, 32))  # fmt: skip
    with pytest.raises(ModelLoadError, match="strides"):
        YoloAdapter(FixedYolox(_raw(84, {})), input_size=(64, 64), output="yolox")


# -- ONNX graphs through torch -------------------------------------------------------------


def _const(name: str, values: list[int] | list[float], dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


# fmt: off
def _focus_graph(path: Path, extra: onnx.NodeProto | None = None) -> Path:
    """A small detector-shaped graph with a batch-of-one export's reshape: focus slices,
    conv + SiLU, pooling, nearest upsampling, concat, reshape to [1, C, -1], transpose."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 12, 3, 3)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Slice", ["images", "s0", "e", "a2", "st"], ["even_rows"]),
        helper.make_node("Slice", ["images", "s1", "e", "a2", "st"], ["odd_rows"]),
        helper.make_node("Slice", ["even_rows", "s0", "e", "a3", "st"], ["p0"]),
        helper.make_node("Slice", ["odd_rows", "s0", "e", "a3", "st"], ["p1"]),
        helper.make_node("Slice", ["even_rows", "s1", "e", "a3", "st"], ["p2"]),
        helper.make_node("Slice", ["odd_rows", "s1", "e", "a3", "st"], ["p3"]),
        helper.make_node("Concat", ["p0", "p1", "p2", "p3"], ["focus"], axis=1),
        helper.make_node("Conv", ["focus", "w", "b"], ["conv"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Sigmoid", ["conv"], ["gate"]),
        helper.make_node("Mul", ["conv", "gate"], ["silu"]),
        helper.make_node("MaxPool", ["silu"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["pooled", "roi", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Add", ["up", "silu"], ["sum"]),
        helper.make_node("Reshape", ["sum", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["output"], perm=[0, 2, 1]),
    ]
    if extra is not None:
        nodes.append(extra)
    graph = helper.make_graph(
        nodes, "focus",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 4])],
        [_const("s0", [0]), _const("s1", [1]), _const("e", [2**63 - 1]), _const("a2", [2]),
         _const("a3", [3]), _const("st", [2]), _const("shape", [1, 4, -1]),
         numpy_helper.from_array(weights, "w"), _const("b", [0.1, 0.2, 0.3, 0.4], np.float32),
         _const("roi", [], np.float32), _const("scales", [1.0, 1.0, 2.0, 2.0], np.float32)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7  # what this onnxruntime reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
# fmt: on


def test_an_onnx_graph_runs_in_torch_as_in_onnxruntime_for_any_batch(tmp_path: Path) -> None:
    path = _focus_graph(tmp_path / "focus.onnx")
    module = load_onnx(path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        batch = module(x)
        for i in range(3):
            reference = session.run(None, {"images": x[i : i + 1].numpy()})[0]
            np.testing.assert_allclose(batch[i : i + 1].numpy(), reference, rtol=1e-5, atol=1e-4)
    assert batch.shape == (3, 256, 4)


def test_onnx_files_the_loader_cannot_run_fail_at_load_naming_why(tmp_path: Path) -> None:
    gemm = helper.make_node("Gemm", ["output", "w"], ["extra"])
    with pytest.raises(ModelLoadError, match=r"operators \['Gemm'\] are not supported"):
        load_onnx(_focus_graph(tmp_path / "gemm.onnx", gemm))
    same_pads = helper.make_node("Conv", ["sum", "w", "b"], ["extra"], auto_pad="SAME_UPPER")
    with pytest.raises(ModelLoadError, match="auto_pad 'SAME_UPPER' is not supported"):
        load_onnx(_focus_graph(tmp_path / "same.onnx", same_pads))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(ModelLoadError, match="not a readable ONNX file"):
        load_onnx(garbage)


# -- the shipped YOLOX-nano ------------------------------------------------------------------


def _clip_frames(indices: set[int]) -> list[np.ndarray]:
    with av.open(str(INTEL_CLIP)) as container:
        return [
            f.to_ndarray(format="rgb24")
            for i, f in enumerate(container.decode(video=0))
            if i in indices
        ]


def test_the_shipped_yolox_finds_a_car_of_a_real_clip() -> None:
    model = load_model("yolox-nano-coco")
    assert (model.name, model.input_size) == ("yolox-nano-coco", (416, 416))
    assert model.version == "1+" + model.digest[:12]  # manifest version + weights digest
    assert set(model.class_ids) == {1, 2, 3, 4, 5, 6}
    # Car v3 of tests/data/real_clips (counts.json) driving up its lane, x ~310-460: seen
    # from straight above it is called a bus as often as a car (class by vote is the
    # tracker's job); it is found, where it is, in its frame's own pixels.
    found = model.detect(_clip_frames(set(range(218, 226))))
    for frame in found:
        vehicles = [
            box for box, cls in zip(frame.boxes.tolist(), frame.classes.tolist(), strict=True)
            if cls in (CAR, TRUCK, BUS)
        ]  # fmt: skip
        assert len(vehicles) == 1, frame
        x0, _, x1, y1 = vehicles[0]
        assert 290 < x0 < x1 < 480
        assert y1 <= 432


def test_the_fine_tuned_yolox_finds_what_the_coco_weights_miss_on_a_real_clip() -> None:
    tuned, coco = load_model("yolox-nano-its"), load_model("yolox-nano-coco")
    manifest = json.loads(SHIPPED_MODELS["yolox-nano-its"].read_text())
    # Trained from the COCO network, directly or by going on from earlier fine-tunes, whose
    # records it keeps: the oldest run started from COCO's weights.
    runs = [*manifest.get("training_history", []), manifest["training"]]
    assert runs[0]["init"].startswith("yolox-nano-coco ")
    assert all(run["init"].startswith("yolox-nano-its ") for run in runs[1:])
    assert "fine-tuned from yolox-nano-coco " in manifest["source"]
    assert manifest["training"]["steps"] > 0
    frames = _clip_frames(set(range(218, 226)))

    def vehicles(found: list[Detections]) -> list[list[list[float]]]:
        return [
            [box for box, cls in zip(f.boxes.tolist(), f.classes.tolist(), strict=True)
             if cls in (CAR, TRUCK, BUS)]
            for f in found
        ]  # fmt: skip

    tuned_boxes = vehicles(tuned.detect(frames))
    coco_boxes = vehicles(coco.detect(frames))
    # Car v3 in every frame, and the car entering at the bottom left that COCO's weights
    # do not see at all (the real-clip counts: docs/benchmarks.md).
    for boxes in tuned_boxes:
        assert any(290 < x0 < x1 < 480 for x0, _, x1, _ in boxes), boxes
        assert any(x1 < 260 and y1 > 400 for x0, _, x1, y1 in boxes), boxes
    assert not any(x1 < 260 for boxes in coco_boxes for _, _, x1, _ in boxes)


@pytest.mark.parametrize(
    ("backend", "precision"),
    [
        ("torch", "fp32"),
        pytest.param(
            "torch",
            "bf16",
            marks=pytest.mark.skipif(
                not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                reason="this CPU has no bf16 instructions",
            ),
        ),
        ("onnxruntime", "fp32"),
    ],
)
def test_the_fine_tuned_yolox_counts_a_real_clip_exactly(backend: str, precision: str) -> None:
    # The Intel clip (4 cars a line, 2 each way) through detection and the analytics engine,
    # as benchmarks/real_clip_counts.py runs it (from the frame pipeline's score). Without
    # the vehicle NMS group a car that some anchor points call a truck and others a bus was
    # counted twice on the other clip.
    # In bf16 (inference.precision) and on ONNX Runtime (inference.backend) the counts must
    # not change.
    bench = load_script("benchmarks/real_clip_counts.py")
    clips = json.loads(bench.COUNTS.read_text())["clips"]
    (clip,) = [c for c in clips if c["file"] == INTEL_CLIP.name]
    model = load_model("yolox-nano-its")
    with Progress(disable=True) as progress:
        results = bench.count_clip(
            clip,
            bench.clip_frames(INTEL_CLIP),
            model,
            precision,
            feed_score_threshold(InferenceSettings(), model),
            progress,
            backend,
        )
    assert {r.line: r.by_direction for r in results} == {
        line: {"LEFT_TO_RIGHT": (2, 2), "RIGHT_TO_LEFT": (2, 2)} for line in ("mid", "low")
    }


@pytest.mark.skipif(not SHIPPED_ONNX.is_file(), reason="the ONNX source is in ../shared/assets")
def test_the_shipped_weights_equal_their_onnx_source() -> None:
    shipped = load_model("yolox-nano-coco")
    assert isinstance(shipped, YoloAdapter)
    session = onnxruntime.InferenceSession(str(SHIPPED_ONNX), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(2)) * 255
    reference = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        ours = shipped.network(x).numpy()
    assert np.abs(ours - reference).max() < 1e-3


def test_the_adapter_runs_its_weights_channels_last_with_the_same_outputs() -> None:
    # oneDNN's convolutions are native on NHWC: NCHW weights cost a reorder per layer
    # (1.1-1.3x on CPU, docs/benchmarks.md). The layout must not change what it detects.
    model = load_model("yolox-nano-its")
    assert isinstance(model, YoloAdapter)
    weights = [p for p in model.module.parameters() if p.dim() == 4]
    assert weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    nchw = load_model("yolox-nano-its")
    assert isinstance(nchw, YoloAdapter)
    set_memory_format(nchw.module, torch.contiguous_format)
    x = torch.rand(2, 3, 288, 416, generator=torch.Generator().manual_seed(3)) * 255
    with torch.inference_mode():
        np.testing.assert_allclose(model.network(x), nchw.network(x), rtol=1e-4, atol=2e-3)


def _copy_shipped(tmp_path: Path) -> Path:
    manifest = SHIPPED_MODELS["yolox-nano-coco"]
    for suffix in (".json", ".pt"):
        shutil.copy(manifest.with_suffix(suffix), tmp_path)
    return tmp_path / manifest.name


def _edit(manifest: Path, **fields: object) -> Path:
    raw = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**raw, **fields}))
    return manifest


def test_a_tampered_or_misdeclared_model_fails_at_load(tmp_path: Path) -> None:
    manifest = _copy_shipped(tmp_path)
    weights = manifest.with_suffix(".pt")
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ChecksumMismatchError, match="modified or truncated"):
        load_model(manifest)
    weights.write_bytes(original)
    load_model(manifest)
    with pytest.raises(ManifestError, match="class_map"):
        load_model(_edit(manifest, class_map={"16": "dog"}))
    with pytest.raises(ManifestError, match="class_map: index 80"):
        load_model(_edit(manifest, class_map={"80": "car"}))
    with pytest.raises(OutputFormatError, match="YOLOX format"):
        load_model(_edit(manifest, class_map={"2": "car"}, strides=[8, 16]))
    with pytest.raises(ManifestError, match=r"nms_groups: \['lorry'\]"):
        load_model(_edit(manifest, class_map={"2": "car"}, nms_groups=[["car", "lorry"]]))
    with pytest.raises(ManifestError, match="nms_groups: a class may be in one group only"):
        load_model(_edit(manifest, nms_groups=[["car", "truck"], ["truck", "bus"]]))
    with pytest.raises(ManifestError, match="format 'something-else'"):
        load_model(_edit(manifest, format="something-else"))


def test_the_service_runs_a_shipped_model_chosen_by_name() -> None:
    chosen = configured_model(InferenceSettings(model="yolox-nano-coco"))
    assert chosen.name == "yolox-nano-coco"
    assert configured_model(InferenceSettings()).name == "yolox-nano-its"
    with pytest.raises(ValueError, match="model"):
        InferenceSettings(model="yolov99")  # type: ignore[arg-type]


def test_the_network_runs_at_the_configured_input_and_finds_the_same_car() -> None:
    """``inference.input_size``: the same weights at a larger input find car v3 where the
    manifest's input finds it, in the frame's own pixels; a size the network cannot take
    is refused at start-up, naming the setting."""
    declared = load_model("yolox-nano-its")
    larger = configured_model(InferenceSettings(input_size=(640, 384)))
    assert larger.input_size == (640, 384) != declared.input_size
    assert (larger.name, larger.digest) == (declared.name, declared.digest)
    frames = _clip_frames(set(range(218, 226)))
    for at_declared, at_larger in zip(declared.detect(frames), larger.detect(frames), strict=True):
        iou = box_iou(at_declared.boxes.numpy(), at_larger.boxes.numpy())
        car_v3 = [
            i for i, (x0, _, x1, _) in enumerate(at_declared.boxes.tolist()) if 290 < x0 < x1 < 480
        ]
        assert car_v3
        assert all(iou[i].max() > 0.7 for i in car_v3), iou
    # The simulator-trained network is fully convolutional too.
    its = load_model("its-detector-v1", input_size=(512, 320))
    assert its.input_size == (512, 320)
    assert len(its.detect(frames[:1])) == 1
    with pytest.raises(ModelLoadError, match=r"input_size \[400, 288\]"):
        load_model("yolox-nano-its", input_size=(400, 288))
    with pytest.raises(ValueError, match="input_size"):
        InferenceSettings(input_size=(416, 300))
    with pytest.raises(ValueError, match="yolo_input_size"):
        InferenceSettings(input_size=(416, 288), yolo_model=Path("model.torchscript"))
