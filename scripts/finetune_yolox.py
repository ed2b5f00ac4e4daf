"""Fine-tune the shipped YOLOX-nano (COCO) on simulator data, resumably, and ship it.

    python scripts/finetune_yolox.py --name yolox-nano-its --steps 3000 \\
        --checkpoint var/yolox/checkpoint.pt          # cut it and run the same line again
    # -> src/its_camera_ai/inference/models/yolox-nano-its.pt + yolox-nano-its.json

Shards of the requested seeds missing from ``--data`` are rendered first (as
``scripts/train_detector.py`` does; seeds below the held-out 100000+). The weights start from
``--init`` (the shipped ``yolox-nano-coco`` by default), keep COCO's 80-class head and its
class map, and are written as TorchScript beside a manifest of the same format as the one
they started from, with the run's config in its ``training`` record (where ``--init`` was a
fine-tune too, its records go on in ``training_history``) and a new sha256. How it trains
and what keeps it good on real video: ``its_camera_ai.inference.training._yolox``.
Score it with ``scripts/evaluate_detector.py --manifest`` (simulator held-out) and
``benchmarks/real_clip_counts.py --models`` (real clips).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from its_camera_ai.inference.models import (
    SHIPPED_MODELS,
    read_adapter_manifest,
    sha256_file,
    write_manifest,
)
from its_camera_ai.inference.training import (
    FinetuneConfig,
    crop_size_argument,
    finetune_yolox,
    render_missing,
    size_argument,
)
from its_camera_ai.sim import DATASET_VERSION, parse_seeds

_MODELS = Path(__file__).resolve().parents[1] / "src/its_camera_ai/inference/models"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = FinetuneConfig(data="", init="")
    ap.add_argument("--data", default="var/det/train", help="shard directory (rendered if missing)")
    ap.add_argument("--seeds", default="0-799")
    ap.add_argument("--frames-per-seed", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.5)
    ap.add_argument("--workers", type=int, default=2, help="processes rendering missing shards")
    ap.add_argument("--init", type=Path, default=SHIPPED_MODELS["yolox-nano-coco"])
    ap.add_argument(
        "--input-size",
        type=size_argument,
        default=None,
        help="WxH frames are letterboxed to, and the written manifest's input (default: --init's)",
    )
    ap.add_argument(
        "--crop-size",
        type=crop_size_argument,
        default=None,
        help="train on random WxH crops of it ('none', the default: whole)",
    )
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    ap.add_argument(
        "--freeze", type=int, default=defaults.freeze, help="keep the first N convolutions fixed"
    )
    ap.add_argument(
        "--slow",
        type=int,
        default=defaults.slow,
        help="convolutions after the frozen ones up to the N-th learn at --slow-lr-scale x --lr",
    )
    ap.add_argument("--slow-lr-scale", type=float, default=defaults.slow_lr_scale)
    ap.add_argument(
        "--anchor-weight",
        type=float,
        default=defaults.anchor_weight,
        help="L2-SP: pull towards the starting weights (0: off)",
    )
    ap.add_argument(
        "--distil-weight",
        type=float,
        default=defaults.distil_weight,
        help="hold the class outputs near the starting network's where it sees objects (0: off)",
    )
    ap.add_argument(
        "--zoom",
        type=float,
        nargs=2,
        default=defaults.zoom,
        metavar=("LOW", "HIGH"),
        help="random zoom range of the augmentation",
    )
    ap.add_argument(
        "--close-zoom",
        type=float,
        nargs=2,
        default=defaults.close_zoom,
        metavar=("LOW", "HIGH"),
        help="zoom range of the --close-share crops: vehicles as large as a camera beside "
        "the road shows them",
    )
    ap.add_argument(
        "--close-share",
        type=float,
        default=defaults.close_share,
        help="share of the crops zoomed by --close-zoom (0: none)",
    )
    ap.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    ap.add_argument("--seed", type=int, default=defaults.seed, help="data order and augmentation")
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:1...")
    ap.add_argument("--checkpoint", type=Path, default=None, help="saved as it goes; resumed")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    ap.add_argument("--note", default=None, help="free text recorded in the manifest")
    ap.add_argument("--out", type=Path, default=_MODELS)
    ap.add_argument("--name", default="yolox-nano-its")
    ap.add_argument("--version", default=time.strftime("%Y.%m.%d"))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    for flag, zoom in (("--zoom", args.zoom), ("--close-zoom", args.close_zoom)):
        if zoom is not None and not 0 < zoom[0] <= zoom[1]:
            ap.error(f"{flag} {zoom[0]:g} {zoom[1]:g}: LOW HIGH with 0 < LOW <= HIGH")
    if not 0.0 < args.slow_lr_scale <= 1.0:
        ap.error(f"--slow-lr-scale {args.slow_lr_scale}: a factor above 0, at most 1")
    if not 0.0 <= args.close_share <= 1.0:
        ap.error(f"--close-share {args.close_share}: a share from 0 to 1")
    if args.close_share > 0 and args.close_zoom is None:
        ap.error(f"--close-share {args.close_share}: --close-zoom LOW HIGH is needed with it")
    seeds = parse_seeds(args.seeds)
    start = read_adapter_manifest(args.init)
    if start.output != "yolox":
        ap.error(f"--init {args.init}: a YOLOX model's manifest is needed, not {start.output}")
    input_size = args.input_size or (start.input.width, start.input.height)
    try:
        render_missing(args.data, seeds, args.frames_per_seed, args.interval, args.workers)
    except ValueError as exc:
        ap.error(f"--seeds {args.seeds}: {exc}")
    cfg = FinetuneConfig(
        data=args.data,
        init=str(Path(args.init).parent / start.weights),
        seeds=tuple(seeds),
        input_size=input_size,
        crop_size=args.crop_size,
        strides=start.strides,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        freeze=args.freeze,
        slow=args.slow,
        slow_lr_scale=args.slow_lr_scale,
        anchor_weight=args.anchor_weight,
        distil_weight=args.distil_weight,
        zoom=tuple(args.zoom),
        close_zoom=None if args.close_zoom is None else tuple(args.close_zoom),
        close_share=args.close_share,
        ema_decay=args.ema_decay,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps {task.fields[losses]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("fine-tuning", total=cfg.steps, losses="")

        def advance(step: int, total: int, losses: dict[str, float]) -> None:
            text = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            progress.update(task, completed=step, total=total, losses=text)

        model, stats = finetune_yolox(
            cfg,
            args.checkpoint,
            args.checkpoint_every,
            progress=advance,
            log=progress.console.print,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{args.name}.pt"
    torch.jit.save(model, str(weights))
    record = {**cfg.to_dict(), **stats, "seeds": args.seeds, "torch": torch.__version__}
    record["init"] = f"{start.name} {start.version} (sha256 {start.sha256})"
    record["command"] = "python scripts/finetune_yolox.py " + shlex.join(argv or sys.argv[1:])
    record.update(
        frames_per_seed=args.frames_per_seed,
        interval_s=args.interval,
        dataset_version=DATASET_VERSION,
    )
    if args.note:
        record["note"] = args.note
    manifest = start.model_copy(
        update={
            "name": args.name,
            "version": args.version,
            "weights": weights.name,
            "sha256": sha256_file(weights),
            "input": start.input.model_copy(
                update={"width": input_size[0], "height": input_size[1]}
            ),
            "size_bytes": weights.stat().st_size,
            "source": f"fine-tuned from {start.name} {start.version} ({start.source})",
            "evaluation": None,
            "training": record,
            "training_history": (
                (*start.training_history, start.training)
                if start.training
                else start.training_history
            ),
        }
    )
    write_manifest(args.out / f"{args.name}.json", manifest)
    print(f"wrote {weights} ({manifest.size_bytes} bytes, sha256 {manifest.sha256})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
