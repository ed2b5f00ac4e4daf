"""Registering a ring's mapping as pinned (page-locked) host memory for CUDA.

Once registered, `tensor.to("cuda", non_blocking=True)` on a slot view is a DMA by the
copy engine straight from the shared pages, instead of a staged copy through a pinned
bounce buffer. Registration goes through the CUDA runtime that torch already loaded
(torch.cuda.cudart()), so there is no extra dependency. Without torch or a CUDA device
every function here is a no-op that says so.

cudaHostRegister pins pages through the driver, not mlock(2), so RLIMIT_MEMLOCK (8 MB on
these machines) does not cap it; pinned memory is still unswappable RAM, so readers pin
only when they feed a GPU.
"""

from __future__ import annotations

import importlib
import logging
import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

# cudaHostRegister flags (driver_types.h).
HOST_REGISTER_DEFAULT = 0
HOST_REGISTER_PORTABLE = 1
HOST_REGISTER_READ_ONLY = 8


@dataclass(slots=True)
class PinnedRegion:
    address: int
    size: int
    cudart: Any


def load_torch() -> Any:
    """Import torch on first use only: it takes a second or more, and writers or metadata
    readers never need it."""
    return importlib.import_module("torch")


def cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device (imports torch lazily)."""
    try:
        torch = load_torch()
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver install means "no CUDA" here
        return False


def _err_code(err: Any) -> int:
    return int(getattr(err, "value", err))


def pin(buffer: mmap.mmap, *, read_only: bool) -> PinnedRegion | None:
    """Register the whole mapping with CUDA; None (and a log line) when unavailable."""
    if not cuda_available():
        return None
    torch = load_torch()

    addr = int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)
    size = len(buffer)
    cudart = torch.cuda.cudart()
    # Portable: usable from every CUDA context; ReadOnly: readers map the slots PROT_READ
    # and the driver refuses to pin such pages for writing.
    flags = HOST_REGISTER_PORTABLE | (HOST_REGISTER_READ_ONLY if read_only else 0)
    err = _err_code(cudart.cudaHostRegister(addr, size, flags))
    if err != 0:
        _log.warning("cudaHostRegister failed (error %d); frames copy unpinned", err)
        return None
    return PinnedRegion(addr, size, cudart)


def unpin(region: object) -> None:
    if not isinstance(region, PinnedRegion):
        return
    torch = load_torch()

    # An asynchronous copy may still read the pages: finish it before unregistering.
    torch.cuda.synchronize()
    err = _err_code(region.cudart.cudaHostUnregister(region.address))
    if err != 0:
        _log.warning("cudaHostUnregister failed (error %d)", err)


def is_pinned(array: np.ndarray) -> bool:
    """Whether CUDA considers the memory behind `array` page-locked (False without CUDA)."""
    if not cuda_available():
        return False
    torch = load_torch()

    return bool(torch.from_numpy(array).is_pinned())
