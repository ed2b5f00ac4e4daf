"""A whole system for the load and stress tests: ``its-camera-ai serve all`` as a real
process (decoder, analytics, inference and query on one port) on a fresh database and Redis,
with the generator's ``PipelineLoad`` pointed at it. Not a test module: imported by
tests/load and tests/stress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from its_camera_ai.loadtest import DEFAULT_CAMERA_SOURCE, PipelineLoad
from tests.conftest import REDIS_URL, free_port

# Figures of the production checklist (../shared/spec/production-readiness-checklist.md).
P99_LIMIT_S = 0.100
P95_LIMIT_S = 0.085
MIN_CAMERA_FPS = 30.0
# Cameras this machine is rated for (720p30 sim cameras with p99 capture->detections under
# 100 ms: docs/benchmarks.md, "Load tests"); ITS_RATED_CAMERAS for another machine.
RATED_CAMERAS = int(os.environ.get("ITS_RATED_CAMERAS", "1"))
CAMERA_SOURCE = os.environ.get("ITS_LOAD_CAMERA", DEFAULT_CAMERA_SOURCE)


@dataclass(frozen=True)
class ServedSystem:
    process: subprocess.Popen[bytes]
    target: str
    metrics_url: str
    log: Path

    def pipeline(self) -> PipelineLoad:
        return PipelineLoad(self.target, [self.metrics_url], source=CAMERA_SOURCE)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def serve_all(dsn: str, tmp_path: Path, **environment: str) -> Iterator[ServedSystem]:
    """``serve all`` in dev (anonymous callers are admins on loopback), ready when its
    ``/metrics`` answers; stopped with SIGTERM (its rings removed) on the way out."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "ITS_GRPC__PORT": str(grpc_port),
        "ITS_HTTP__PORT": str(http_port),
        "ITS_DATABASE__DSN": dsn,
        "ITS_REDIS__URL": REDIS_URL,
        "ITS_ANALYTICS__SPOOL_DIR": str(tmp_path / "spool"),
        "ITS_DECODER__RING_PREFIX": f"load{os.getpid()}-",
        "ITS_LOGGING__LEVEL": "WARNING",
        **environment,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "its_camera_ai", "serve", "all"],
            env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    system = ServedSystem(
        process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics", log
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert system.alive(), system.log_tail()
            try:
                with urllib.request.urlopen(system.metrics_url, timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve all never answered /metrics"
                time.sleep(0.5)
        yield system
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
