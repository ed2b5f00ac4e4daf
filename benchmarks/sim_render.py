"""Render throughput of the traffic simulator on one core.

    .venv/bin/python benchmarks/sim_render.py [--frames 120] [--conditions day,night]

For each resolution and condition: frames/s of ``Scene.render`` alone (the renderer's own
cost) and of step + render (a live synthetic camera), over the same stretch of traffic.
Times are per-process CPU time (``time.process_time``), so other work on a shared machine
does not count against the renderer; ``wall fps`` (median wall clock) is shown beside it.
"""

from __future__ import annotations

import os

# One core: no hidden thread pools (BLAS, OpenMP) helping numpy or torch.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from its_camera_ai.sim import CameraConfig, Scene, SceneConfig  # noqa: E402

SIZES = ((640, 360), (1280, 720), (1920, 1080))


def measure(size: tuple[int, int], condition: str, frames: int, seed: int) -> dict[str, float]:
    cfg = SceneConfig(
        seed=seed, condition=condition, camera=CameraConfig(width=size[0], height=size[1])
    )
    scene = Scene(cfg)
    t0 = time.perf_counter()
    scene.render()  # background, noise and rain layers are built once per scene
    setup = time.perf_counter() - t0
    render_t, step_t, wall_t, objects = [], [], [], []
    for _ in range(frames):
        w0, t0 = time.perf_counter(), time.process_time()
        _, truth = scene.render()
        w1, t1 = time.perf_counter(), time.process_time()
        scene.step()
        t2 = time.process_time()
        render_t.append(t1 - t0)
        step_t.append(t2 - t1)
        wall_t.append(w1 - w0)
        objects.append(len(truth.objects))
    r = statistics.median(render_t)
    return {
        "setup_s": setup,
        "render_ms": r * 1e3,
        "p95_ms": sorted(render_t)[int(0.95 * frames)] * 1e3,
        "step_ms": statistics.median(step_t) * 1e3,
        "render_fps": 1 / r,
        "wall_fps": 1 / statistics.median(wall_t),
        "live_fps": frames / (sum(render_t) + sum(step_t)),
        "objects": statistics.mean(objects),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--conditions", default="day,night")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'size':>10} {'cond':>6} {'objs':>5} {'render ms':>9} {'p95 ms':>7} "
        f"{'render fps':>10} {'wall fps':>8} {'step ms':>7} {'live fps':>8} {'setup s':>7}"
    )
    for size in SIZES:
        for cond in a.conditions.split(","):
            m = measure(size, cond, a.frames, a.seed)
            print(
                f"{size[0]:>4}x{size[1]:<5} {cond:>6} {m['objects']:5.1f} "
                f"{m['render_ms']:9.2f} {m['p95_ms']:7.2f} {m['render_fps']:10.1f} "
                f"{m['wall_fps']:8.1f} {m['step_ms']:7.2f} {m['live_fps']:8.1f} "
                f"{m['setup_s']:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
