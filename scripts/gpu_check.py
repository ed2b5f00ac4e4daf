# Over 500 lines on purpose: one self-contained file to copy onto a bare GPU machine and run.
"""GPU check of the inference backends: correctness against the CPU, throughput, transfers.

    python scripts/gpu_check.py [--quick] [--json report.json] [--budget-s 200] [--parts dacb]

Made to run unattended, once, on a GPU machine that may have nothing but a preinstalled
torch: it puts the repository on ``sys.path``, stands in for protobuf and pydantic where they
are missing (``install_stand_ins``), and when a part cannot run it reports why and goes on
with the others. The parts, in the order they run:

d. environment: GPU, driver, CUDA, cuDNN, torch, torch_tensorrt and TensorRT versions;
a. correctness: its-detector-v1 on simulator frames (seeded random frames without the
   simulator), CUDA eager fp32 and fp16 against the CPU: frames with equal counts, CPU
   detections matched by a same-class box, the matches' IoU, the largest score difference;
c. host-to-device copies of 1080p RGB frames from a shared-memory ring, pinned and not
   (pinned and pageable torch tensors without posix_ipc): GB/s and microseconds per frame;
b. throughput of the network alone and of the whole detect path (host frames, letterbox,
   network, postprocess) at batch 1/8/32: CUDA eager fp32 and fp16, TensorRT fp16 (when
   torch_tensorrt imports) and torch.compile fp16, with each engine's build time; a CPU
   eager row for scale. Compiling backends are skipped when they would overrun --budget-s.

Without CUDA it still runs what applies (environment, the CPU side of a and b) and reports
the rest as n/a. The report prints as it goes and is rewritten to --json after every part,
so a run cut short keeps what it measured. Exit status 0 once the report is complete.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))  # the generated its.* protos
sys.path.insert(0, str(REPO / "src"))  # the its_camera_ai package, installed or not

# Seconds a part is expected to take at most, to decide whether it still fits the budget.
BUILD_ESTIMATE_S = {"torch": 10.0, "tensorrt": 120.0, "torch-compile": 90.0}
FRAME_W, FRAME_H = 1920, 1080  # the transfer test's frames: 1080p RGB
SIM_SIZE = (1280, 720)  # simulator frames (its default camera)


# --- stand-ins for missing dependencies ---------------------------------------------

# Stood in for, by module path, where pydantic is missing (``manifest_stand_in``).
MANIFEST_MODULE = "its_camera_ai.inference.models._manifest"

# its.inference.v1 Backend and Precision values (protos/its/inference/v1/model.proto).
PROTO_ENUMS = {
    "BACKEND_TORCH_CPU": 1,
    "BACKEND_TORCH_CUDA": 2,
    "BACKEND_TORCH_COMPILE": 3,
    "BACKEND_TENSORRT": 4,
    "PRECISION_FP32": 1,
    "PRECISION_FP16": 2,
}


def install_stand_ins() -> list[str]:
    """Make ``its_camera_ai.inference.models`` (detector, letterbox, engines: torch alone)
    importable on a machine without the service's dependencies; returns what was stood in
    for, and why."""
    used = []
    try:
        importlib.import_module("its.inference.v1.model_pb2")
    except Exception as e:  # protobuf missing, or older than the generated code requires
        stub = types.ModuleType("its.inference.v1.model_pb2")
        stub.__dict__.update(PROTO_ENUMS)
        sys.modules[stub.__name__] = stub
        importlib.import_module("its.inference.v1").model_pb2 = stub
        used.append(f"its model_pb2 enums ({type(e).__name__}: {e})")
    try:
        importlib.import_module("its_camera_ai.inference")
    except Exception as e:  # the package pulls in the whole service: grpc, posix_ipc, ...
        # An empty package object: its ``models`` subpackage imports without the service
        # runtime that the package's __init__ pulls in.
        pkg = types.ModuleType("its_camera_ai.inference")
        pkg.__path__ = [str(REPO / "src" / "its_camera_ai" / "inference")]
        sys.modules[pkg.__name__] = pkg
        importlib.import_module("its_camera_ai").inference = pkg
        used.append(f"its_camera_ai.inference package ({type(e).__name__}: {e})")
    try:
        importlib.import_module("pydantic")
    except ImportError as e:
        sys.modules[MANIFEST_MODULE] = manifest_stand_in()
        used.append(f"manifest reader without validation ({e})")
    return used


def manifest_stand_in() -> types.ModuleType:
    """The models' manifest module without pydantic: the manifest's JSON as attributes, the
    weights' sha256 still checked; what the models package imports from it, nothing more."""
    m = types.ModuleType(MANIFEST_MODULE)

    def sha256_file(path: Path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def read_manifest(path: str | Path) -> SimpleNamespace:
        raw = json.loads(Path(path).read_text())
        for key in ("input", "normalisation", "decoding"):
            raw[key] = SimpleNamespace(**raw[key])
        raw["classes"], raw["class_ids"] = tuple(raw["classes"]), tuple(raw["class_ids"])
        return SimpleNamespace(**raw)

    def verified_weights(manifest_path: str | Path, manifest: Any) -> Path:
        weights = Path(manifest_path).parent / manifest.weights
        if sha256_file(weights) != manifest.sha256:
            raise RuntimeError(f"{weights}: sha256 differs from the manifest's")
        return weights

    def write_manifest(path: str | Path, manifest: Any) -> None:
        raise NotImplementedError("this stand-in only reads manifests")

    m.__dict__.update(
        CLASS_IDS={},  # used only when saving a newly trained detector
        Decoding=SimpleNamespace,
        InputSpec=SimpleNamespace,
        Manifest=SimpleNamespace,
        Normalisation=SimpleNamespace,
        read_manifest=read_manifest,
        sha256_file=sha256_file,
        verified_weights=verified_weights,
        write_manifest=write_manifest,
    )
    return m


# --- report -------------------------------------------------------------------------


class Report:
    def __init__(self, json_path: str | None, budget_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.json_path = json_path
        self.data: dict[str, Any] = {"problems": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, seconds: float) -> bool:
        return self.elapsed() + seconds <= self.budget_s

    def problem(self, text: str) -> None:
        self.data["problems"].append(text)
        print(f"  PROBLEM: {text}")

    def part(self, key: str, title: str, fn: Callable[[], Any]) -> None:
        print(f"\n== {title}  [{self.elapsed():.0f} s]", flush=True)
        try:
            self.data[key] = fn()
        except Exception as e:  # a part failing must not stop the others
            self.data[key] = {"error": f"{type(e).__name__}: {e}"}
            self.problem(f"{title}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=4)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(self.data, indent=1, default=str))


def version_of(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception:  # absent, or present but broken (a missing shared library)
        return None


def cuda() -> bool:
    return torch.cuda.is_available()


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def timed(fn: Callable[[], object], seconds: float, sync: bool, min_runs: int = 3) -> list[float]:
    for _ in range(2):  # warm-up: cuDNN algorithm choice, allocator growth
        fn()
    if sync:
        torch.cuda.synchronize()
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_runs:
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


# --- d. environment -----------------------------------------------------------------


def driver_version() -> str | None:
    """From nvidia-ml-py (the gpu extra) when installed, else from nvidia-smi."""
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # absent, or no NVML library
        v = None
    if v is not None:
        return v.decode() if isinstance(v, bytes) else str(v)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def part_environment(stand_ins: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda(),
        "torch_tensorrt": version_of("torch_tensorrt"),
        "tensorrt": version_of("tensorrt"),
        "modules": {
            m: version_of(m) for m in ("pydantic", "posix_ipc", "google.protobuf", "numpy")
        },
        "stand_ins": stand_ins,
    }
    if cuda():
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=p.name,
            gpus=torch.cuda.device_count(),
            capability=f"{p.major}.{p.minor}",
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            driver=driver_version(),
            cudnn=torch.backends.cudnn.version(),
            tf32_convolutions=torch.backends.cudnn.allow_tf32,
        )
        print(
            f"GPU {p.name} x{env['gpus']} (sm {env['capability']}, "
            f"{env['gpu_memory_gib']} GiB), driver {env['driver']}, CUDA {torch.version.cuda}, "
            f"cuDNN {env['cudnn']}"
        )
    else:
        why = "CPU-only torch build" if torch.version.cuda is None else "no device visible"
        print(f"no CUDA device ({why}): GPU parts report n/a")
    print(
        f"torch {torch.__version__}, torch_tensorrt {env['torch_tensorrt']}, TensorRT "
        f"{env['tensorrt']}, Python {env['python']}, {env['cpus']} CPUs"
    )
    print(f"modules: {env['modules']}")
    for s in stand_ins:
        print(f"stand-in: {s}")
    return env


# --- shared by a and b --------------------------------------------------------------


def project() -> SimpleNamespace:
    """The project's inference modules, imported only once the stand-ins are in place (and
    inside a part, so that a failing import fails that part alone)."""
    from its_camera_ai.inference.models import (  # noqa: PLC0415
        EngineSpec,
        build_engine,
        letterbox_any,
        load_detector,
    )

    return SimpleNamespace(
        EngineSpec=EngineSpec,
        build_engine=build_engine,
        load_detector=load_detector,
        letterbox_any=letterbox_any,
    )


def test_frames(n: int) -> tuple[np.ndarray, str]:
    """n RGB frames: simulator scenes (day and night) when the simulator imports."""
    try:
        from its_camera_ai.sim import Scene, SceneConfig  # noqa: PLC0415 (needs pydantic)

        out: list[np.ndarray] = []
        for seed, condition in ((1, "day"), (2, "night")):
            scene = Scene(SceneConfig(seed=seed, condition=condition))
            out += [f for f, _ in scene.frames((n + 1) // 2)]
        return np.stack(out[:n]), "simulator"
    except Exception as e:  # the simulator needs pydantic
        rng = np.random.default_rng(0)
        w, h = SIM_SIZE
        frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        return frames, f"random (simulator unavailable: {type(e).__name__}: {e})"


def pipeline(model: Any, engine: Any) -> Callable[[np.ndarray, float], list[Any]]:
    """What the service does with host frames: copy, letterbox, normalise, run, decode."""
    letterbox_any = project().letterbox_any

    def run(frames: np.ndarray, thr: float) -> list[Any]:
        batch = torch.from_numpy(frames).to(engine.device)
        x, lb = letterbox_any(batch, model.input_size, model.pad_value)
        raw = engine(model.normalise(x))
        return list(model.postprocess(raw, [lb] * len(frames), [thr] * len(frames)))

    return run


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def compare(cpu: list[Any], dev: list[Any], sure: float) -> dict[str, Any]:
    """Per CPU detection scoring at least ``sure``, the best same-class device box (a match
    at IoU >= 0.5). Scores nearer the threshold may fall either side of it on the device."""
    same_count = matched = confident = 0
    ious: list[float] = []
    dscores: list[float] = []
    for c, d in zip(cpu, dev, strict=True):
        same_count += len(c.scores) == len(d.scores)
        keep = c.scores >= sure
        confident += int(keep.sum())
        for box, score, cls in zip(c.boxes[keep], c.scores[keep], c.classes[keep], strict=True):
            same = d.classes == cls
            if not bool(same.any()):
                continue
            iou = box_iou(box[None], d.boxes[same])[0]
            best = int(iou.argmax())
            if float(iou[best]) >= 0.5:
                matched += 1
                ious.append(float(iou[best]))
                dscores.append(abs(float(d.scores[same][best] - score)))
    return {
        "frames": len(cpu),
        "frames_same_count": same_count,
        "cpu_detections": sum(len(c.scores) for c in cpu),
        "device_detections": sum(len(d.scores) for d in dev),
        "confident_cpu_detections": confident,
        "matched_fraction": matched / confident if confident else None,
        "iou_mean": float(np.mean(ious)) if ious else None,
        "iou_min": min(ious) if ious else None,
        "max_abs_dscore": max(dscores) if dscores else None,
    }


# --- a. correctness -----------------------------------------------------------------


def part_correctness(report: Report, opts: argparse.Namespace) -> dict[str, Any]:
    p = project()
    model = p.load_detector()
    frames, source = test_frames(opts.frames)
    thr = model.default_score_threshold
    t = time.perf_counter()
    cpu = list(model.detect(frames, score_threshold=thr))
    cpu_s = time.perf_counter() - t
    n_cpu = sum(len(d.scores) for d in cpu)
    print(
        f"{len(frames)} {source} frames {frames.shape[2]}x{frames.shape[1]}, threshold "
        f"{thr:.2f}: CPU finds {n_cpu} detections ({cpu_s:.2f} s)"
    )
    out: dict[str, Any] = {"frames_source": source, "threshold": thr, "cpu_detections": n_cpu}
    if not cuda():
        print("CUDA comparisons: n/a (no CUDA device)")
        return out
    # (fraction of confident CPU detections matched, largest score difference): TF32
    # convolutions (torch's default) move fp32 scores by ~1e-3, fp16 by ~1e-2.
    limits = {"fp32": (0.99, 0.01), "fp16": (0.98, 0.05)}
    for precision, (min_matched, max_dscore) in limits.items():
        spec = p.EngineSpec("torch", "cuda", precision, max_batch_size=len(frames))
        engine = p.build_engine(model, spec)
        r = compare(cpu, pipeline(model, engine)(frames, thr), thr + max_dscore)
        out[f"cuda_eager_{precision}"] = r
        ok = (r["matched_fraction"] or 0) >= min_matched and (
            r["max_abs_dscore"] or 0
        ) <= max_dscore
        print(
            f"cuda eager {precision}: same count in {r['frames_same_count']}/{r['frames']} "
            f"frames, {r['device_detections']} vs {r['cpu_detections']} detections, matched "
            f"{fmt(r['matched_fraction'], '.3f')} of {r['confident_cpu_detections']} "
            f"confident, IoU mean {fmt(r['iou_mean'], '.4f')} min "
            f"{fmt(r['iou_min'], '.4f')}, max |dscore| {fmt(r['max_abs_dscore'], '.5f')}"
            f"  {'OK' if ok else 'MISMATCH'}"
        )
        if not ok:
            report.problem(f"cuda eager {precision} disagrees with the CPU: {r}")
    return out


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


# --- c. transfers -------------------------------------------------------------------


def copy_times(src: torch.Tensor, runs: int) -> dict[str, float]:
    dst = torch.empty(src.shape, dtype=src.dtype, device="cuda")
    ts = timed(lambda: dst.copy_(src, non_blocking=True), 0.0, sync=True, min_runs=runs)
    med = float(np.median(ts))
    return {
        "us_per_frame": round(med * 1e6, 1),
        "best_us": round(min(ts) * 1e6, 1),
        "gb_per_s": round(src.numel() * src.element_size() / med / 1e9, 2),
    }


def part_transfer(opts: argparse.Namespace) -> dict[str, Any]:
    nbytes = FRAME_W * FRAME_H * 3
    print(f"1080p RGB frame, {nbytes / 1e6:.1f} MB per copy")
    if not cuda():
        print("n/a (no CUDA device)")
        return {"n/a": "no CUDA device"}
    runs = 10 if opts.quick else 50
    frame = np.random.default_rng(0).integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
    out: dict[str, Any] = {"frame_bytes": nbytes}
    try:
        from its_camera_ai import shm  # noqa: PLC0415 (needs posix_ipc)
    except Exception as e:  # posix_ipc missing: the same copies from torch's own memory
        out["source"] = f"torch tensors (shm unavailable: {type(e).__name__}: {e})"
        out["pageable"] = copy_times(torch.from_numpy(frame), runs)
        out["pinned"] = copy_times(torch.from_numpy(frame).pin_memory(), runs)
    else:
        out["source"] = "shm ring"
        name = f"gpu-check-{os.getpid()}"
        with shm.create(name, slots=2, max_frame_bytes=nbytes) as writer:
            writer.write(frame, FRAME_W, FRAME_H, shm.PixelFormat.RGB24)
            for pinned in (False, True):
                with shm.attach(name, pin_memory=pinned) as reader:
                    f = reader.read_latest(timeout=1.0)
                    if f is None:
                        raise RuntimeError(f"ring {name} returned no frame")
                    t = f.tensor()
                    r = copy_times(t, runs)
                    r["registered"] = bool(reader.pinned)
                    out["pinned" if pinned else "pageable"] = r
                    f.check()
                    del t
                    f.release()
    print(f"source: {out['source']}")
    for kind in ("pageable", "pinned"):
        r = out[kind]
        print(f"{kind:>8}: {r['us_per_frame']:8.1f} us/frame  {r['gb_per_s']:6.2f} GB/s")
    return out


# --- b. throughput ------------------------------------------------------------------


def part_throughput(report: Report, opts: argparse.Namespace) -> dict[str, Any]:
    p = project()
    model = p.load_detector()
    thr = model.default_score_threshold
    frames, source = test_frames(max(opts.batches))
    w, h = model.input_size
    configs = [("cpu eager fp32", "torch", "cpu", "fp32")]
    if cuda():
        configs += [
            ("cuda eager fp32", "torch", "cuda", "fp32"),
            ("cuda eager fp16", "torch", "cuda", "fp16"),
            ("cuda tensorrt fp16", "tensorrt", "cuda", "fp16"),
            ("cuda compile fp16", "torch-compile", "cuda", "fp16"),
        ]
    else:
        print("CUDA rows: n/a (no CUDA device)")
    print(f"input {w}x{h}; detect path from {frames.shape[2]}x{frames.shape[1]} {source} frames")
    print(
        f"{'config':<20} {'batch':>5} {'net fps':>9} {'p50 ms':>7} {'p99 ms':>7}   "
        f"{'detect fps':>10} {'p50 ms':>7} {'p99 ms':>7}"
    )
    rows: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    # Saved after every config: a run cut short by its time limit keeps the rows so far.
    report.data["throughput"] = out = {
        "frames_source": source,
        "input_size": [w, h],
        "builds": builds,
        "rows": rows,
    }
    for label, backend, device, precision in configs:
        report.save()
        # The CPU row is for scale only: small batches keep it short.
        batches = [b for b in opts.batches if device == "cuda" or b <= 8]
        if backend == "tensorrt" and version_of("torch_tensorrt") is None:
            builds[label] = {"skipped": "torch_tensorrt does not import"}
            print(f"{label:<20} skipped: torch_tensorrt does not import")
            continue
        if not report.fits(BUILD_ESTIMATE_S[backend] + 4 * opts.seconds * len(batches)):
            builds[label] = {"skipped": f"time budget ({report.elapsed():.0f} s elapsed)"}
            print(f"{label:<20} skipped: it would overrun the {report.budget_s:.0f} s budget")
            continue
        with tempfile.TemporaryDirectory() as cache:
            spec = p.EngineSpec(backend, device, precision, max(batches), Path(cache))
            try:
                t = time.perf_counter()
                engine = p.build_engine(model, spec)
                build = {"build_s": round(time.perf_counter() - t, 1)}
                if backend == "tensorrt":
                    t = time.perf_counter()
                    engine = p.build_engine(model, spec)
                    build["cache_load_s"] = round(time.perf_counter() - t, 1)
                    build["loaded_from_cache"] = engine.loaded_from_cache
            except Exception as e:  # BackendUnavailableError and anything unforeseen
                builds[label] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{label:<20} unavailable: {type(e).__name__}: {str(e)[:300]}")
                report.problem(f"{label}: {type(e).__name__}: {e}")
                continue
        builds[label] = build
        print(
            f"{label:<20} built in {build['build_s']} s"
            + (f", from the cache in {build['cache_load_s']} s" if "cache_load_s" in build else "")
        )
        detect = pipeline(model, engine)
        sync = device == "cuda"
        for b in batches:
            x = model.normalise(torch.rand(b, 3, h, w, device=engine.device))
            net = timed(functools.partial(engine, x), opts.seconds, sync)
            full = timed(functools.partial(detect, frames[:b], thr), opts.seconds, sync)
            row: dict[str, Any] = {"config": label, "batch": b}
            for what, ts in (("network", net), ("detect", full)):
                p50, p99 = percentiles(ts)
                row[what] = {
                    "fps": round(b / p50, 1),
                    "p50_ms": round(p50 * 1e3, 2),
                    "p99_ms": round(p99 * 1e3, 2),
                    "runs": len(ts),
                }
            rows.append(row)
            n, d = row["network"], row["detect"]
            print(
                f"{label:<20} {b:>5} {n['fps']:>9.1f} {n['p50_ms']:>7.2f} {n['p99_ms']:>7.2f}   "
                f"{d['fps']:>10.1f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f}",
                flush=True,
            )
        del engine, detect
        if cuda():
            torch.cuda.empty_cache()
    return out


# --- main ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer frames, batches, time")
    ap.add_argument("--json", help="also write the report here, as JSON")
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip parts that would overrun")
    ap.add_argument("--parts", default="dacb", help="which parts to run, in order (default dacb)")
    opts = ap.parse_args()
    opts.frames = 4 if opts.quick else 16
    opts.batches = (1, 8) if opts.quick else (1, 8, 32)
    opts.seconds = 0.2 if opts.quick else 0.5
    # Line by line even into a pipe: a run killed at its time limit keeps its output.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    report = Report(opts.json, opts.budget_s)
    try:
        stand_ins = install_stand_ins()
    except Exception as e:  # the parts that need the project then fail on their own
        stand_ins = [f"failed: {type(e).__name__}: {e}"]
    parts: dict[str, tuple[str, str, Callable[[], Any]]] = {
        "d": ("environment", "d. environment", lambda: part_environment(stand_ins)),
        "a": ("correctness", "a. correctness, CUDA vs CPU", lambda: part_correctness(report, opts)),
        "c": ("transfer", "c. host-to-device copies", lambda: part_transfer(opts)),
        "b": ("throughput", "b. throughput", lambda: part_throughput(report, opts)),
    }
    for p in opts.parts:
        if p in parts:
            report.part(*parts[p])
    problems = report.data["problems"]
    print(
        f"\ndone in {report.elapsed():.0f} s; "
        + (f"{len(problems)} problem(s):" if problems else "no problems")
    )
    for text in problems:
        print(f"  - {text[:500]}")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
