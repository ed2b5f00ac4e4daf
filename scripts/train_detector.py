"""Train the shipped vehicle detector from scratch on simulator data (CPU, deterministic).

    python scripts/train_detector.py     # the shipped run: ~5 min rendering + ~53 min training
    # -> src/its_camera_ai/inference/models/its-detector-v1.pt + its-detector-v1.json

The defaults are the shipped weights' recipe (``TrainConfig``'s defaults, 800 scenes of 10
frames); the manifest's ``training`` record holds every value used.

Shards of the requested seeds missing from ``--data`` are rendered first with the simulator
(same parameters as ``its-camera-ai sim dataset``), so the command alone reproduces the
run. Training seeds must stay disjoint from the held-out seeds (100000+) that
``scripts/evaluate_detector.py`` renders. The manifest gets the training config and the
weights' sha256; evaluation figures are added by the evaluation script (``--write-manifest``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from its_camera_ai.inference.models import NetConfig, save_detector
from its_camera_ai.inference.training import (
    TrainConfig,
    crop_size_argument,
    render_missing,
    size_argument,
    train,
)
from its_camera_ai.sim import DATASET_VERSION, parse_seeds


def _wxh(size: tuple[int, int] | None) -> str:
    return "none" if size is None else f"{size[0]}x{size[1]}"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = TrainConfig(data="")
    ap.add_argument("--data", default="var/det/train", help="shard directory (rendered if missing)")
    ap.add_argument("--seeds", default="0-799")
    ap.add_argument("--frames-per-seed", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.5)
    ap.add_argument(
        "--input-size",
        type=size_argument,
        default=_wxh(defaults.input_size),
        help="network input WxH",
    )
    ap.add_argument(
        "--crop-size",
        type=crop_size_argument,
        default=_wxh(defaults.crop_size),
        help="train on random WxH crops ('none': whole)",
    )
    ap.add_argument(
        "--zoom", default=f"{defaults.zoom[0]},{defaults.zoom[1]}", help="scale jitter lo,hi"
    )
    ap.add_argument("--epochs", type=float, default=defaults.epochs)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default=defaults.precision)
    ap.add_argument(
        "--class-balance",
        type=float,
        default=defaults.class_balance,
        help="weigh each class's heatmap loss by its object count to this power, negated "
        "(0: every object alike)",
    )
    ap.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="0: the last step")
    ap.add_argument("--init", default=None, help="start from this state dict (continue a run)")
    ap.add_argument("--note", default=None, help="free text recorded in the manifest")
    ap.add_argument("--max-steps", type=int, default=None, help="stop early (CI smoke)")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering missing shards")
    ap.add_argument("--out", default="src/its_camera_ai/inference/models")
    ap.add_argument("--name", default="its-detector-v1")
    ap.add_argument("--version", default=time.strftime("%Y.%m.%d"))
    ap.add_argument("--checkpoint", default=None, help="save a state dict here every 200 steps")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)

    seeds = parse_seeds(args.seeds)
    try:
        zoom_lo, zoom_hi = (float(v) for v in args.zoom.split(","))
    except ValueError:
        ap.error(f"--zoom {args.zoom!r}: expected lo,hi, e.g. 0.75,1.35")
    if not 0 < zoom_lo <= zoom_hi:
        ap.error(f"--zoom {args.zoom!r}: need 0 < lo <= hi")
    try:
        render_missing(args.data, seeds, args.frames_per_seed, args.interval, args.workers)
    except ValueError as exc:
        ap.error(f"--seeds {args.seeds}: {exc}")
    cfg = TrainConfig(
        data=args.data,
        seeds=tuple(seeds),
        input_size=args.input_size,
        crop_size=args.crop_size,
        zoom=(zoom_lo, zoom_hi),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        max_steps=args.max_steps,
        warmup_steps=args.warmup_steps,
        init=args.init,
        precision=args.precision,
        class_balance=args.class_balance,
        ema_decay=args.ema_decay,
        net=NetConfig(),
    )
    model, stats = train(
        cfg,
        log=lambda m: print(m, flush=True),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
    )
    record = cfg.to_dict()
    record["seeds"] = args.seeds  # the range as typed, not thousands of integers
    record["frames_per_seed"] = args.frames_per_seed
    record["interval_s"] = args.interval
    record["dataset_version"] = DATASET_VERSION
    record["torch"] = torch.__version__
    if args.note:
        record["note"] = args.note
    record.update(stats)
    manifest = save_detector(model, cfg, record, Path(args.out), args.name, args.version)
    print(f"wrote {Path(args.out) / manifest.weights} ({manifest.size_bytes} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
