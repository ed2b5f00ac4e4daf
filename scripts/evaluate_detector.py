"""Evaluate a detector on held-out simulator scenes: mAP@0.5 and mAP@0.5:0.95, overall and
per condition (day, dusk, night, rain, fog, glare, heavy occlusion, small objects).

    python scripts/evaluate_detector.py                      # the default model
    python scripts/evaluate_detector.py --write-manifest     # record the figures in its manifest
    python scripts/evaluate_detector.py --manifest its-detector-v1   # a shipped model by name
    python scripts/evaluate_detector.py --checkpoint var/det/ckpt.pt   # a training checkpoint
    python scripts/evaluate_detector.py --precision bf16     # as inference.precision bf16 runs
    python scripts/evaluate_detector.py --input-size 640x384 # as inference.input_size runs
    python scripts/evaluate_detector.py --manifest path/to/yolox-nano-its.json   # any model

The held-out set (seeds 100000-100119, 5 frames each, 600 frames) is rendered into ``--data``
if missing. Training uses seeds below 100000 only, so these are unseen scenes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference.models import (
    SHIPPED_MODELS,
    CenterNet,
    EngineSpec,
    NetConfig,
    YoloAdapter,
    build_engine,
    load_model,
    read_adapter_manifest,
    read_manifest,
    save_detector,
    write_manifest,
)
from its_camera_ai.inference.training import (
    CI_SEEDS,
    GATE_CONDITION_MAP50,
    GATE_OVERALL_MAP50,
    Sample,
    TrainConfig,
    evaluate_detector,
    format_table,
    shard_files,
    size_argument,
)
from its_camera_ai.sim import (
    DATASET_VERSION,
    TAGS,
    load_shard,
    parse_seeds,
    shard_is_current,
    write_dataset,
)


def samples(paths: list[Path]) -> Iterator[Sample]:
    """(image, boxes, classes, difficult, tags) of each shard, in seed order."""
    for p in paths:
        shard = load_shard(p)
        for i in range(len(shard)):
            boxes, classes, difficult = shard.labels(i)
            on = tuple(t for t, v in zip(TAGS, shard.tags[i].tolist(), strict=True) if v)
            yield shard.images[i], boxes, classes, difficult, on


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--manifest",
        default=InferenceSettings().model,
        help="a shipped model's name or any manifest's path (default: inference.model's default)",
    )
    ap.add_argument("--checkpoint", default=None, help="a training state dict instead")
    ap.add_argument(
        "--input-size",
        type=size_argument,
        default=None,
        help="WxH the network runs at (default: the manifest's; a --checkpoint's: "
        "scripts/train_detector.py's default)",
    )
    ap.add_argument("--data", default="var/det/heldout")
    ap.add_argument("--seeds", default="100000-100119")
    ap.add_argument("--frames-per-seed", type=int, default=5)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="run the network in this precision (inference.precision); the manifest's "
        "figures are fp32's",
    )
    ap.add_argument("--json", default=None, help="write the full figures here")
    ap.add_argument("--write-manifest", action="store_true", help="store figures in the manifest")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.write_manifest and args.precision != "fp32":
        ap.error("--write-manifest records the fp32 figures; drop --precision")
    torch.set_num_threads(args.threads)

    seeds = parse_seeds(args.seeds)
    if min(seeds) < 100_000:
        ap.error("held-out seeds start at 100000 (lower seeds are training scenes)")
    paths = shard_files(args.data, seeds)
    missing = [s for s, p in zip(seeds, paths, strict=True) if not shard_is_current(p)]
    if missing:
        write_dataset(
            args.data, missing, args.frames_per_seed, interval_s=args.interval, compress=False
        )
    input_size = args.input_size
    if args.write_manifest and input_size is not None:
        ap.error("--write-manifest records the figures at the manifest's input; drop --input-size")
    if args.checkpoint:
        tmp = Path(tempfile.mkdtemp(prefix="its-eval-"))
        model = CenterNet(NetConfig())
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
        cfg = TrainConfig(data="")
        save_detector(model, cfg, {}, tmp, "checkpoint", "checkpoint")
        manifest_path = tmp / "checkpoint.json"
    else:
        manifest_path = SHIPPED_MODELS.get(args.manifest, Path(args.manifest))
    # Either manifest format (a YOLOX fine-tune too), at its own input or --input-size.
    detector = load_model(manifest_path, input_size=input_size)
    engine = None
    if args.precision != "fp32":
        spec = EngineSpec(precision=args.precision, max_batch_size=args.batch_size)
        engine = build_engine(detector, spec)
    t = time.perf_counter()
    result = evaluate_detector(detector, samples(paths), batch_size=args.batch_size, engine=engine)
    result["precision"] = args.precision
    result["input_size"] = list(detector.input_size)
    result["seconds"] = round(time.perf_counter() - t, 1)
    result["command"] = "python scripts/evaluate_detector.py " + shlex.join(argv or sys.argv[1:])
    result["held_out_seeds"] = args.seeds
    result["dataset_version"] = DATASET_VERSION
    result["frames_per_seed"] = args.frames_per_seed
    print(format_table(result))
    overall = result["overall"]["map50"]
    worst = min(r["map50"] for r in result["per_condition"].values())
    passed = overall >= GATE_OVERALL_MAP50 and worst >= GATE_CONDITION_MAP50
    result["gate"] = {
        "overall_map50": GATE_OVERALL_MAP50,
        "condition_map50": GATE_CONDITION_MAP50,
        "passed": passed,
    }
    print(
        f"\n{result['frames']} frames at input {'x'.join(map(str, detector.input_size))}"
        f" in {result['seconds']} s; gate "
        f"(overall >= {GATE_OVERALL_MAP50}, every condition >= {GATE_CONDITION_MAP50}): "
        f"{'PASSED' if passed else 'NOT MET'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.write_manifest and not args.checkpoint:
        # The CI gate test's subset (the first 36 held-out scenes): its figures are what the
        # test compares against to catch a regression of the shipped weights.
        ci = [p for s, p in zip(seeds, paths, strict=True) if s in CI_SEEDS]
        ci_result = evaluate_detector(detector, samples(ci), batch_size=args.batch_size)
        result["ci_subset"] = {
            "seeds": f"{CI_SEEDS.start}-{CI_SEEDS.stop - 1}",
            "overall": ci_result["overall"],
            "per_condition": ci_result["per_condition"],
        }
        print("CI subset:\n" + format_table(ci_result))
        adapter = isinstance(detector, YoloAdapter)
        m = (read_adapter_manifest if adapter else read_manifest)(manifest_path)
        write_manifest(manifest_path, m.model_copy(update={"evaluation": result}))
        print(f"figures written to {manifest_path}")

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
