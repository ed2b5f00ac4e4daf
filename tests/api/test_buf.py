"""buf accepts the contract: STANDARD lint, a clean build, canonical formatting.

buf is pinned in tools/buf/package.json; install it with ``npm ci --prefix tools/buf``.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.api._contract import BUF, REPO

pytestmark = pytest.mark.skipif(
    not BUF.is_file(),
    reason="buf is not installed: run `npm ci --prefix tools/buf` (needs Node.js and npm)",
)


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_lint_is_clean() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_succeeds() -> None:
    result = buf("build", "-o", "-#format=json")
    assert result.returncode == 0, result.stderr
    assert '"its/camera/v1/camera_service.proto"' in result.stdout


def test_format_is_canonical() -> None:
    result = buf("format", "--diff", "--exit-code", "--path", "protos/its")
    assert result.returncode == 0, "run `buf format -w --path protos/its`:\n" + result.stdout
