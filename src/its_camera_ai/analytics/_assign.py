"""IoU cost matrices and optimal linear assignment without scipy.

scipy is not a dependency of this project, so the assignment is our own: an exact
Hungarian (Kuhn-Munkres with potentials, O(n^3)) run only on the connected components of the
gated cost matrix. In traffic almost every component is a single track facing a single
detection, which is settled without any search; only genuinely ambiguous groups (overlapping
boxes) reach the Hungarian, and those are small. Semantics match ``lap.lapjv(...,
cost_limit=limit)`` as ByteTrack uses it: a pair may be matched only if its cost is at most
``limit``, and leaving a row or a column unmatched costs ``limit / 2``, so the total cost of
matches plus non-matches is minimal.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["assign", "hungarian", "inside_matrix", "iou_matrix"]

F64 = NDArray[np.float64]
IntArr = NDArray[np.intp]

# Below this size the pure-Python inner loop beats numpy's per-call overhead.
_PY_MAX = 24


def _intersection(a: F64, b: F64) -> F64:
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    out: F64 = np.maximum(ix2 - ix1, 0.0) * np.maximum(iy2 - iy1, 0.0)
    return out


def _area(boxes: F64) -> F64:
    out: F64 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return out


def iou_matrix(a: F64, b: F64) -> F64:
    """IoU of every box of (T, 4) ``a`` with every box of (D, 4) ``b`` (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    out: F64 = inter / np.maximum(union, 1e-12)
    return out


def inside_matrix(a: F64, b: F64) -> F64:
    """The fraction of each box of (T, 4) ``a`` that lies inside each box of (D, 4) ``b``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    out: F64 = _intersection(a, b) / np.maximum(_area(a), 1e-12)[:, None]
    return out


def _hungarian_py(a: list[list[float]]) -> list[int]:
    # Kuhn-Munkres with potentials (shortest augmenting paths), n rows <= m columns.
    n, m = len(a), len(a[0])
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    p, way = [0] * (m + 1), [0] * (m + 1)
    cols = range(1, m + 1)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = [inf] * (m + 1), [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], inf, 0
            row, ui0 = a[i0 - 1], u[i0]
            for j in cols:
                if not used[j]:
                    cur = row[j - 1] - ui0 - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    out = [-1] * n
    for j in cols:
        if p[j]:
            out[p[j] - 1] = j - 1
    return out


def _hungarian_np(a: F64) -> list[int]:
    n, m = a.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p, way = np.zeros(m + 1, dtype=np.intp), np.zeros(m + 1, dtype=np.intp)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=np.bool_)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = a[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(used[1:], np.inf, minv[1:])
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = int(way[j0])
            p[j0] = p[j1]
            j0 = j1
    out = [-1] * n
    for j in range(1, m + 1):
        if p[j]:
            out[int(p[j]) - 1] = j - 1
    return out


def hungarian(cost: F64) -> list[int]:
    """Column assigned to each row (rows <= columns), minimising the total cost."""
    if cost.shape[0] * cost.shape[1] <= _PY_MAX * _PY_MAX:
        return _hungarian_py(cost.tolist())
    return _hungarian_np(cost)


def _solve_component(cost: F64, limit: float) -> list[tuple[int, int]]:
    """lapjv-with-cost-limit on one component.

    Leaving row i and column j both unmatched costs limit/2 + limit/2 = limit, so capping
    every cost at ``limit`` and solving the plain rectangular problem gives the same optimum:
    a pair at the cap stands for "both unmatched". (The textbook (r + c) square extension
    is equivalent but eight times the work.)
    """
    capped = np.minimum(cost, limit)
    flip = capped.shape[0] > capped.shape[1]
    cols = hungarian(capped.T if flip else capped)
    pairs = [(j, i) if flip else (i, j) for i, j in enumerate(cols) if j >= 0]
    return [(i, j) for i, j in pairs if cost[i, j] <= limit]


def _components(rows: list[int], cols: list[int]) -> list[tuple[list[int], list[int]]]:
    """Connected components of a bipartite graph given by its edges (rows[k], cols[k]) in
    row-major order: each as (its rows, its columns), both ascending.

    Plain Python: the gated graph has a few dozen edges, too few for array operations to pay
    for their overhead. A union-find over the columns, which each row joins together.
    """
    parent = list(range(max(cols) + 1))

    def root(j: int) -> int:
        while parent[j] != j:
            parent[j] = j = parent[parent[j]]
        return j

    first: dict[int, int] = {}  # each row's first column
    for i, j in zip(rows, cols, strict=True):
        f = first.setdefault(i, j)
        if f != j:
            a, b = root(f), root(j)
            parent[max(a, b)] = min(a, b)
    out: dict[int, tuple[list[int], list[int]]] = {}
    for i, j in first.items():
        r = root(j)
        if r not in out:
            out[r] = ([], [])
        out[r][0].append(i)
    for j in sorted(set(cols)):
        out[root(j)][1].append(j)
    return list(out.values())


def assign(cost: F64, limit: float) -> tuple[IntArr, IntArr]:
    """Optimal matching of rows to columns; returns (rows, cols) of the matched pairs.

    ``cost`` may contain inf for forbidden pairs. Pairs come back sorted by row.
    """
    er, ec = (cost <= limit).nonzero()
    if len(er) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    rows, cols = er.tolist(), ec.tolist()
    pairs: list[tuple[int, int]] = []
    for rows_l, cols_l in _components(rows, cols):
        # In traffic almost every component is one track facing one detection.
        if len(rows_l) == 1 and len(cols_l) == 1:
            pairs.append((rows_l[0], cols_l[0]))
        elif len(rows_l) == 1:
            pairs.append((rows_l[0], cols_l[int(np.argmin(cost[rows_l[0], cols_l]))]))
        elif len(cols_l) == 1:
            pairs.append((rows_l[int(np.argmin(cost[rows_l, cols_l[0]]))], cols_l[0]))
        else:
            sub = cost[rows_l][:, cols_l]
            pairs += [(rows_l[i], cols_l[j]) for i, j in _solve_component(sub, limit)]
    pairs.sort()
    out = np.array(pairs, dtype=np.intp).reshape(-1, 2)
    return out[:, 0], out[:, 1]
