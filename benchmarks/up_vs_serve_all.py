"""The frame pipeline through `up` (a process per service) against `serve all` (one process).

    .venv/bin/python benchmarks/up_vs_serve_all.py                      # ~12 min
    .venv/bin/python benchmarks/up_vs_serve_all.py --seconds 10 --warmup 5 --rounds 1  # smoke
    .venv/bin/python benchmarks/up_vs_serve_all.py --modes serve-all \\
        --capacity 'sim://road?width=1280&height=720&fps=30' --steps 1,2,3,4   # capacity

The same workload runs through ``its-camera-ai up --no-view --no-sample`` (decoder,
analytics, inference and query as four processes under a supervisor: the frame ring
crosses processes) and through ``its-camera-ai serve all`` (the four in one process),
alternating up / serve all / up / serve all (``--rounds``) so that drift in the machine's
load hits both. Each system runs on a fresh database next to ``--dsn`` (dropped at the
end) and free ports; every configuration (``--config COUNT:SOURCE``, simulated cameras
added through the camera API) is warmed up, then measured for ``--seconds``.

Per configuration: frames decoded (decoder), inferred (inference) and analysed (accepted
by analytics) per second; capture -> detections p50/p99, from the inference process's
``latency_capture_to_detections_seconds`` histogram as ``its-camera-ai loadtest pipeline``
computes it (its ``PipelineLoad``/``PipelineWindow``); frames skipped by inference and
dropped by the decoder, by reason; CPU of the process tree (cores, from /proc) and its RSS
and PSS (PSS shares the ring's pages between the processes that map them; RSS counts them
in each). The shared PostgreSQL server is not counted in either.

``--capacity SOURCE``: instead, per mode, add cameras of SOURCE step by step (``--steps``)
to one running system until p99 capture -> detections exceeds 100 ms or inference sheds
more than 5 % of the frames offered to it (the step that fails is reported too;
``--keep-going`` measures every step, for the curve past capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import _harness as harness

from its_camera_ai.loadtest import PipelineLoad, PipelineWindow

DEFAULT_CONFIGS = (
    "1:sim://road?width=640&height=360&fps=15",
    "1:sim://road?width=1280&height=720&fps=30",
)
P99_LIMIT_S = 0.100
SHED_LIMIT = 0.05
_STARTUP_S = 25.0  # planned seconds for a system to start (the progress line's ETA)
_UP_STOP_GRACE_S = 60.0  # up stops its four children in turn
_ATTACH_TIMEOUT_S = 120.0  # cameras that inference never reads by then fail their step


@dataclass(frozen=True)
class System:
    """A running system: the camera API to add cameras at, the /metrics to measure from,
    the root of its process tree (``up`` or ``serve all``)."""

    mode: str
    process: asyncio.subprocess.Process
    target: str
    metrics_urls: list[str]
    token: str | None


@dataclass(frozen=True)
class Row:
    """One measured configuration of one system."""

    mode: str
    config: str
    window: PipelineWindow
    decoded_per_s: float  # over the whole measurement (the window is inside it)
    decoder_dropped: float
    cpu_cores: float
    rss_mib: float
    pss_mib: float

    def cells(self) -> list[str]:
        w, s = self.window, self.window.seconds
        analysed = sum(v for k, v in w.analytics_frames.items() if k.startswith("accepted"))
        skipped = {**w.skipped, **({"decoder dropped": self.decoder_dropped}
                                   if self.decoder_dropped else {})}  # fmt: skip
        return [
            self.mode, self.config, f"{self.decoded_per_s:.1f}", f"{w.frames_detected / s:.1f}",
            f"{analysed / s:.1f}", _ms(w.latency_s(0.5)), _ms(w.latency_s(0.99)),
            f"{w.skip_share:.1%} " + ", ".join(f"{k} {v:g}" for k, v in skipped.items()),
            f"{self.cpu_cores:.2f}", f"{self.rss_mib:.0f} / {self.pss_mib:.0f}",
        ]  # fmt: skip

    def passes(self) -> bool:
        p99 = self.window.latency_s(0.99)
        return not math.isnan(p99) and p99 <= P99_LIMIT_S and self.window.skip_share <= SHED_LIMIT


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.0f}"


# -- the process tree: CPU and memory -----------------------------------------------------------


def _tree(root: int) -> list[int]:
    """``root`` and its descendants now (from /proc's parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _memory_mib(pids: Sequence[int]) -> tuple[float, float]:
    """(RSS, PSS) summed over ``pids``, MiB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    kib = int(rest.split()[0])
                    rss, pss = (rss + kib, pss) if name == "Rss" else (rss, pss + kib)
        except OSError:
            continue
    return rss / 1024, pss / 1024


def _counter(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


async def measure(system: System, load: PipelineLoad, config: str, seconds: float) -> Row:
    pids = _tree(system.process.pid)
    before, cpu_before, started = await load.scrape(), harness.cpu_seconds(pids), time.monotonic()
    # PipelineLoad's own progress bar would fight the run's progress line for the terminal.
    with contextlib.redirect_stderr(io.StringIO()):
        window = await load.measure(seconds, config)
    pids = _tree(system.process.pid)
    after, cpu_after = await load.scrape(), harness.cpu_seconds(pids)
    wall_s = time.monotonic() - started
    rss, pss = _memory_mib(pids)
    return Row(
        system.mode, config, window,
        decoded_per_s=(_counter(after, "decoder_frames_decoded_total")
                 - _counter(before, "decoder_frames_decoded_total")) / wall_s,
        decoder_dropped=(_counter(after, "decoder_frames_dropped_total")
                         - _counter(before, "decoder_frames_dropped_total")),
        cpu_cores=(cpu_after - cpu_before) / wall_s, rss_mib=rss, pss_mib=pss,
    )  # fmt: skip


# -- starting the two systems ------------------------------------------------------------------


def _free_block(size: int) -> int:
    """The first of ``size`` consecutive free loopback ports (``up``'s port block)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - size)
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise harness.ServiceFailed("no block of free ports for up")


def _environment(session: harness.Session, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITS_")}
    env.update({
        "ITS_DATABASE__DSN": session.dsn,
        "ITS_LOGGING__LEVEL": "WARNING",
        "ITS_ANALYTICS__SPOOL_DIR": str(session.tmp / name / "spool"),
        "ITS_INFERENCE__ENGINE_CACHE_DIR": str(session.tmp / name / "engines"),
        "ITS_DECODER__RING_PREFIX": f"b{os.getpid() % 100000}{name[-2:]}-",
    })  # fmt: skip
    return env


def _command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "its-camera-ai"), *args]


async def start_serve_all(session: harness.Session, name: str) -> System:
    grpc_port, http_port = harness.free_port(), harness.free_port()
    env = _environment(session, name)
    env.update({"ITS_GRPC__PORT": str(grpc_port), "ITS_HTTP__PORT": str(http_port)})
    proc = await session.procs.spawn(name, _command("serve", "all"), env)
    await harness.wait_http_ready(session.procs, name, proc, http_port)
    url = f"http://127.0.0.1:{http_port}/metrics"
    return System("serve all", proc, f"127.0.0.1:{grpc_port}", [url], None)


async def start_up(session: harness.Session, name: str) -> System:
    data_dir, base = session.tmp / name, _free_block(8)
    argv = _command("up", "--no-view", "--no-sample", "--data-dir", str(data_dir),
                    "--base-port", str(base))  # fmt: skip
    proc = await session.procs.spawn(name, argv, _environment(session, name))
    deadline = time.monotonic() + 120
    while "ready in" not in session.procs.log_tail(name):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise harness.ServiceFailed(f"{name} not ready:\n{session.procs.log_tail(name)}")
        await asyncio.sleep(0.5)
    target, urls, token = _read_up_file(data_dir)
    return System("up", proc, target, urls, token)


def _read_up_file(data_dir: Path) -> tuple[str, list[str], str]:
    """From ``up.json``: the decoder's gRPC target, the /metrics URLs, the token."""
    up = json.loads((data_dir / "up.json").read_text())
    units = ("decoder", "inference", "analytics")
    urls = [f"http://{up['http'][unit]}/metrics" for unit in units]
    return up["grpc"]["decoder"], urls, Path(up["token_file"]).read_text().strip()


async def stop(session: harness.Session, system: System) -> None:
    system.process.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(system.process.wait(), _UP_STOP_GRACE_S)
    await session.procs.stop(system.process)  # SIGKILL if it still runs; forgotten


# -- the run -------------------------------------------------------------------------------------

STARTERS = {"up": start_up, "serve-all": start_serve_all}


def _parse_config(text: str) -> tuple[int, str]:
    count, _, source = text.partition(":")
    if not count.isdigit() or int(count) < 1 or not source:
        raise SystemExit(f"--config: {text!r} is not COUNT:SOURCE (such as 2:sim://road)")
    return int(count), source


def _label(count: int, source: str) -> str:
    query = dict(p.split("=", 1) for p in source.partition("?")[2].split("&") if "=" in p)
    size = f"{query.get('width', '?')}x{query.get('height', '?')}@{query.get('fps', '?')}"
    return f"{count} x {size}"


async def _step(system: System, load: PipelineLoad, label: str, args: argparse.Namespace,
                progress: harness.Progress, count: int) -> Row:  # fmt: skip
    """Cameras up to ``count``, attached and warmed up, then measured."""
    progress.begin(f"{system.mode}: {label}, warm-up")
    await load.add(count - len(load.cameras))
    await load.wait_attached(_ATTACH_TIMEOUT_S)
    await asyncio.sleep(args.warmup)
    progress.begin(f"{system.mode}: {label}, measuring")
    row = await measure(system, load, label, args.seconds)
    if system.process.returncode is not None:
        raise harness.ServiceFailed(f"{system.mode} exited during {label}")
    return row


async def _one_system(session: harness.Session, args: argparse.Namespace, mode: str,
                      name: str, groups: Sequence[tuple[str, list[int]]], notes: list[str]
                      ) -> list[Row]:  # fmt: skip
    """Start ``mode``; per (source, camera counts) group, step through the counts (cameras
    removed after each group); in capacity runs, stop at the first count that fails. A step
    whose cameras inference never reads ends its group, with a line in ``notes``."""
    session.progress.begin(f"{mode}: starting")
    system = await STARTERS[mode](session, name)
    rows: list[Row] = []
    try:
        for source, counts in groups:
            async with PipelineLoad(system.target, system.metrics_urls, source=source,
                                    token=system.token) as load:  # fmt: skip
                for count in counts:
                    label = _label(count, source)
                    try:
                        rows.append(await _step(system, load, label, args, session.progress,
                                                count))  # fmt: skip
                    except TimeoutError as exc:
                        notes.append(f"{system.mode}, {label}: {exc}; the step fails.")
                        break
                    if args.capacity and not args.keep_going and not rows[-1].passes():
                        break
    finally:
        await stop(session, system)
    return rows


async def orchestrate(args: argparse.Namespace) -> str:
    if args.capacity:
        groups = [(args.capacity, args.steps)]
        runs = [(mode, groups) for mode in args.modes]
    else:
        configs = [_parse_config(c) for c in args.config or DEFAULT_CONFIGS]
        groups = [(source, [count]) for count, source in configs]
        runs = [(mode, groups) for _ in range(args.rounds) for mode in args.modes]
    steps = sum(len(counts) for _, counts in groups)
    plan = [s for _ in runs for s in [_STARTUP_S, *[args.warmup + 5, args.seconds] * steps]]
    rows: list[Row] = []
    notes: list[str] = []
    async with harness.open_session(args.dsn, "upvsall", plan,
                                    keep_files=args.keep_logs) as session:  # fmt: skip
        for index, (mode, run_groups) in enumerate(runs):
            name = f"{mode}-{index:02d}"
            rows += await _one_system(session, args, mode, name, run_groups, notes)
        elapsed = time.monotonic() - session.started
    return _report(rows, notes, elapsed, args)


def _report(rows: Sequence[Row], notes: Sequence[str], elapsed_s: float,
            args: argparse.Namespace) -> str:  # fmt: skip
    title = "# Capacity: cameras stepped up" if args.capacity else "# up against serve all"
    lines = harness.report_head(title, Path(__file__), elapsed_s)
    lines.append(
        f"Warm-up {args.warmup:g} s, then {args.seconds:g} s measured per row. Frames per"
        " second decoded / inferred / analysed (accepted by analytics); capture -> detections"
        " in ms; skipped: the share of frames offered to inference that it skipped, then the"
        " counts by reason; CPU in cores (the process tree); memory RSS / PSS in MiB."
    )
    head = ["system", "cameras", "decoded/s", "inferred/s", "analysed/s", "p50", "p99",
            "skipped", "CPU", "RSS / PSS"]  # fmt: skip
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += ["", *notes] if notes else []
    if args.capacity:
        for mode in args.modes:
            steps = [r for r in rows if r.mode == mode.replace("-", " ")]
            carried = list(itertools.takewhile(Row.passes, steps))
            cameras = carried[-1].window.cameras if carried else 0
            lines.append(f"\n{mode}: {cameras} camera(s) with p99 <= 100 ms and <= 5 % shed.")
    return "\n".join(lines) + "\n"


def _counts(text: str) -> list[int]:
    counts = [int(n) for n in text.split(",") if n.strip().isdigit() and int(n) > 0]
    if not counts or counts != sorted(counts):
        raise argparse.ArgumentTypeError(f"{text!r}: ascending camera counts such as 1,2,3")
    return counts


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--config", action="append", help="COUNT:SOURCE (repeat)")
    parser.add_argument("--modes", nargs="+", choices=list(STARTERS), default=list(STARTERS))
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (default 2)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured per row")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--capacity", metavar="SOURCE", help="step cameras of SOURCE instead")
    parser.add_argument(
        "--keep-going", action="store_true", help="capacity: measure every step (a curve)"
    )
    parser.add_argument("--steps", type=_counts, default=[1, 2, 3, 4], help="1,2,3,4")
    args = parser.parse_args()
    harness.run_and_report(orchestrate(args), args.markdown)


if __name__ == "__main__":
    main()
