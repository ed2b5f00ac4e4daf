"""scripts/gen_protos.py: the committed stubs are current, and ``--check`` catches drift.

Every test that changes something works on copies under ``tmp_path``; the real
``protos/`` and ``clients/python/its/`` are only read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api._contract import GEN_SCRIPT, GENERATED, PROTOS


def run_gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def out_copy(tmp_path: Path) -> Path:
    """A copy of the committed output: ``<tmp>/out/its/...``."""
    out = tmp_path / "out"
    shutil.copytree(GENERATED, out / "its", ignore=shutil.ignore_patterns("__pycache__"))
    return out


def test_check_passes_on_committed_stubs() -> None:
    result = run_gen("--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_names_a_hand_edited_file(out_copy: Path) -> None:
    edited = out_copy / "its" / "camera" / "v1" / "camera_service_pb2.py"
    edited.write_text(edited.read_text(encoding="utf-8") + "# edited by hand\n", encoding="utf-8")

    result = run_gen("--check", "--out", str(out_copy))

    assert result.returncode == 1
    assert "stale:   its/camera/v1/camera_service_pb2.py" in result.stderr
    assert result.stderr.count("stale:") == 1, result.stderr


def test_check_names_missing_and_extra_files(out_copy: Path) -> None:
    (out_copy / "its" / "query" / "v1" / "event_pb2.pyi").unlink()
    (out_copy / "its" / "query" / "v1" / "old_pb2.py").write_text("", encoding="utf-8")

    result = run_gen("--check", "--out", str(out_copy))

    assert result.returncode == 1
    assert "missing: its/query/v1/event_pb2.pyi" in result.stderr
    assert "extra:   its/query/v1/old_pb2.py" in result.stderr


def test_check_fails_when_a_proto_changed_without_regenerating(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(PROTOS, protos)
    camera = protos / "its" / "camera" / "v1" / "camera.proto"
    camera.write_text(
        camera.read_text(encoding="utf-8") + "\n// A message added without regenerating.\n"
        "message Unregenerated {}\n",
        encoding="utf-8",
    )

    result = run_gen("--check", "--protos", str(protos))

    assert result.returncode == 1
    assert "stale:   its/camera/v1/camera_pb2.py" in result.stderr
    assert "stale:   its/camera/v1/camera_pb2.pyi" in result.stderr


def test_generate_replaces_the_output_tree(out_copy: Path) -> None:
    leftover = out_copy / "its" / "camera" / "v1" / "removed_pb2.py"
    leftover.write_text("", encoding="utf-8")
    (out_copy / "its" / "py.typed").unlink()

    result = run_gen("--out", str(out_copy))

    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert (out_copy / "its" / "py.typed").is_file()
    assert run_gen("--check", "--out", str(out_copy)).returncode == 0


def test_output_layout() -> None:
    """Packages at every level, stubs for every proto, gRPC modules only for services."""
    assert (GENERATED / "py.typed").is_file()
    for area in ("common", "camera", "inference", "analytics", "query", "admin"):
        assert (GENERATED / area / "__init__.py").is_file()
        assert (GENERATED / area / "v1" / "__init__.py").is_file()
    for proto in (PROTOS / "its").rglob("*.proto"):
        stem = GENERATED / proto.parent.relative_to(PROTOS / "its") / (proto.stem + "_pb2")
        assert stem.with_suffix(".py").is_file(), proto
        assert stem.with_suffix(".pyi").is_file(), proto
        has_service = any(
            line.startswith("service ") for line in proto.read_text(encoding="utf-8").splitlines()
        )
        grpc_module = stem.with_name(stem.name + "_grpc")
        assert grpc_module.with_suffix(".py").is_file() == has_service, proto
        assert grpc_module.with_suffix(".pyi").is_file() == has_service, proto
    # The vendored googleapis protos are imported, never generated.
    assert not (GENERATED.parent / "google").exists()
