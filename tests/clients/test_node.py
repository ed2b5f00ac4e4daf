"""The Node/TypeScript client (``clients/node``) under CI: its own ``npm test`` builds it
(types generated from ``protos/``, ``tsc``) and runs it against a real ``its-camera-ai serve
all`` it starts itself (mTLS, JWTs, a fresh PostgreSQL database) and a grpc-js test server.

Needs ``npm ci --prefix clients/node`` first. Without it the test is skipped, except in CI
(``CI`` set), where a missing install is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_DSN

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
# The command the Node tests start: the one installed beside this interpreter.
SERVICE_COMMAND = Path(sys.executable).parent / "its-camera-ai"
NPM_TEST_TIMEOUT_S = 600


def test_node_client_passes_its_npm_test() -> None:
    npm = shutil.which("npm")
    if npm is None or not (NODE_CLIENT / "node_modules").is_dir():
        reason = "clients/node is not installed (run: npm ci --prefix clients/node)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    environment = {
        **os.environ,
        "ITS_CAMERA_AI_BIN": str(SERVICE_COMMAND),
        "ITS_TEST_POSTGRES_DSN": POSTGRES_ADMIN_DSN,
    }
    result = subprocess.run(
        [npm, "test", "--prefix", str(NODE_CLIENT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=NPM_TEST_TIMEOUT_S,
        check=False,
    )
    output = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, f"npm test failed ({result.returncode}):\n{output}"
    assert "# fail 0" in result.stdout, output
