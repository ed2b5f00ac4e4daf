"""Detector CPU latency and throughput at batch 1 and 8, with its GFLOPs.

    python benchmarks/detector_latency.py [--threads 2] [--manifest PATH] [--seconds 10]

Measures the whole ``Detector.detect`` path (letterbox of a 640x384 uint8 frame, network,
peak decoding, mapping back) and the network alone, median and p99 per batch, and frames/s.
The baseline, side by side: the same network in its trained layout (BatchNorm unfolded,
contiguous NCHW weights), which is what ``detect`` ran before ``inference_network``.
The target is >= 60 frames/s at batch 8 on two cores (two cameras at 30 FPS). The machine
is shared: run it when it is quiet, and read the p99 as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.inference import DEFAULT_MANIFEST, Detector, load_detector
from services.inference._model import count_gflops


def timeit(fn, seconds: float, min_runs: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    fn()
    out: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(out) < min_runs:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def network_only(det: Detector, net: torch.nn.Module, x: torch.Tensor) -> object:
    with torch.inference_mode():
        return net(det.normalise(x.clone()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = load_detector(args.manifest)
    w, h = det.input_size
    gflops = count_gflops(det.model, (w, h))
    params = sum(p.numel() for p in det.model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8):
        frames = rng.integers(0, 255, (batch, 384, 640, 3), dtype=np.uint8)
        x = torch.rand(batch, 3, h, w)
        full = timeit(lambda f=frames: det.detect(f), args.seconds)
        net = timeit(lambda x=x: network_only(det, det.network, x), args.seconds)
        trained = timeit(lambda x=x: network_only(det, det.model, x), args.seconds)
        speedup = statistics.median(trained) / statistics.median(net)
        print(f"batch {batch}: folded channels-last network {speedup:.2f}x the trained layout")
        for what, ts in (
            ("detect (end to end)", full),
            ("network only", net),
            ("network, trained layout (baseline)", trained),
        ):
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
    cpu = platform.processor() or platform.machine()
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
