"""Process entry points for the ring tests (importable, so multiprocessing 'spawn' works).

Frames carry a self-checking pattern: the first 8 bytes are the sequence number, every
other byte is sequence % 251. A torn frame (bytes from two writes) fails the check.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import numpy as np

from its_camera_ai import shm

WIDTH, HEIGHT = 64, 48
FRAME_BYTES = shm.frame_bytes(shm.PixelFormat.RGB24, WIDTH, HEIGHT)
SPAWN = mp.get_context("spawn")


def pattern(seq: int, shape: tuple[int, ...] = (HEIGHT, WIDTH, 3)) -> np.ndarray:
    a = np.full(shape, seq % 251, dtype=np.uint8)
    a.reshape(-1)[:8] = np.frombuffer(seq.to_bytes(8, "little"), dtype=np.uint8)
    return a


def check_pattern(arr: np.ndarray) -> tuple[bool, int]:
    """(pattern consistent, sequence written in the data)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    seq = int.from_bytes(flat[:8].tobytes(), "little")
    return bool(np.all(flat[8:] == seq % 251)), seq


def fill(slot: shm.WriteSlot, seq: int, upto: float = 1.0) -> None:
    flat = slot.array.reshape(-1)
    n = int(flat.size * upto)
    flat[:n] = seq % 251
    flat[:8] = np.frombuffer(seq.to_bytes(8, "little"), dtype=np.uint8)


# --- writers --------------------------------------------------------------------------


def writer_paced(
    name: str,
    frames: int,
    interval: float,
    slots: int,
    ready: Any,
    go: Any,
    close: bool = True,
    linger: float = 0.2,
) -> None:
    """Create the ring, wait for `go`, write `frames` pattern frames `interval` apart."""
    w = shm.create(name, slots=slots, max_frame_bytes=FRAME_BYTES)
    ready.set()
    go.wait(60)
    for _ in range(frames):
        w.write(pattern(w.last_sequence + 1), WIDTH, HEIGHT)
        time.sleep(interval)
    time.sleep(linger)
    if close:
        w.close()
    else:
        os._exit(0)  # die without closing: the ring stays, its writer dead


def writer_killed_mid_write(name: str, frames: int, slots: int, ready: Any) -> None:
    """Write `frames` frames, then half-fill the next slot and wait to be SIGKILLed."""
    w = shm.create(name, slots=slots, max_frame_bytes=FRAME_BYTES)
    for _ in range(frames):
        w.write(pattern(w.last_sequence + 1), WIDTH, HEIGHT)
    slot = w.reserve(WIDTH, HEIGHT)
    fill(slot, slot.sequence, upto=0.5)
    ready.set()
    time.sleep(60)


def writer_forever(name: str, slots: int, ready: Any, interval: float = 0.0) -> None:
    """Create or reclaim the ring and write pattern frames until killed."""
    w = shm.create(name, slots=slots, max_frame_bytes=FRAME_BYTES)
    ready.set()
    while True:
        with w.reserve(WIDTH, HEIGHT) as slot:
            fill(slot, slot.sequence)
        if interval:
            time.sleep(interval)


def create_and_exit(name: str, slots: int = 4) -> None:
    """Leave a ring behind whose writer died (used by the cleanup-tool tests)."""
    shm.create(name, slots=slots, max_frame_bytes=FRAME_BYTES)
    os._exit(0)


# --- readers --------------------------------------------------------------------------


def reader_collect(name: str, frames: int, timeout: float, ready: Any, out: Any) -> None:
    """Attach, read_next until `frames` frames or `timeout`, report what was seen."""
    r = shm.attach(name, timeout=5.0, skip_existing=True)
    ready.set()
    seqs, bad = [], 0
    deadline = time.monotonic() + timeout
    while len(seqs) < frames and time.monotonic() < deadline:
        try:
            f = r.read_next(timeout=0.5)
        except shm.NoWriter:
            break
        if f is None:
            continue
        ok, seq = check_pattern(f.array)
        if not (ok and seq == f.sequence and f.is_valid()):
            bad += 1
        seqs.append(f.sequence)
        del f
    out.put({"seqs": seqs, "bad": bad, "dropped": r.stats.frames_dropped, "pid": os.getpid()})
    r.close()


def stress_reader(name: str, duration: float, mode: str, ready: Any, out: Any) -> None:
    """Read for `duration` s through writer deaths and restarts; every frame that still
    validates after its data was checked must be untorn, and so must every copy."""
    r = shm.attach(name, timeout=10.0, check_interval=0.05)
    ready.set()
    res = dict.fromkeys(
        ("frames", "torn_valid", "torn_detected", "copies", "bad_copy", "copy_torn"), 0
    )
    res.update(no_writer=0, nonmono=0)
    last = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            f = r.read_next(timeout=0.1) if mode == "next" else r.read_latest(timeout=0.1)
        except shm.NoWriter:
            res["no_writer"] += 1
            time.sleep(0.005)
            continue
        if f is None:
            continue
        if f.sequence <= last:
            res["nonmono"] += 1
        last = f.sequence
        ok, seq = check_pattern(f.array)
        if f.is_valid():
            res["frames"] += 1
            if not ok or seq != f.sequence:
                res["torn_valid"] += 1
        else:
            res["torn_detected"] += 1
        try:
            c = f.copy()
        except shm.FrameOverwritten:
            res["copy_torn"] += 1
        else:
            res["copies"] += 1
            ok, seq = check_pattern(c)
            if not ok or seq != f.sequence:
                res["bad_copy"] += 1
        del f
    res["restarts"] = r.stats.writer_restarts
    res["dropped"] = r.stats.frames_dropped
    res["overruns"] = r.stats.overruns
    res["torn_reads"] = r.stats.torn_reads
    out.put(res)
    r.close()


def idle_waiter(name: str, seconds: float, out: Any) -> None:
    """Block in read_latest for `seconds` with nothing written; report CPU time used."""
    r = shm.attach(name, timeout=5.0, skip_existing=True)
    t0, c0 = time.monotonic(), time.process_time()
    frame = r.read_latest(timeout=seconds)
    out.put(
        {"frame": frame is not None, "wall": time.monotonic() - t0, "cpu": time.process_time() - c0}
    )
    r.close()


def start(target: Any, *args: Any) -> Any:
    p = SPAWN.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def kill(p: Any) -> None:
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join(10)
