"""The side port's page in a real headless Chromium: it shows the camera's snapshot and
its line counts (fetched by the page's script from ``/cameras.json``)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from its_camera_ai.snapshot import LINE_COLOUR
from tests.snapshot.conftest import CAMERA, System, wait_for_track

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def _chromium(url: str, profile: Path, *mode: str) -> bytes:
    """Run headless Chromium on ``url`` (in a subprocess: the host serves on this loop)."""
    assert _CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        _CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,800",
        # Lets the page's script fetch and show the data before the capture.
        "--virtual-time-budget=5000", *mode, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout


@pytest.mark.skipif(_CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
async def test_page_shows_snapshots_and_counts_in_a_browser(system: System, tmp_path: Path) -> None:
    await wait_for_track(system.http_port)
    url = f"http://127.0.0.1:{system.http_port}/"
    screenshot = tmp_path / "page.png"
    await _chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (800, 1280, 3)
    assert pixels.std() > 10, "blank page"
    # The snapshot is on the page: its counting line's colour (a PNG: exact pixels).
    line = np.abs(pixels - np.asarray(LINE_COLOUR)).sum(axis=-1) < 60
    assert line.sum() > 50, "no snapshot (its line colour) on the page"

    dom = (await _chromium(url, tmp_path / "profile-dom", "--dump-dom")).decode()
    assert f"{CAMERA} (live)" in dom
    assert "stop-line" in dom
    assert "left to right" in dom
    assert "blob:" in dom  # the image was fetched and shown
