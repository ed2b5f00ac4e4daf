"""Frame handoff between two processes: the shm ring against the usual alternatives.

    .venv/bin/python benchmarks/shm_handoff.py            # full run, about three minutes
    .venv/bin/python benchmarks/shm_handoff.py --quick    # fewer frames, smoke test

For 360p, 1080p and 4K RGB24 frames, paced like a camera: frames are handed over on a
fixed 10 ms grid (100 fps), one in flight at a time (the next goes at the next grid point
after the consumer acknowledged the last). So the consumer is asleep when each frame
comes, for the same time whatever the frame size, as an inference reader is between camera
frames. Transports:

- floor:      no frame at all: a bare POSIX semaphore post waking the sleeping process
              (the producer still copies a frame of the size between posts). What this
              machine charges for waking a process; nothing built on a wake-up beats it.
- ring:       RingWriter in this process (reserve, copy the frame in, commit on the grid);
              a spawned reader blocked in read_next() wakes and takes frame.tensor().
              Handoff = reader holding the tensor view minus the commit timestamp the
              writer stored in the slot. The write (one copy from the "decoder's buffer"
              into the slot, plus the commit) is timed separately.
- ring-spin:  the same with attach(spin=300 us): the reader still sleeps between frames,
              but wakes before the predicted next commit and polls around it.
- ring-pinned: ring-spin with the reader on a core of its own (the last CPU) and the
              producer on another (CPU 0), as a spinning reader should be deployed; the
              scheduler otherwise puts the two on one core now and then.
- grpc:       grpc.aio bidirectional stream on loopback, frames as raw bytes through a
              generic handler (no protos); the server wraps the bytes in a tensor. Handoff
              starts before the bytes message is built (that copy belongs to the transport).
- mpqueue:    multiprocessing.Queue carrying (timestamp, ndarray): pickled by the feeder
              thread, unpickled by the consumer, wrapped with torch.from_numpy.
- frigate:    a new named shared-memory segment per frame and a Queue of names (the design
              Frigate uses): the producer creates the segment and copies the frame in (its
              "write"), the consumer opens it by name and views it as a tensor.

All timestamps are CLOCK_MONOTONIC (time.monotonic_ns), which is system-wide, so the two
processes' clocks agree. Last, a sustained run: the writer writes 1080p frames as fast as it
can for a few seconds while one reader takes every frame it can as a tensor view.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np
import posix_ipc
import torch

from its_camera_ai import shm

SIZES = {"360p": (640, 360), "1080p": (1920, 1080), "4K": (3840, 2160)}
SPAWN = mp.get_context("spawn")
PERIOD_S = 0.010
SPIN_S = 300e-6
GRPC_METHOD = "/bench.Frames/Stream"
GRPC_OPTS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def _quiet_torch() -> Any:
    warnings.filterwarnings("ignore", message=".*not writable.*")
    torch.set_num_threads(1)
    return torch


def _frame(w: int, h: int) -> np.ndarray:
    return np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _stats(ns: list[int]) -> tuple[float, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _finish(p: Any) -> None:
    p.join(30)
    if p.is_alive():
        p.kill()
        p.join(5)


def _cpu_sample() -> tuple[int, int]:
    """(total, idle) jiffies of the whole machine: the busy share during a run says how
    much others (and we) loaded the 2 shared cores, which is what the tails depend on."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4]


def _busy(a: tuple[int, int], b: tuple[int, int]) -> float:
    total = b[0] - a[0]
    return 100.0 * (1 - (b[1] - a[1]) / total) if total else 0.0


class Grid:
    """Release times on a fixed grid; a late frame goes at once and the grid restarts."""

    def __init__(self, period: float = PERIOD_S) -> None:
        self.period = period
        self.next = time.monotonic() + period

    def wait(self) -> None:
        now = time.monotonic()
        if now > self.next:
            self.next = now
        else:
            if self.next - now > 0.0005:
                time.sleep(self.next - now - 0.0004)
            while time.monotonic() < self.next:  # the last few hundred us: exact
                pass
        self.next += self.period

    async def await_(self) -> None:
        now = time.monotonic()
        if now > self.next:
            self.next = now
        elif self.next - now > 0.0005:
            await asyncio.sleep(self.next - now - 0.0004)
        while time.monotonic() < self.next:
            pass
        self.next += self.period


# --- floor ------------------------------------------------------------------------------


def floor_consumer(frames: int, ready: Any, ack: Any, out: Any) -> None:
    sem = posix_ipc.Semaphore(f"/bench-floor-{os.getppid()}")
    stamp = shared_memory.SharedMemory(name=f"bench-floor-{os.getppid()}")
    sent = np.ndarray((1,), np.int64, stamp.buf)
    ready.set()
    lat = []
    for _ in range(frames):
        sem.acquire(10)
        lat.append(time.monotonic_ns() - int(sent[0]))
        ack.release()
    del sent
    stamp.close()
    out.put(lat)


def bench_floor(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    src = _frame(w, h)
    dst = np.empty_like(src)
    sem = posix_ipc.Semaphore(f"/bench-floor-{os.getpid()}", posix_ipc.O_CREX, 0o600, 0)
    stamp = shared_memory.SharedMemory(name=f"bench-floor-{os.getpid()}", create=True, size=8)
    sent = np.ndarray((1,), np.int64, stamp.buf)
    ready, ack, out = SPAWN.Event(), SPAWN.Semaphore(0), SPAWN.Queue()
    p = SPAWN.Process(target=floor_consumer, daemon=True, args=(frames + warmup, ready, ack, out))
    p.start()
    try:
        assert ready.wait(60)
        grid = Grid()
        for _ in range(frames + warmup):
            np.copyto(dst, src)
            grid.wait()
            sent[0] = time.monotonic_ns()
            sem.release()
            assert ack.acquire(timeout=10)
        lat = out.get(timeout=60)
    finally:
        _finish(p)
        del sent
        stamp.close()
        stamp.unlink()
        sem.unlink()
    return {"handoff": _stats(lat[warmup:])}


# --- ring -------------------------------------------------------------------------------


def ring_consumer(
    name: str, frames: int, spin: float, cpu: int | None, ready: Any, ack: Any, out: Any
) -> None:
    _quiet_torch()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    r = shm.attach(name, timeout=10, spin=spin)
    ready.set()
    lat = []
    for _ in range(frames):
        f = r.read_next(timeout=10)
        assert f is not None
        t = f.tensor()
        now = time.monotonic_ns()
        lat.append(now - f.commit_ns)
        assert t.shape[0] == f.height
        del t, f
        ack.release()
    out.put((lat, r.stats.frames_dropped))
    r.close()


def bench_ring(
    w: int, h: int, frames: int, warmup: int, spin: float = 0.0, pinned: bool = False
) -> dict[str, Any]:
    name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    src = _frame(w, h)
    ready, ack, out = SPAWN.Event(), SPAWN.Semaphore(0), SPAWN.Queue()
    writer = shm.create(name, slots=8, max_frame_bytes=src.nbytes)
    cpus = sorted(os.sched_getaffinity(0))
    reader_cpu = cpus[-1] if pinned and len(cpus) > 1 else None
    p = SPAWN.Process(
        target=ring_consumer,
        daemon=True,
        args=(name, frames + warmup, spin, reader_cpu, ready, ack, out),
    )
    p.start()
    if reader_cpu is not None:
        os.sched_setaffinity(0, {cpus[0]})
    try:
        assert ready.wait(60)
        grid = Grid()
        write_ns = []
        for i in range(frames + warmup):
            t0 = time.monotonic_ns()
            slot = writer.reserve(w, h)
            np.copyto(slot.array, src)
            t1 = time.monotonic_ns()
            grid.wait()
            t2 = time.monotonic_ns()
            slot.commit()
            t3 = time.monotonic_ns()
            if i >= warmup:
                write_ns.append(t1 - t0 + t3 - t2)
            assert ack.acquire(timeout=10)
        lat, dropped = out.get(timeout=60)
    finally:
        os.sched_setaffinity(0, cpus)
        _finish(p)
        writer.close()
    assert dropped == 0
    return {"handoff": _stats(lat[warmup:]), "write": _stats(write_ns)}


def bench_ring_spin(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    return bench_ring(w, h, frames, warmup, spin=SPIN_S)


def bench_ring_pinned(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    return bench_ring(w, h, frames, warmup, spin=SPIN_S, pinned=True)


def sustained_consumer(name: str, seconds: float, ready: Any, out: Any) -> None:
    _quiet_torch()
    r = shm.attach(name, timeout=10, skip_existing=True)
    ready.set()
    n, lat = 0, []
    end = time.monotonic() + seconds + 2.0
    while time.monotonic() < end:
        try:
            f = r.read_next(timeout=0.5)
        except shm.NoWriter:
            break
        if f is None:
            continue
        t = f.tensor()
        lat.append(time.monotonic_ns() - f.commit_ns)
        n += 1
        del t, f
    out.put((n, r.stats.frames_dropped, r.stats.overruns, lat))
    r.close()


def bench_sustained(seconds: float) -> dict[str, Any]:
    w, h = SIZES["1080p"]
    src = _frame(w, h)
    name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ready, out = SPAWN.Event(), SPAWN.Queue()
    writer = shm.create(name, slots=8, max_frame_bytes=src.nbytes)
    p = SPAWN.Process(target=sustained_consumer, daemon=True, args=(name, seconds, ready, out))
    p.start()
    try:
        assert ready.wait(60)
        written = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            writer.write(src, w, h)
            written += 1
        elapsed = time.monotonic() - t0
        writer.close(unlink=False)  # the reader sees RingClosed and stops
        n, dropped, overruns, lat = out.get(timeout=60)
    finally:
        _finish(p)
        shm.clean_rings(match=name)
    return {
        "written_fps": written / elapsed,
        "read_fps": n / elapsed,
        "dropped": dropped,
        "overruns": overruns,
        "handoff": _stats(lat) if lat else (0.0, 0.0),
    }


# --- gRPC -------------------------------------------------------------------------------


def grpc_consumer(port: int, w: int, h: int, frames: int, ready: Any, out: Any) -> None:
    _quiet_torch()
    lat: list[int] = []

    async def serve() -> None:
        finished = asyncio.Event()

        async def stream(requests: AsyncIterator[bytes], _ctx: Any) -> AsyncIterator[bytes]:
            async for msg in requests:
                sent = int.from_bytes(msg[:8], "little")
                t = torch.frombuffer(msg, dtype=torch.uint8, offset=8).view(h, w, 3)
                lat.append(time.monotonic_ns() - sent)
                del t
                if len(lat) >= frames:
                    # Report before the last ack: the client may hang up right after it.
                    out.put(lat)
                    finished.set()
                yield b""

        server = grpc.aio.server(options=GRPC_OPTS)
        handler = grpc.method_handlers_generic_handler(
            "bench.Frames", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await finished.wait()
        await server.stop(1)

    asyncio.run(serve())


def bench_grpc(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    payload = _frame(w, h).tobytes()
    ready, out = SPAWN.Event(), SPAWN.Queue()
    p = SPAWN.Process(
        target=grpc_consumer, daemon=True, args=(port, w, h, frames + warmup, ready, out)
    )
    p.start()

    async def client() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTS) as ch:
            call = ch.stream_stream(GRPC_METHOD)()
            grid = Grid()
            for _ in range(frames + warmup):
                await grid.await_()
                # The bytes message is built inside the timed span: with a bytes
                # transport that copy is part of handing the frame over.
                msg = time.monotonic_ns().to_bytes(8, "little") + payload
                await call.write(msg)
                await call.read()
            await call.done_writing()

    try:
        assert ready.wait(60)
        asyncio.run(client())
        lat = out.get(timeout=120)
    finally:
        _finish(p)
    return {"handoff": _stats(lat[warmup:])}


# --- multiprocessing.Queue ----------------------------------------------------------------


def queue_consumer(frames: int, q: Any, ack: Any, out: Any) -> None:
    _quiet_torch()
    lat = []
    for _ in range(frames):
        sent, arr = q.get()
        t = torch.from_numpy(arr)
        lat.append(time.monotonic_ns() - sent)
        del t, arr
        ack.release()
    out.put(lat)


def bench_queue(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    src = _frame(w, h)
    q, ack, out = SPAWN.Queue(), SPAWN.Semaphore(0), SPAWN.Queue()
    p = SPAWN.Process(target=queue_consumer, daemon=True, args=(frames + warmup, q, ack, out))
    p.start()
    try:
        grid = Grid()
        for _ in range(frames + warmup):
            grid.wait()
            q.put((time.monotonic_ns(), src))
            assert ack.acquire(timeout=60)
        lat = out.get(timeout=60)
    finally:
        _finish(p)
    return {"handoff": _stats(lat[warmup:])}


# --- one named segment per frame + a queue of names (Frigate) ------------------------------


def frigate_consumer(w: int, h: int, frames: int, q: Any, ack: Any, out: Any) -> None:
    _quiet_torch()
    lat = []
    for _ in range(frames):
        seg_name, sent = q.get()
        # (Spawned children share the producer's resource tracker, which already knows
        # the segment: attaching registers nothing new, and the producer unlinks it.)
        seg = shared_memory.SharedMemory(name=seg_name)
        arr = np.ndarray((h, w, 3), dtype=np.uint8, buffer=seg.buf)
        t = torch.from_numpy(arr)
        lat.append(time.monotonic_ns() - sent)
        del t, arr
        seg.close()
        ack.release()
    out.put(lat)


def bench_frigate(w: int, h: int, frames: int, warmup: int) -> dict[str, Any]:
    src = _frame(w, h)
    q, ack, out = SPAWN.Queue(), SPAWN.Semaphore(0), SPAWN.Queue()
    p = SPAWN.Process(
        target=frigate_consumer, daemon=True, args=(w, h, frames + warmup, q, ack, out)
    )
    p.start()
    write_ns = []
    try:
        grid = Grid()
        for i in range(frames + warmup):
            t0 = time.monotonic_ns()
            seg = shared_memory.SharedMemory(
                name=f"bench-{os.getpid()}-{i}", create=True, size=src.nbytes
            )
            np.ndarray(src.shape, np.uint8, buffer=seg.buf)[...] = src
            t1 = time.monotonic_ns()
            if i >= warmup:
                write_ns.append(t1 - t0)
            grid.wait()
            q.put((seg.name, time.monotonic_ns()))
            assert ack.acquire(timeout=60)
            seg.close()
            seg.unlink()
        lat = out.get(timeout=60)
    finally:
        _finish(p)
    return {"handoff": _stats(lat[warmup:]), "write": _stats(write_ns)}


# --- driver -----------------------------------------------------------------------------


def _fmt(v: tuple[float, float] | None) -> str:
    if v is None:
        return "—"
    return " / ".join(f"{x:,.0f}" if x >= 100 else f"{x:.1f}" for x in v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few frames: a smoke test")
    ap.add_argument("--sustained-seconds", type=float, default=4.0)
    ap.add_argument(
        "--only", default="floor,ring,ring-spin,ring-pinned,grpc,mpqueue,frigate,sustained"
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    scale = 0.1 if args.quick else 1.0
    counts: dict[str, dict[str, int]] = {
        "floor": {"360p": 600, "1080p": 600, "4K": 600},
        "ring": {"360p": 800, "1080p": 800, "4K": 800},
        "ring-spin": {"360p": 800, "1080p": 800, "4K": 800},
        "ring-pinned": {"360p": 800, "1080p": 800, "4K": 800},
        "grpc": {"360p": 300, "1080p": 200, "4K": 60},
        "mpqueue": {"360p": 300, "1080p": 200, "4K": 60},
        "frigate": {"360p": 300, "1080p": 200, "4K": 60},
    }
    benches: dict[str, Callable[..., dict[str, Any]]] = {
        "floor": bench_floor,
        "ring": bench_ring,
        "ring-spin": bench_ring_spin,
        "ring-pinned": bench_ring_pinned,
        "grpc": bench_grpc,
        "mpqueue": bench_queue,
        "frigate": bench_frigate,
    }
    results: dict[tuple[str, str], dict[str, Any]] = {}
    t_start = time.monotonic()
    for transport, fn in benches.items():
        if transport not in only:
            continue
        for size, (w, h) in SIZES.items():
            n = max(int(counts[transport][size] * scale), 20)
            before = _cpu_sample()
            res = fn(w, h, n, warmup=max(n // 10, 20))
            res["busy"] = _busy(before, _cpu_sample())
            results[(transport, size)] = res
            print(
                f"{transport:9} {size:6} n={n:4} handoff p50/p99 us {_fmt(res['handoff'])}"
                f"  write {_fmt(res.get('write'))}  machine busy {res['busy']:.0f}%",
                flush=True,
            )
    sustained = None
    if "sustained" in only:
        sustained = bench_sustained(1.0 if args.quick else args.sustained_seconds)
        print(f"sustained 1080p: {sustained}", flush=True)

    print(f"\ntotal {time.monotonic() - t_start:.0f} s on {os.cpu_count()} CPUs\n")
    print(
        "| transport | size | handoff p50 (µs) | handoff p99 (µs) | write p50 / p99 (µs) "
        "| CPU busy |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (transport, size), res in results.items():
        p50, p99 = res["handoff"]
        print(
            f"| {transport} | {size} | {p50:,.1f} | {p99:,.1f} | {_fmt(res.get('write'))} "
            f"| {res['busy']:.0f}% |"
        )
    for ring in ("ring", "ring-spin", "ring-pinned"):
        if (ring, "1080p") in results and ("grpc", "1080p") in results:
            g, r = results[("grpc", "1080p")]["handoff"], results[(ring, "1080p")]["handoff"]
            print(f"\ngRPC / {ring} at 1080p: p50 {g[0] / r[0]:,.0f}x, p99 {g[1] / r[1]:,.0f}x")
    if sustained is not None:
        print(
            f"\nsustained 1080p RGB, one reader: written {sustained['written_fps']:,.0f} fps, "
            f"read {sustained['read_fps']:,.0f} fps, dropped {sustained['dropped']}, "
            f"handoff p50/p99 {_fmt(sustained['handoff'])} µs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
