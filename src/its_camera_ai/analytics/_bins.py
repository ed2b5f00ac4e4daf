"""Time-binned accumulators: 1-min and 15-min (by default) bins, epoch-aligned, by capture time.

Each sample is added to the bin of every configured length, so a 15-min record is, field by
field, the merge (sum; max for maxima; element-wise sum of the speed histogram) of its
fifteen 1-min records: the same value storage would get by rolling them up.

``drain`` hands out full cumulative values, never deltas: a bin touched since the previous
drain comes out as a partial record, a bin whose end the stream has passed comes out once
more as final and is then forgotten. Upserting by key (replace) is therefore idempotent and
replay-safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._records import (
    SPEED_BIN_KMH,
    SPEED_BINS,
    BinKey,
    BinRecord,
    Direction,
    ObjectClass,
    Scope,
)

__all__ = ["BinStore"]

_NS = 1_000_000_000
# Scalar fields of BinRecord, in declaration order (what an accumulator carries).
_SCALARS = tuple(f.name for f in fields(BinRecord) if f.name not in ("key", "final", "speed_hist"))
_MAXED = frozenset({"queue_max_m", "dwell_max_s"})
_IDX = {name: i for i, name in enumerate(_SCALARS)}
# Short aliases for the hot paths.
_VOL, _SPN, _SPS, _SPQ = (
    _IDX[k] for k in ("volume", "speed_count", "speed_sum_kmh", "speed_sq_sum_kmh2")
)
_FR, _OCC, _OBJ, _DFR, _DSUM, _TT, _TD, _QFR, _QSUM, _QMAX = (
    _IDX[k]
    for k in (
        "frames", "occupied_frames", "object_frames", "density_frames", "density_sum_per_km",
        "travel_time_s", "travel_distance_m", "queue_frames", "queue_sum_m", "queue_max_m",
    )
)  # fmt: skip
_INT_FIELDS = frozenset(
    f.name for f in fields(BinRecord) if f.type in ("int", int) and f.name in _IDX
)

# (scope, scope_id, class, direction, bin_seconds, bin_start_ns)
_Key = tuple[str, str, int, int, int, int]


class _Acc:
    __slots__ = ("hist", "v")

    def __init__(self) -> None:
        self.v: list[float] = [0.0] * len(_SCALARS)
        self.hist: NDArray[np.int64] | None = None  # allocated on the first speed


def speed_bin(speed_kmh: float) -> int:
    return min(int(speed_kmh / SPEED_BIN_KMH), SPEED_BINS - 1)


class BinStore:
    def __init__(self, camera: str, bin_seconds: tuple[int, ...]) -> None:
        self.camera = camera
        self.bin_seconds = tuple(sorted(bin_seconds))
        self._acc: dict[_Key, _Acc] = {}
        self._dirty: set[_Key] = set()
        # Bins ending at or before this are final: frames before it are late.
        self.final_before_ns = 0

    def _accs(self, scope: str, sid: str, cls: int, direction: int, t_ns: int) -> list[_Acc]:
        out = []
        for secs in self.bin_seconds:
            width = secs * _NS
            key = (scope, sid, cls, direction, secs, t_ns - t_ns % width)
            acc = self._acc.get(key)
            if acc is None:
                acc = self._acc[key] = _Acc()
            self._dirty.add(key)
            out.append(acc)
        return out

    # -- samples ---------------------------------------------------------------------------

    def count(
        self, scope: Scope, sid: str, cls: int, direction: int, t_ns: int, speed_kmh: float | None
    ) -> None:
        """One counted vehicle, with its spot speed when known."""
        for acc in self._accs(scope.value, sid, cls, direction, t_ns):
            v = acc.v
            v[_VOL] += 1
            if speed_kmh is not None:
                v[_SPN] += 1
                v[_SPS] += speed_kmh
                v[_SPQ] += speed_kmh * speed_kmh
                if acc.hist is None:
                    acc.hist = np.zeros(SPEED_BINS, dtype=np.int64)
                acc.hist[speed_bin(speed_kmh)] += 1

    def add(
        self, scope: Scope, sid: str, cls: int, direction: int, t_ns: int, values: dict[str, float]
    ) -> None:
        """Add named values (max for the ``*_max_*`` fields)."""
        idx = [(_IDX[k], k in _MAXED, val) for k, val in values.items()]
        for acc in self._accs(scope.value, sid, cls, direction, t_ns):
            v = acc.v
            for i, is_max, val in idx:
                v[i] = max(v[i], val) if is_max else v[i] + val

    def frame_stats(
        self,
        scope: Scope,
        sid: str,
        t_ns: int,
        count: int,
        density: float | None,
        travel_s: float,
        travel_m: float,
        queue_m: float | None,
    ) -> None:
        """One processed frame of a lane or zone (the class-UNSPECIFIED row)."""
        for acc in self._accs(scope.value, sid, 0, 0, t_ns):
            v = acc.v
            v[_FR] += 1
            v[_OCC] += count > 0
            v[_OBJ] += count
            if density is not None:
                v[_DFR] += 1
                v[_DSUM] += density
                v[_TT] += travel_s
                v[_TD] += travel_m
            if queue_m is not None:
                v[_QFR] += 1
                v[_QSUM] += queue_m
                v[_QMAX] = max(v[_QMAX], queue_m)

    # -- output ----------------------------------------------------------------------------

    def volumes(
        self, scope: Scope, bin_seconds: int, bin_start_ns: int
    ) -> dict[tuple[str, int], int]:
        """Vehicles counted so far in one open bin, per (scope id, direction), all classes."""
        out: dict[tuple[str, int], int] = {}
        for key, acc in self._acc.items():
            if key[0] == scope.value and key[4] == bin_seconds and key[5] == bin_start_ns:
                out[key[1], key[3]] = out.get((key[1], key[3]), 0) + int(acc.v[_VOL])
        return out

    def _record(self, key: _Key, acc: _Acc, final: bool) -> BinRecord:
        scope, sid, cls, direction, secs, start = key
        vals: dict[str, Any] = {}
        for name, val in zip(_SCALARS, acc.v, strict=True):
            vals[name] = int(val) if name in _INT_FIELDS else float(val)
        hist = (0,) * SPEED_BINS if acc.hist is None else tuple(acc.hist.tolist())
        return BinRecord(
            key=BinKey(
                self.camera, Scope(scope), sid, ObjectClass(cls), Direction(direction), start, secs
            ),
            final=final,
            speed_hist=hist,
            **vals,
        )

    def drain(self, watermark_ns: int, include_partial: bool = True) -> list[BinRecord]:
        """Records changed since the last drain, and final ones for bins ending by the mark."""
        out: list[BinRecord] = []
        for key in sorted(self._acc):
            secs, start = key[4], key[5]
            if start + secs * _NS <= watermark_ns:
                out.append(self._record(key, self._acc.pop(key), True))
            elif include_partial and key in self._dirty:
                out.append(self._record(key, self._acc[key], False))
        self._dirty.clear()
        smallest = self.bin_seconds[0] * _NS
        self.final_before_ns = max(self.final_before_ns, watermark_ns - watermark_ns % smallest)
        return out

    def adopt(self, records: Iterable[BinRecord]) -> None:
        """Continue stored bins (a camera starting afresh over bins its previous state left
        open): the next samples add to their values instead of replacing them. Adopted bins
        are not written again until a sample touches them or the stream passes their end."""
        for rec in records:
            k = rec.key
            if k.bin_seconds not in self.bin_seconds:
                continue  # a length no longer configured: nothing here would extend it
            acc = _Acc()
            acc.v = [float(getattr(rec, name)) for name in _SCALARS]
            if any(rec.speed_hist):
                acc.hist = np.array(rec.speed_hist, dtype=np.int64)
            key = (k.scope.value, k.scope_id, int(k.object_class), int(k.direction),
                   k.bin_seconds, k.bin_start_ns)  # fmt: skip
            self._acc[key] = acc

    # -- persistence -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "final_before_ns": self.final_before_ns,
            "acc": [
                [
                    list(key),
                    acc.v,
                    None
                    if acc.hist is None
                    else {str(i): int(c) for i, c in enumerate(acc.hist.tolist()) if c},
                ]
                for key, acc in sorted(self._acc.items())
            ],
            "dirty": sorted(list(k) for k in self._dirty),
        }

    def restore(self, s: dict[str, Any]) -> None:
        self.final_before_ns = int(s["final_before_ns"])
        self._acc = {}
        for key, vals, hist in s["acc"]:
            acc = _Acc()
            acc.v = [float(x) for x in vals]
            if hist is not None:
                acc.hist = np.zeros(SPEED_BINS, dtype=np.int64)
                for i, c in hist.items():
                    acc.hist[int(i)] = int(c)
            self._acc[_key(key)] = acc
        self._dirty = {_key(k) for k in s["dirty"]}


def _key(k: list[Any]) -> _Key:
    return (str(k[0]), str(k[1]), int(k[2]), int(k[3]), int(k[4]), int(k[5]))
