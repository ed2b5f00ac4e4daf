"""``its-camera-ai cameras add|list|show|rm`` against a real secured host (decoder,
analytics, query on loopback, a fresh database): a scene file round trip, and bad scene
files and refusals reported with the field and the server's message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from its_camera_ai.client import cameras_main
from tests.security.conftest import SecureHost

pytestmark = pytest.mark.security

SCENE = """\
lines:
  - id: stop-line
    display_name: Stop line
    segment: {start: {x: 10, y: 200}, end: {x: 310, y: 200}}
    direction: CROSSING_DIRECTION_LEFT_TO_RIGHT
zones:
  - id: shoulder
    polygon: {vertices: [{x: 0, y: 120}, {x: 40, y: 120}, {x: 40, y: 239}, {x: 0, y: 239}]}
lanes:
  - id: nb-1
    polygon: {vertices: [{x: 60, y: 20}, {x: 160, y: 20}, {x: 160, y: 239}, {x: 60, y: 239}]}
    travelDirection: {start: {x: 110, y: 230}, end: {x: 110, y: 30}}
calibration:
  points:
    - {image_point: {x: 60, y: 230}, world_point: {x: 0, y: 0}}
    - {image_point: {x: 260, y: 230}, world_point: {x: 7, y: 0}}
    - {image_point: {x: 200, y: 60}, world_point: {x: 7, y: 40}}
    - {image_point: {x: 120, y: 60}, world_point: {x: 0, y: 40}}
"""


async def _cameras(
    capsys: pytest.CaptureFixture[str], secured_host: SecureHost, role: str, *argv: str
) -> tuple[int, str, str]:
    command, *rest = argv
    options = ["--target", secured_host.target, "--token", secured_host.token(role)]
    code = await asyncio.to_thread(cameras_main, [command, *options, *rest])
    out, err = capsys.readouterr()
    return code, out, err


async def test_add_list_show_remove_a_camera_with_a_scene_file(
    secured_host: SecureHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    scene = tmp_path / "gate-1.yaml"
    scene.write_text(SCENE)
    code, out, err = await _cameras(
        capsys, secured_host, "operator", "add", "gate-1", "--source", "sim://road?seed=2",
        "--scene", str(scene), "--disabled", "--display-name", "Gate 1",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "created cameras/gate-1 (disabled): 1 lines, 1 zones, 1 lanes, calibrated\n"

    code, out, _ = await _cameras(capsys, secured_host, "viewer", "list")
    assert code == 0
    header, _, row, total = out.splitlines()
    assert header.startswith("camera  enabled  lines  zones  lanes  calibrated  source")
    assert row.split() == ["gate-1", "no", "1", "1", "1", "yes", "sim://road?seed=2"]
    assert total == "1 camera(s)"

    code, out, _ = await _cameras(capsys, secured_host, "viewer", "show", "gate-1")
    assert code == 0
    shown = json.loads(out)
    camera = shown["camera"]
    assert camera["name"] == "cameras/gate-1"
    assert camera["display_name"] == "Gate 1"
    assert camera["lines"] == [
        {
            "id": "stop-line",
            "display_name": "Stop line",
            "segment": {"start": {"x": 10.0, "y": 200.0}, "end": {"x": 310.0, "y": 200.0}},
            "direction": "CROSSING_DIRECTION_LEFT_TO_RIGHT",
        }
    ]
    (lane,) = camera["lanes"]  # given in lowerCamelCase, shown as the proto names it
    assert lane["travel_direction"]["end"] == {"x": 110.0, "y": 30.0}
    assert len(camera["calibration"]["points"]) == 4
    # Output only: the server fitted the homography.
    assert "rms_reprojection_error_pixels" in camera["calibration"]
    assert shown["status"]["state"] == "CAMERA_STATE_STOPPED"

    code, out, _ = await _cameras(capsys, secured_host, "operator", "rm", "gate-1")
    assert (code, out) == (0, "deleted cameras/gate-1\n")
    code, out, _ = await _cameras(capsys, secured_host, "viewer", "list")
    assert out.splitlines()[-1] == "0 camera(s)"
    code, _, err = await _cameras(capsys, secured_host, "viewer", "show", "gate-1")
    assert code == 1
    assert err.startswith("its-camera-ai cameras show: NOT_FOUND")


async def test_bad_scene_files_and_refusals_name_the_field(
    secured_host: SecureHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def add(scene_text: str, role: str = "operator") -> tuple[int, str]:
        scene = tmp_path / "scene.yaml"
        scene.write_text(scene_text)
        add_argv = ("add", "cam-a", "--source", "sim://road", "--scene", str(scene), "--disabled")
        code, _, err = await _cameras(capsys, secured_host, role, *add_argv)
        return code, err

    misspelt = SCENE.replace("segment:", "segmnt:")
    code, err = await add(misspelt)
    assert code == 2
    assert err.startswith(f"its-camera-ai cameras: {tmp_path / 'scene.yaml'}: lines: ")
    assert 'no field named "segmnt"' in err

    code, err = await add(SCENE.replace("y: 40}}", "y: [40]}}", 1))
    assert code == 2
    assert "calibration.points.world_point.y: " in err

    code, err = await add("lines: []\nlanez: []\n")
    assert (code, err) == (
        2,
        f"its-camera-ai cameras: {tmp_path / 'scene.yaml'}: lanez: not a scene field "
        "(lines, zones, lanes, calibration)\n",
    )

    # Well-formed, but the server refuses it: its message and the field it names.
    code, err = await add(SCENE.replace("id: stop-line", "id: Stop_Line"))
    assert code == 1
    assert err.startswith("its-camera-ai cameras add: INVALID_ARGUMENT")
    assert "camera.lines[0].id" in err

    code, err = await add(SCENE, role="viewer")
    assert code == 1
    assert err.startswith("its-camera-ai cameras add: PERMISSION_DENIED")
