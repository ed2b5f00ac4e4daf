from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from its_camera_ai.sim import MAX_SMEAR_PX, Camera, image_motion


def _cam(height: float, tilt: float, pan: float, focal: float) -> Camera:
    return Camera.look(
        position=(0.0, -12.0, height),
        pan_deg=pan,
        tilt_deg=tilt,
        focal_px=focal,
        width=1280,
        height=720,
    )


@settings(max_examples=60, deadline=None)
@given(
    height=st.floats(2.0, 40.0),
    tilt=st.floats(4.0, 80.0),
    pan=st.floats(-60.0, 60.0),
    focal=st.floats(300.0, 3000.0),
    u=st.floats(0.0, 1280.0),
    v=st.floats(0.0, 720.0),
)
def test_homography_round_trip_within_a_millimetre(
    height: float, tilt: float, pan: float, focal: float, u: float, v: float
) -> None:
    cam = _cam(height, tilt, pan, focal)
    if v <= cam.horizon_row(u) + 5.0:
        return  # sky: no ground point
    g = cam.image_to_ground(np.array([u, v]))
    if np.linalg.norm(g - cam.C[:2]) > 500.0:
        return  # grazing rays: a pixel spans metres there
    back = cam.ground_to_image(g)
    assert np.allclose(back, [u, v], atol=1e-6)
    again = cam.image_to_ground(back)
    assert np.linalg.norm(again - g) < 1e-3


def test_homography_agrees_with_projection_and_scaling() -> None:
    cam = _cam(9.0, 13.0, 10.0, 1100.0)
    ground = np.array([[30.0, 0.0], [60.0, -3.5], [15.0, 5.0]])
    uv_h = cam.ground_to_image(ground)
    uv_p, depth = cam.project(np.column_stack([ground, np.zeros(3)]))
    assert np.allclose(uv_h, uv_p, atol=1e-9)
    assert (depth > 0).all()
    half = cam.scaled(640, 360)
    assert np.allclose(half.ground_to_image(ground), uv_h / 2, atol=1e-9)
    # Above the horizon there is no ground point.
    assert np.isnan(cam.image_to_ground(np.array([640.0, cam.horizon_row(640.0) - 10]))).all()


def test_calibration_is_json_ready_and_consistent() -> None:
    cam = _cam(9.0, 13.0, 10.0, 1100.0)
    cal = cam.calibration()
    H = np.array(cal["homography_ground_to_image"])
    Hi = np.array(cal["homography_image_to_ground"])
    assert np.allclose(H @ Hi, np.eye(3) * (H @ Hi)[2, 2], atol=1e-9)


def test_motion_blur_of_a_user_under_the_camera_stays_finite_and_bounded() -> None:
    """Seed 279 of the training set crashed the renderer: a user passing under the camera
    projected to ~1e5 px of smear and the blur tried to allocate a 92 GiB buffer."""
    cam = _cam(6.0, 30.0, 0.0, 800.0)
    # Centres crossing the camera plane during the exposure (the old code: 1.9e5 px), at
    # 0.7 m depth (1e4 px), below the camera (365 px) and a normal one 30 m ahead (6 px).
    xy = np.array([[-3.0, -12.0], [-2.2, -12.0], [0.0, -12.0], [30.0, 0.0]])
    motion = image_motion(cam, xy, np.zeros(4), np.full(4, 1.5), np.full(4, 30.0), 1 / 60)
    length = np.hypot(motion[:, 0], motion[:, 1])
    assert np.isfinite(motion).all()
    assert length[:2].tolist() == [0.0, 0.0]  # no meaningful motion that close
    assert length[2] == pytest.approx(MAX_SMEAR_PX)  # capped, still smeared
    assert 5.0 < length[3] < 7.0  # untouched
