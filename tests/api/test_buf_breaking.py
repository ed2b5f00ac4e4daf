"""The contract cannot break silently: ``buf breaking`` against the released image in
protos/released/ refuses removed fields (reserved or not), changed types and renamed RPCs,
and lets additions through; the release script refuses to release a breaking contract.

Every change is made to a copy of buf.yaml and protos/ in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api._contract import BUF, PROTOS, REPO

pytestmark = pytest.mark.skipif(
    not BUF.is_file(),
    reason="buf is not installed: run `npm ci --prefix tools/buf` (needs Node.js and npm)",
)

RELEASED = "protos/released/contract.json"
RELEASE_SCRIPT = REPO / "scripts" / "release_contract.py"
CAMERA_SERVICE = "protos/its/camera/v1/camera_service.proto"
CAMERA_ID_FIELD = "  string camera_id = 2 [(google.api.field_behavior) = OPTIONAL];\n"
ADDITIONS = [
    (  # a new optional field
        "  bool allow_missing = 3 [(google.api.field_behavior) = OPTIONAL];\n}\n",
        "  bool allow_missing = 3 [(google.api.field_behavior) = OPTIONAL];\n\n"
        "  // Also delete the camera's recorded data.\n"
        "  bool purge_data = 4 [(google.api.field_behavior) = OPTIONAL];\n}\n",
    ),
    (  # a new RPC with its own messages
        "  rpc GetCamera(GetCameraRequest) returns (GetCameraResponse);\n",
        "  rpc GetCamera(GetCameraRequest) returns (GetCameraResponse);\n\n"
        "  // Restarts a camera's decoder.\n"
        "  rpc RestartCamera(RestartCameraRequest) returns (RestartCameraResponse);\n",
    ),
    (
        "message DeleteCameraResponse {}\n",
        "message DeleteCameraResponse {}\n\n"
        "// Request for CameraService.RestartCamera.\n"
        "message RestartCameraRequest {\n"
        "  // Name of the camera.\n"
        "  string name = 1;\n}\n\n"
        "// Response for CameraService.RestartCamera.\n"
        "message RestartCameraResponse {}\n",
    ),
]


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    """A copy of the module (buf.yaml, protos/ with the released image) to change."""
    shutil.copy2(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(PROTOS, tmp_path / "protos")
    return tmp_path


def edit(root: Path, path: str, old: str, new: str) -> None:
    """Replace ``old`` (which must occur exactly once: a proto edited elsewhere fails here
    rather than passing without the change) by ``new``."""
    proto = root / path
    text = proto.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not found exactly once in {path}"
    proto.write_text(text.replace(old, new), encoding="utf-8")


def breaking(root: Path) -> tuple[int, list[dict[str, str]]]:
    """``buf breaking`` against the released image: exit status and the findings."""
    result = subprocess.run(
        [str(BUF), "breaking", "--against", RELEASED, "--error-format", "json"],
        cwd=root, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 100), result.stderr  # 100: breaking changes found
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def test_the_repository_does_not_break_the_released_contract() -> None:
    assert breaking(REPO) == (0, [])


@pytest.mark.parametrize(
    ("old", "new", "rule", "named"),
    [
        pytest.param(CAMERA_ID_FIELD, "", "FIELD_NO_DELETE", '"camera_id"', id="field-removed"),
        pytest.param(  # v1 deprecates fields instead: reserving does not make removal safe
            CAMERA_ID_FIELD,
            '  reserved 2;\n  reserved "camera_id";\n',
            "FIELD_NO_DELETE",
            '"camera_id"',
            id="field-removed-number-reserved",
        ),
        pytest.param(
            "  int32 page_size = 1 [",
            "  int64 page_size = 1 [",
            "FIELD_SAME_TYPE",
            '"page_size"',
            id="field-type-changed",
        ),
        pytest.param(
            "  rpc GetCamera(GetCameraRequest)",
            "  rpc FetchCamera(GetCameraRequest)",
            "RPC_NO_DELETE",
            '"GetCamera"',
            id="rpc-renamed",
        ),
    ],
)
def test_a_breaking_change_fails_naming_it(
    contract: Path, old: str, new: str, rule: str, named: str
) -> None:
    edit(contract, CAMERA_SERVICE, old, new)
    status, findings = breaking(contract)
    assert status == 100
    assert [(f["type"], f["path"]) for f in findings] == [(rule, CAMERA_SERVICE)]
    assert named in findings[0]["message"]


def test_additions_pass(contract: Path) -> None:
    for old, new in ADDITIONS:
        edit(contract, CAMERA_SERVICE, old, new)
    assert breaking(contract) == (0, [])


def release(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RELEASE_SCRIPT), "--protos-root", str(root)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_release_takes_additions_and_refuses_breaking_changes(contract: Path) -> None:
    image = contract / RELEASED
    before = image.read_text(encoding="utf-8")
    edit(contract, CAMERA_SERVICE, *ADDITIONS[0])

    refreshed = release(contract)
    assert refreshed.returncode == 0, refreshed.stderr
    assert '"name": "purge_data"' in image.read_text(encoding="utf-8")
    assert image.read_text(encoding="utf-8") != before

    # Released, the added field is part of the contract: removing it now breaks it.
    edit(contract, CAMERA_SERVICE, *reversed(ADDITIONS[0]))
    released = image.read_text(encoding="utf-8")
    refused = release(contract)
    assert refused.returncode == 1
    assert 'field "4" with name "purge_data"' in refused.stderr
    assert "docs/api-versioning.md" in refused.stderr
    assert image.read_text(encoding="utf-8") == released
