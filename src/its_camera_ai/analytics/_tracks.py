"""Per-track state beyond the tracker's, and ground-plane kinematics.

Every module that keeps something per track (line sides, zone entry times, incident timers,
position history) registers a column in one ``TrackTable``: a structure of arrays indexed by
slot, so per-frame work is vectorised over the tracks present instead of looping over
Python objects. Slots are recycled lowest-first (deterministic), and the table grows by
doubling.

Speeds come from the ground positions (bottom-centre of the filtered box, through the
homography) of the last ``speed_window_s``: the velocity is the slope of a least-squares line
through them. That is exact for constant velocity and averages box noise over the window.
Samples are decimated to at most ``_SAMPLES_PER_WINDOW`` per window, so the cost does not
grow with the frame rate.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TrackTable",
    "array_from_json",
    "array_to_json",
    "push_positions",
    "regress_velocity",
    "true_cells",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArr = NDArray[np.intp]

HISTORY = 32
_SAMPLES_PER_WINDOW = 20
_OCCLUDED_SHRINK, _OCCLUDED_WITHIN_S = 0.8, 0.5


class TrackTable:
    """Slots for confirmed tracks; ``table[name]`` is a column (capacity, *shape)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._specs: dict[str, tuple[tuple[int, ...], Any, Any]] = {}
        self._cols: dict[str, NDArray[Any]] = {}
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = list(range(capacity))
        self.add("id", (), np.int64, 0)
        self.add("h_t", (HISTORY,), np.float64, np.nan)
        self.add("h_x", (HISTORY,), np.float64, np.nan)
        self.add("h_y", (HISTORY,), np.float64, np.nan)
        self.add("h_h", (HISTORY,), np.float64, np.nan)  # box height, pixels
        self.add("h_head", (), np.int64, 0)

    def add(self, name: str, shape: tuple[int, ...], dtype: Any, fill: Any) -> None:
        self._specs[name] = (shape, dtype, fill)
        self._cols[name] = np.full((self.capacity, *shape), fill, dtype=dtype)

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self._cols[name]

    def __len__(self) -> int:
        return len(self._slot_of)

    def _grow(self) -> None:
        old = self.capacity
        self.capacity *= 2
        for name, (shape, dtype, fill) in self._specs.items():
            extra = np.full((old, *shape), fill, dtype=dtype)
            self._cols[name] = np.concatenate([self._cols[name], extra])
        for s in range(old, self.capacity):
            heapq.heappush(self._free, s)

    def slots(self, ids: I64) -> tuple[IntArr, NDArray[np.bool_]]:
        """Slots of the given track ids, allocating for ids not seen before (flagged new)."""
        out = np.empty(len(ids), dtype=np.intp)
        new = np.zeros(len(ids), dtype=np.bool_)
        for i, tid in enumerate(ids.tolist()):
            s = self._slot_of.get(tid)
            if s is None:
                if not self._free:
                    self._grow()
                s = heapq.heappop(self._free)
                self._slot_of[tid] = s
                self._cols["id"][s] = tid
                new[i] = True
            out[i] = s
        return out, new

    def lookup(self, ids: I64) -> IntArr:
        """Slots of known ids, -1 for unknown ones."""
        return np.array([self._slot_of.get(t, -1) for t in ids.tolist()], dtype=np.intp)

    def live_slots(self) -> IntArr:
        return np.array(sorted(self._slot_of.values()), dtype=np.intp)

    def release(self, slots: IntArr) -> None:
        for s in slots.tolist():
            tid = int(self._cols["id"][s])
            self._slot_of.pop(tid, None)
            for name, (_, _, fill) in self._specs.items():
                self._cols[name][s] = fill
            heapq.heappush(self._free, s)

    # -- persistence: only live rows are stored ------------------------------------------------

    def state(self) -> dict[str, Any]:
        live = self.live_slots()
        return {
            "capacity": self.capacity,
            "slots": live.tolist(),
            "cols": {name: array_to_json(col[live]) for name, col in self._cols.items()},
        }

    def restore(self, s: dict[str, Any]) -> None:
        """Load a state into a table whose columns are already registered."""
        while self.capacity < int(s["capacity"]):
            self._grow()
        live = np.asarray(s["slots"], dtype=np.intp)
        for name, col in self._cols.items():
            shape, dtype, fill = self._specs[name]
            col[:] = fill
            # A column newer than the state (saved by an older version) starts empty.
            if len(live) and name in s["cols"]:
                col[live] = array_from_json(s["cols"][name], dtype).reshape((len(live), *shape))
        self._slot_of = {int(self._cols["id"][sl]): int(sl) for sl in live.tolist()}
        taken = set(self._slot_of.values())
        self._free = [sl for sl in range(self.capacity) if sl not in taken]
        heapq.heapify(self._free)


def true_cells(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(row, column) of the True cells of a 2-D mask, row by row: ``np.argwhere`` as Python
    ints, at a fraction of its cost on the small per-frame masks."""
    rows, cols = mask.nonzero()
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def array_to_json(a: NDArray[Any]) -> Any:
    # JSON has no NaN in its standard; None stands for it (and is decoded back).
    if a.dtype.kind == "f":
        obj = a.astype(object)
        obj[np.isnan(a)] = None
        return obj.tolist()
    return a.tolist()


def array_from_json(v: Any, dtype: Any) -> NDArray[Any]:
    if np.dtype(dtype).kind == "f":
        # None -> NaN through an object array (float(None) would raise).
        return np.asarray(v, dtype=object).astype(np.float64)
    return np.asarray(v, dtype=dtype)


def push_positions(
    table: TrackTable, slots: IntArr, t: float, xy: F64, heights: F64, window_s: float
) -> NDArray[np.bool_]:
    """Append (t, x, y) samples to the slots' rings, at most one per window/20 per track.

    A box much shorter than the track's previous sample (a fraction of a second ago) has its
    bottom hidden by something in front: its bottom-centre is not on the ground under the
    vehicle, so it is left out rather than bend the speed. Perspective alone never shrinks a
    box that fast. Returns which slots took a sample (only those need a new velocity)."""
    ht, hx, hy, head = table["h_t"], table["h_x"], table["h_y"], table["h_head"]
    hh = table["h_h"]
    prev = (head[slots] - 1) % HISTORY
    last_t, last_h = ht[slots, prev], hh[slots, prev]
    take = ~(t - last_t < window_s / _SAMPLES_PER_WINDOW)  # NaN (empty ring) -> take
    take &= np.isfinite(xy).all(axis=1)
    take &= ~((heights < _OCCLUDED_SHRINK * last_h) & (t - last_t < _OCCLUDED_WITHIN_S))
    s = slots[take]
    h = head[s]
    ht[s, h] = t
    hx[s, h] = xy[take, 0]
    hy[s, h] = xy[take, 1]
    hh[s, h] = heights[take]
    head[s] = (h + 1) % HISTORY
    took: NDArray[np.bool_] = take
    return took


def regress_velocity(
    table: TrackTable,
    slots: IntArr,
    t: float,
    window_s: float,
    min_span_s: float,
    min_samples: int,
) -> F64:
    """(S, 2) least-squares velocity over the window, NaN where there is too little data."""
    ht = table["h_t"][slots]
    valid = ht >= (t - window_s - 1e-9)
    n = valid.sum(axis=1)
    tv = np.where(valid, ht, 0.0)
    nz = np.maximum(n, 1)
    tm = tv.sum(axis=1) / nz
    dt = np.where(valid, ht - tm[:, None], 0.0)
    sxx = (dt * dt).sum(axis=1)
    out = np.full((len(slots), 2), np.nan)
    span = np.where(valid, ht, -np.inf).max(axis=1) - np.where(valid, ht, np.inf).min(axis=1)
    ok = (n >= min_samples) & (span >= min_span_s) & (sxx > 0)
    # x and y together, as (S, 2, HISTORY): each sum still runs over one track's samples.
    valid2, dt2 = valid[:, None, :], dt[:, None, :]
    v = np.where(valid2, np.stack([table["h_x"][slots], table["h_y"][slots]], axis=1), 0.0)
    vm = v.sum(axis=2) / nz[:, None]
    sxy = (dt2 * np.where(valid2, v - vm[:, :, None], 0.0)).sum(axis=2)
    np.divide(sxy, sxx[:, None], out=out, where=ok[:, None])
    return out
