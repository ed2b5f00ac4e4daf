"""Pinhole camera: world metres <-> image pixels, and the ground-plane homography.

World frame: x along the road, y to its left, z up (right-handed, metres). Camera frame is
OpenCV's: x right, y down, z forward. Pixel (col, row) covers [col, col+1) x [row, row+1),
so its centre is (col + 0.5, row + 0.5) and the principal point of a W x H image is
(W/2, H/2). The homography is the calibration the analytics service uses for speeds, so it
is exposed exactly as computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._config import CameraConfig

__all__ = ["Camera"]

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Camera:
    """Intrinsics K, rotation R (world -> camera) and centre C (world metres)."""

    width: int
    height: int
    K: F64
    R: F64
    C: F64

    @classmethod
    def from_config(
        cls, cfg: CameraConfig, *, default_y: float, size: tuple[int, int] | None = None
    ) -> Camera:
        y = cfg.y_m if cfg.y_m is not None else default_y
        cam = cls.look(
            position=(cfg.x_m, y, cfg.height_m),
            pan_deg=cfg.pan_deg,
            tilt_deg=cfg.tilt_deg,
            focal_px=cfg.focal,
            width=cfg.width,
            height=cfg.height,
        )
        return cam if size is None else cam.scaled(*size)

    @classmethod
    def look(
        cls,
        *,
        position: tuple[float, float, float],
        pan_deg: float,
        tilt_deg: float,
        focal_px: float,
        width: int,
        height: int,
    ) -> Camera:
        psi, theta = math.radians(pan_deg), math.radians(tilt_deg)
        fwd = np.array(
            [math.cos(theta) * math.cos(psi), math.cos(theta) * math.sin(psi), -math.sin(theta)]
        )
        right = np.array([math.sin(psi), -math.cos(psi), 0.0])
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd])
        K = np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(width, height, K, R, np.asarray(position, dtype=np.float64))

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera rendering at another resolution (square pixels, same hfov)."""
        s = width / self.width
        K = self.K.copy()
        K[0, 0] *= s
        K[1, 1] *= s
        K[0, 2], K[1, 2] = width / 2.0, height / 2.0
        return Camera(width, height, K, self.R, self.C)

    @property
    def focal(self) -> float:
        return float(self.K[0, 0])

    # -- projections ------------------------------------------------------------------------

    def to_camera(self, pts: NDArray[Any]) -> F64:
        """World points (..., 3) to camera coordinates (..., 3)."""
        out: F64 = (np.asarray(pts, dtype=np.float64) - self.C) @ self.R.T
        return out

    def project(self, pts: NDArray[Any]) -> tuple[F64, F64]:
        """World points (..., 3) to pixels (..., 2) and camera depth (...,)."""
        pc = self.to_camera(pts)
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.K[0, 0] * pc[..., 0] / z + self.K[0, 2]
            v = self.K[1, 1] * pc[..., 1] / z + self.K[1, 2]
        return np.stack([u, v], axis=-1), z

    def project_box(
        self, x: float, y: float, yaw: float, length: float, width: float, height: float
    ) -> F64:
        """Pixels (8, 2) of the corners of a 3D box standing on the ground at (x, y)."""
        c, s = np.cos(yaw), np.sin(yaw)
        dx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * length / 2
        dy = np.array([-1, -1, 1, 1, -1, -1, 1, 1]) * width / 2
        z = np.array([0, 0, 0, 0, 1, 1, 1, 1]) * height
        pts = np.column_stack([x + c * dx - s * dy, y + s * dx + c * dy, z])
        return self.project(pts)[0]

    def homography(self) -> F64:
        """Ground plane (x, y, 1) in metres -> image (u, v, 1) in pixels."""
        t = -self.R @ self.C
        H: F64 = self.K @ np.column_stack([self.R[:, 0], self.R[:, 1], t])
        H /= H[2, 2]
        return H

    def ground_to_image(self, xy: NDArray[Any]) -> F64:
        """Ground points (..., 2) to pixels (..., 2)."""
        p = np.asarray(xy, dtype=np.float64)
        h = p @ self.homography()[:, :2].T + self.homography()[:, 2]
        return h[..., :2] / h[..., 2:3]

    def image_to_ground(self, uv: NDArray[Any]) -> F64:
        """Pixels (..., 2) to ground points (..., 2); NaN above the horizon."""
        p = np.asarray(uv, dtype=np.float64)
        Hi = np.linalg.inv(self.homography())
        h = p @ Hi[:, :2].T + Hi[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            g = h[..., :2] / h[..., 2:3]
        # A ray that does not reach the ground in front of the camera has no ground point.
        ok = self._hits_ground(p)
        return np.where(ok[..., None], g, np.nan)

    def _hits_ground(self, uv: F64) -> NDArray[np.bool_]:
        rays = self.pixel_rays(uv)
        return rays[..., 2] < -1e-9

    def pixel_rays(self, uv: NDArray[Any]) -> F64:
        """World-frame ray directions (unnormalised, z_cam = 1) through pixels (..., 2)."""
        p = np.asarray(uv, dtype=np.float64)
        xc = (p[..., 0] - self.K[0, 2]) / self.K[0, 0]
        yc = (p[..., 1] - self.K[1, 2]) / self.K[1, 1]
        cam = np.stack([xc, yc, np.ones_like(xc)], axis=-1)
        out: F64 = cam @ self.R
        return out

    def horizon_row(self, col: float) -> float:
        """Image row of the horizon at a column (the ground is below it)."""
        # The horizon is where the ray's world z is zero: R^T (xc, yc, 1) has z = 0.
        xc = (col - self.K[0, 2]) / self.K[0, 0]
        r = self.R[:, 2]  # world z component of each camera axis
        if abs(r[1]) < 1e-12:
            return -math.inf
        yc = -(r[0] * xc + r[2]) / r[1]
        return float(yc * self.K[1, 1] + self.K[1, 2])

    def calibration(self) -> dict[str, Any]:
        """JSON-ready calibration: what the analytics service needs for metric speeds."""
        return {
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "C": self.C.tolist(),
            "homography_ground_to_image": self.homography().tolist(),
            "homography_image_to_ground": np.linalg.inv(self.homography()).tolist(),
        }
