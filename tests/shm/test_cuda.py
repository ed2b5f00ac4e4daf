"""Pinned-memory registration and DMA to the GPU (runs only where CUDA is available)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from its_camera_ai import shm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not shm.cuda_available(), reason="needs a CUDA device"),
]

W, H = 1920, 1080
NBYTES = shm.frame_bytes(shm.PixelFormat.RGB24, W, H)


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_reader_pins_the_ring_and_copies_by_dma(ring_name: str) -> None:
    with (
        shm.create(ring_name, slots=4, max_frame_bytes=NBYTES) as w,
        shm.attach(ring_name, pin_memory=True) as r,
    ):
        assert r.pinned
        src = _frame(1)
        w.write(src, W, H)
        f = r.read_latest(timeout=1)
        assert f is not None
        t = f.tensor()
        assert t.is_pinned()
        d = f.to_device("cuda")
        assert d.is_cuda
        assert torch.equal(d.cpu(), torch.from_numpy(src))
        d2 = t.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(d2.cpu(), torch.from_numpy(src))
        f.check()
        del f, t


def test_writer_pins_and_takes_cuda_tensors(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=NBYTES, pin_memory=True) as w:
        assert w.pinned
        src = torch.randint(0, 256, (H, W, 3), dtype=torch.uint8, device="cuda")
        w.write(src, W, H)
        with shm.attach(ring_name) as r:
            f = r.read_latest(timeout=1)
            assert f is not None
            assert torch.equal(f.copy_tensor(), src.cpu())
            del f


def test_pinned_transfer_beats_pageable(ring_name: str) -> None:
    """Informational bandwidth figures; asserts only that pinning is not a slowdown."""
    with (
        shm.create(ring_name, slots=2, max_frame_bytes=NBYTES) as w,
        shm.attach(ring_name, pin_memory=True) as r,
    ):
        w.write(_frame(2), W, H)
        f = r.read_latest(timeout=1)
        assert f is not None
        pinned = f.tensor()
        pageable = torch.from_numpy(_frame(2))

        def best(src: torch.Tensor) -> float:
            times = []
            for _ in range(20):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                src.to("cuda", non_blocking=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            return min(times)

        tp, tq = best(pinned), best(pageable)
        print(
            f"1080p RGB H2D: pinned {tp * 1e6:.0f} us ({NBYTES / tp / 1e9:.1f} GB/s), "
            f"pageable {tq * 1e6:.0f} us ({NBYTES / tq / 1e9:.1f} GB/s)"
        )
        assert tp <= tq * 1.2
        del f, pinned
