"""Convert an ONNX detector (a YOLOX or Ultralytics export) into a shipped model: a TorchScript
file the service loads without ONNX, its ``AdapterManifest`` and its licence beside it.

    .venv/bin/python scripts/convert_onnx_detector.py \\
        --onnx ../shared/assets/models/yolox_nano.onnx --licence-file \\
        ../shared/assets/models/yolox_nano.LICENSE --name yolox-nano-coco --output yolox \\
        --strides 8 16 32 --channels bgr --scale 255 --size 416 416 \\
        --source "Megvii-BaseDetection/YOLOX (Apache-2.0), ONNX export ..."

The graph is rebuilt in torch (``its_camera_ai.inference.models`` loads ONNX that way),
checked against the ONNX file itself with onnxruntime where it is installed, traced for a
dynamic batch and checked again (batches of 1 and 3 against the eager module), then written
with its sha256. Needs the ``onnx`` package (the ``onnx`` extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from its_camera_ai.inference.models import (
    AdapterInput,
    AdapterManifest,
    YoloAdapter,
    load_onnx,
    sha256_file,
    write_manifest,
)

_MODELS = Path(__file__).resolve().parents[1] / "src/its_camera_ai/inference/models"
# COCO's 80 classes (the order every COCO export uses): the ones we count.
COCO_CLASS_MAP = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 7: "truck"}
# COCO's detectors name one vehicle differently from one anchor point to the next (a car a
# truck, a motorcycle a bicycle): those classes suppress each other in NMS.
COCO_NMS_GROUPS = (("car", "truck", "bus"), ("motorcycle", "bicycle"))
_TOLERANCE = 1e-3


def _onnxruntime_difference(onnx_path: Path, module: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest difference to onnxruntime on ``x`` (batch 1), NaN where it is not installed."""
    try:
        import onnxruntime  # type: ignore[import-untyped]  # noqa: PLC0415 - optional check
    except ImportError:
        return float("nan")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    reference = session.run(None, {name: x.numpy()})[0]
    with torch.inference_mode():
        ours = module(x).numpy()
    return float(np.abs(reference - ours).max())


def convert(args: argparse.Namespace) -> AdapterManifest:
    module = load_onnx(args.onnx)
    width, height = args.size
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, 3, height, width, generator=generator) * args.scale
    difference = _onnxruntime_difference(args.onnx, module, sample[:1])
    if difference > _TOLERANCE:
        raise SystemExit(f"torch differs from onnxruntime by {difference:.2e} (> {_TOLERANCE})")
    with torch.inference_mode():
        traced = torch.jit.trace(module, sample[:2], check_trace=False)  # type: ignore[no-untyped-call]
        for batch in (sample[:1], sample):
            gap = float((traced(batch) - module(batch)).abs().max())
            if gap > _TOLERANCE:
                raise SystemExit(f"the traced module differs by {gap:.2e} at batch {len(batch)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    weights = args.output_dir / f"{args.name}.pt"
    torch.jit.save(traced, str(weights))
    licence = args.output_dir / f"{args.name}.LICENSE"
    shutil.copyfile(args.licence_file, licence)
    manifest = AdapterManifest(
        name=args.name,
        version=args.version,
        weights=weights.name,
        weights_format="torchscript",
        sha256=sha256_file(weights),
        size_bytes=weights.stat().st_size,
        output=args.output,
        strides=tuple(args.strides),
        input=AdapterInput(
            width=width,
            height=height,
            channels=args.channels,
            scale=args.scale,
            letterbox_pad=114 / 255,
        ),
        num_classes=args.num_classes,
        class_map=COCO_CLASS_MAP,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        nms_groups=COCO_NMS_GROUPS,
        source=f"{args.source} (converted from {args.onnx.name}, sha256"
        f" {sha256_file(args.onnx)}; torch vs onnxruntime max difference {difference:.1e})",
        licence=f"{args.licence} ({licence.name})",
    )
    manifest_path = args.output_dir / f"{args.name}.json"
    write_manifest(manifest_path, manifest)
    YoloAdapter.from_manifest(manifest_path)  # loads and checks as the service will
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--licence-file", type=Path, required=True)
    parser.add_argument("--licence", default="Apache-2.0")
    parser.add_argument("--source", required=True, help="where the model comes from")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="1")
    parser.add_argument("--output", choices=("yolox", "ultralytics"), required=True)
    parser.add_argument("--strides", type=int, nargs="*", default=[])
    parser.add_argument("--channels", choices=("rgb", "bgr"), required=True)
    parser.add_argument("--scale", type=float, choices=(1.0, 255.0), required=True)
    parser.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), required=True)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--iou-threshold", type=float, default=0.45)
    parser.add_argument("--output-dir", type=Path, default=_MODELS)
    args = parser.parse_args(argv)
    for path in (args.onnx, args.licence_file):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    manifest = convert(args)
    print(f"wrote {args.output_dir / manifest.weights} (sha256 {manifest.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
