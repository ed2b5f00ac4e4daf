"""Constant-velocity Kalman filter over boxes, vectorised over tracks.

State per track: (cx, cy, w, h) and their velocities (pixels, pixels/second). Like
ByteTrack's filter the noise is diagonal, so the four coordinates are independent 2-state
filters. We exploit that: covariances are kept as three (N, 4) arrays (position variance,
position-velocity covariance, velocity variance) instead of (N, 8, 8) matrices, and predict
and update are a handful of element-wise operations, with no matrix inverse. The result is
exactly the full filter's for this noise model.

Noise scales with the box height (the usual choice): a box twice as big moves and jitters
twice as many pixels. Time is capture time in seconds, so frame-rate changes and dropped
frames are handled by the model rather than assumed away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.common import TrackerSettings

__all__ = ["BoxFilters", "boxes_to_xywh", "xywh_to_boxes"]

F64 = NDArray[np.float64]


def boxes_to_xywh(boxes: F64) -> F64:
    """(N, 4) x1, y1, x2, y2 -> centre x, centre y, width, height."""
    out = np.empty_like(boxes)
    out[:, 0] = 0.5 * (boxes[:, 0] + boxes[:, 2])
    out[:, 1] = 0.5 * (boxes[:, 1] + boxes[:, 3])
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def xywh_to_boxes(xywh: F64) -> F64:
    out = np.empty_like(xywh)
    half_w, half_h = 0.5 * xywh[:, 2], 0.5 * xywh[:, 3]
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


@dataclass(slots=True)
class BoxFilters:
    """Filter states of N tracks as parallel arrays (rows follow the tracker's rows)."""

    x: F64  # (N, 4) position: cx, cy, w, h
    v: F64  # (N, 4) velocity per second
    p_xx: F64  # (N, 4) variances and covariances per coordinate
    p_xv: F64
    p_vv: F64

    @classmethod
    def empty(cls) -> BoxFilters:
        z = np.zeros((0, 4))
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy())

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def initiate(xywh: F64, cfg: TrackerSettings) -> BoxFilters:
        n = len(xywh)
        scale = np.maximum(xywh[:, 3:4], 1.0)
        return BoxFilters(
            x=xywh.copy(),
            v=np.zeros((n, 4)),
            p_xx=np.broadcast_to((2.0 * cfg.std_measure * scale) ** 2, (n, 4)).copy(),
            p_xv=np.zeros((n, 4)),
            p_vv=np.broadcast_to((cfg.std_vel_init * scale) ** 2, (n, 4)).copy(),
        )

    def append(self, other: BoxFilters) -> BoxFilters:
        return BoxFilters(
            np.vstack([self.x, other.x]),
            np.vstack([self.v, other.v]),
            np.vstack([self.p_xx, other.p_xx]),
            np.vstack([self.p_xv, other.p_xv]),
            np.vstack([self.p_vv, other.p_vv]),
        )

    def select(self, rows: NDArray[np.intp] | NDArray[np.bool_]) -> BoxFilters:
        return BoxFilters(
            self.x[rows], self.v[rows], self.p_xx[rows], self.p_xv[rows], self.p_vv[rows]
        )

    def predict(self, dt: float, cfg: TrackerSettings) -> None:
        """Advance every track by dt seconds (in place)."""
        if dt <= 0.0 or len(self.x) == 0:
            return
        scale2 = np.maximum(self.x[:, 3:4], 1.0) ** 2
        self.x += self.v * dt
        # P' = F P F^T + Q with F = [[1, dt], [0, 1]], Q = diag(q_x, q_v) * dt.
        self.p_xx += dt * (2.0 * self.p_xv + dt * self.p_vv) + cfg.std_pos_per_s**2 * scale2 * dt
        self.p_xv += dt * self.p_vv
        self.p_vv += cfg.std_vel_per_s**2 * scale2 * dt
        # A box can shrink only so far: keep sizes positive whatever the velocity says.
        np.maximum(self.x[:, 2:4], 1.0, out=self.x[:, 2:4])

    def update(
        self, rows: NDArray[np.intp], xywh: F64, cfg: TrackerSettings, trust: F64 | None = None
    ) -> None:
        """Correct the given rows with their measured boxes (in place).

        ``trust`` (per row, default 1) divides the measurement std: below 1 a measurement
        counts for less."""
        if len(rows) == 0:
            return
        # Noise scales with the track's own height: a partial box must not shrink its noise.
        scale = np.maximum(self.x[rows, 3:4], 1.0)
        r = (cfg.std_measure * scale) ** 2
        if trust is not None:
            r = r / trust[:, None] ** 2
        pxx, pxv, pvv = self.p_xx[rows], self.p_xv[rows], self.p_vv[rows]
        s = pxx + r
        k_x, k_v = pxx / s, pxv / s
        innov = xywh - self.x[rows]
        self.x[rows] += k_x * innov
        self.v[rows] += k_v * innov
        self.p_xx[rows] = (1.0 - k_x) * pxx
        self.p_xv[rows] = (1.0 - k_x) * pxv
        self.p_vv[rows] = pvv - k_v * pxv
        self.x[rows, 2:4] = np.maximum(self.x[rows, 2:4], 1.0)
