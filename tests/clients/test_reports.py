"""``its-camera-ai counts|summary|events``: the CLI's connection options against a real
secured host (the CLI runs its own event loop, so in a thread beside the server's)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from its_camera_ai.client import reports_main
from tests.security.conftest import SecureHost

pytestmark = pytest.mark.security


async def test_reports_use_the_credential_and_name_bad_options(
    secured_host: SecureHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def report(command: str, *options: str) -> tuple[int, str, str]:
        argv = ["--target", secured_host.target, *options]
        code = await asyncio.to_thread(reports_main, command, argv)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await report("summary", "--token", secured_host.token("viewer"))
    assert code == 0
    assert out.startswith("camera / lane")

    code, _, err = await report("events", "--api-key", "itsk_unknown")
    assert code == 1
    assert err.startswith("its-camera-ai events: UNAUTHENTICATED: ")

    code, _, err = await report("events", "--token", "a.b.c", "--api-key", "itsk_x")
    assert (code, err) == (
        2,
        "its-camera-ai events: token, api_key: give one credential, not both\n",
    )

    code, _, err = await report("events", "--tls-cert", str(tmp_path / "client.pem"))
    assert code == 2
    assert err.startswith("its-camera-ai events: tls.key: a client certificate needs both")
