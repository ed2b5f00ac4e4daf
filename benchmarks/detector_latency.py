"""Detector CPU latency and throughput at batch 1 and 8, with its GFLOPs.

    python benchmarks/detector_latency.py [--threads 2] [--manifest PATH] [--seconds 10]
    python benchmarks/detector_latency.py --models its-detector-v1 yolox-nano-coco
    python benchmarks/detector_latency.py --models yolox-nano-its --input-size 416x288 640x384

With ``--models``: every shipped (or manifest-described) model side by side, taking turns,
at its manifest's input or at each ``--input-size`` (``inference.input_size``),
``detect`` end to end on 720p frames in fp32, through the bf16 engine where the CPU has
bf16 instructions, and through the ``onnxruntime`` backend (fp32, the CPU's default); each
YOLO-format model also with its weights in NCHW, the layout it ran in before the adapter
made them channels-last.

Measures the whole ``Detector.detect`` path (letterbox of a 640x384 uint8 frame, network,
peak decoding, mapping back) and the network alone, median and p99 per batch, and frames/s.
The baseline, side by side: the same network in its trained layout (BatchNorm unfolded,
contiguous NCHW weights), which is what ``detect`` ran before ``inference_network``.
Where the CPU has bf16 instructions it also times both paths through the engine that
``inference.precision: bf16`` builds (its accuracy: ``scripts/evaluate_detector.py
--precision bf16``).
The target is >= 60 frames/s at batch 8 on two cores (two cameras at 30 FPS). The machine
is shared: run it when it is quiet, and read the p99 as an upper bound.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from its_camera_ai.inference.models import (
    ITS_DETECTOR_MANIFEST,
    Detector,
    EngineSpec,
    YoloAdapter,
    build_engine,
    count_gflops,
    detect_frames,
    load_detector,
    load_model,
    set_memory_format,
)
from its_camera_ai.inference.training import size_argument


def timeit(
    paths: dict[str, Callable[[], object]], seconds: float, min_runs: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each path, the paths taking turns for ``seconds`` each: on a
    shared machine a busy spell then slows every path alike instead of one, so their
    ratios hold even when the absolute figures do not."""
    for fn in paths.values():
        fn()  # warm-up (oneDNN picks its kernels on the first call)
        fn()
    out: dict[str, list[float]] = {name: [] for name in paths}
    t_end = time.perf_counter() + seconds * len(paths)
    while time.perf_counter() < t_end or min(map(len, out.values())) < min_runs:
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def network_only(det: Detector, net: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    with torch.inference_mode():
        return net(det.normalise(x.clone()))


def cpu_name() -> str:
    """The CPU model and its bf16 instruction sets: figures differ a lot between them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name or platform.machine()} ({', '.join(bf16) or 'no bf16 instructions'})"


def models_side_by_side(
    names: list[str], seconds: float, input_sizes: Sequence[tuple[int, int] | None] = (None,)
) -> None:
    """``detect`` of each model on 1280x720 frames, fp32 and bf16, batches of 1 and 8, at
    each of ``input_sizes`` (None: the manifest's input)."""
    rng = np.random.default_rng(0)
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    models = {
        f"{name} {i}": load_model(name, input_size=size)
        for name in names
        for i, size in enumerate(input_sizes)
    }
    print("| model | input | precision, backend | batch | median ms | p99 ms | frames/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for batch in (1, 8):
        frames = rng.integers(0, 255, (batch, 720, 1280, 3), dtype=np.uint8)
        paths: dict[str, Callable[[], object]] = {}
        for name, model in models.items():
            paths[f"{name}|fp32"] = functools.partial(model.detect, frames)
            if isinstance(model, YoloAdapter):
                # The baseline, side by side: the same weights in NCHW, as the adapter ran
                # them before it laid them out channels-last.
                nchw = load_model(model.name, input_size=model.input_size)
                assert isinstance(nchw, YoloAdapter)
                set_memory_format(nchw.module, torch.contiguous_format)
                paths[f"{name}|fp32, NCHW weights (before)"] = functools.partial(
                    nchw.detect, frames
                )
            if bf16:
                engine = build_engine(model, EngineSpec(precision="bf16", max_batch_size=8))
                paths[f"{name}|bf16"] = functools.partial(detect_frames, model, engine, frames)
            engine = build_engine(model, EngineSpec("onnxruntime", max_batch_size=8))
            paths[f"{name}|fp32, onnxruntime"] = functools.partial(
                detect_frames, model, engine, frames
            )
        for key, ts in timeit(paths, seconds).items():
            label, precision = key.split("|")
            model = models[label]
            w, h = model.input_size
            med, p99 = statistics.median(ts), float(np.percentile(ts, 99))
            print(
                f"| {model.name} | {w}x{h} | {precision} | {batch} | {med * 1e3:.1f}"
                f" | {p99 * 1e3:.1f} | {batch / med:.1f} |"
            )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default=str(ITS_DETECTOR_MANIFEST))
    ap.add_argument("--models", nargs="+", help="shipped model names or manifests, compared")
    ap.add_argument(
        "--input-size",
        nargs="+",
        type=size_argument,
        default=[],
        help="WxH: the --models' inputs (default: own)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sizes = args.input_size or [None]
    torch.set_num_threads(args.threads)
    if args.models:
        print(f"{args.threads} threads, torch {torch.__version__}, {cpu_name()}")
        models_side_by_side(args.models, args.seconds, sizes)
        return 0
    det = load_detector(args.manifest)
    w, h = det.input_size
    gflops = count_gflops(det.model, (w, h))
    params = sum(p.numel() for p in det.model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    bf16 = None
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        bf16 = build_engine(det, EngineSpec(precision="bf16", max_batch_size=8))
    rows = []
    for batch in (1, 8):
        frames = rng.integers(0, 255, (batch, 384, 640, 3), dtype=np.uint8)
        x = torch.rand(batch, 3, h, w)
        paths: dict[str, Callable[[], object]] = {
            "detect (end to end)": lambda f=frames: det.detect(f),
            "network only": lambda x=x: network_only(det, det.network, x),
            "network, trained layout (baseline)": lambda x=x: network_only(det, det.model, x),
        }
        if bf16 is not None:
            paths["detect, bf16 engine"] = lambda f=frames, e=bf16: detect_frames(det, e, f)
            paths["network only, bf16 engine"] = lambda x=x, e=bf16: network_only(det, e, x)
        timed = timeit(paths, args.seconds)
        medians = {name: statistics.median(ts) for name, ts in timed.items()}
        ratio = medians["network, trained layout (baseline)"] / medians["network only"]
        print(f"batch {batch}: folded channels-last network {ratio:.2f}x the trained layout")
        if bf16 is not None:
            ratio = medians["network only"] / medians["network only, bf16 engine"]
            print(f"batch {batch}: bf16 engine's network {ratio:.2f}x the fp32 network")
        for what, ts in timed.items():
            med = statistics.median(ts)
            p99 = float(np.percentile(ts, 99))
            rows.append(
                {
                    "what": what,
                    "batch": batch,
                    "median_ms": round(med * 1e3, 2),
                    "p99_ms": round(p99 * 1e3, 2),
                    "fps": round(batch / med, 1),
                    "runs": len(ts),
                }
            )
    cpu = cpu_name()
    print(
        f"model {det.manifest.name} {det.manifest.version}: input {w}x{h}, "
        f"{gflops:.3f} GFLOPs/frame (2 x MACs), {params:.2f} M params, "
        f"{args.threads} threads, torch {torch.__version__}, {cpu}"
    )
    print("| path | batch | median ms | p99 ms | frames/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['batch']} | {r['median_ms']} | {r['p99_ms']} | {r['fps']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"gflops": gflops, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
