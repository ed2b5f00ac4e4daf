"""Memory under load (``pytest -m memory tests/stress/test_memory_leaks.py --duration=24h``):
``serve all`` with the rated cameras and a steady query load, its resident memory sampled.

The checklist's bound, under 1 MB an hour, is checked by runs of an hour or more; shorter
runs (the default is 60 s after a warm-up) only catch a leak per call or per frame, bounding
the least-squares slope of RSS at 100 MiB an hour. Without query load, the soak test
(tests/reliability/test_soak.py) also watches descriptors, threads and connections.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from its_camera_ai.loadtest import GROUPS, LoadPlan, plan_calls, run_load
from tests.load.system import RATED_CAMERAS, serve_all
from tests.stress.conftest import duration_seconds

pytestmark = pytest.mark.memory

WARM_UP_S = 30.0
SAMPLE_EVERY_S = 2.0
LONG_RUN_S = 3600.0
LONG_RUN_LIMIT = 1 << 20  # bytes an hour
SHORT_RUN_LIMIT = 100 << 20


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def seconds(request: pytest.FixtureRequest) -> float:
    return duration_seconds(request.config)


async def test_rss_stays_flat_under_load(postgres_dsn: str, tmp_path: Path, seconds: float) -> None:
    with serve_all(postgres_dsn, tmp_path) as system:
        async with system.pipeline() as load:
            await load.add(RATED_CAMERAS)
            await load.wait_attached(120)
            plan = LoadPlan(system.target, plan_calls(GROUPS["query"], load.cameras),
                            rate=50, concurrency=16, duration_s=WARM_UP_S + seconds,
                            label="memory")  # fmt: skip
            queries = asyncio.create_task(run_load(plan))
            await asyncio.sleep(WARM_UP_S)
            started, times, rss = time.monotonic(), [], []
            while not queries.done():
                times.append(time.monotonic() - started)
                rss.append(float(_rss_bytes(system.process.pid)))
                await asyncio.sleep(SAMPLE_EVERY_S)
            report = (await queries).as_dict()
        assert system.alive(), system.log_tail()
    assert report["total"]["errors"] == {}
    slope = statistics.linear_regression(times, rss).slope * 3600
    print(f"\nRSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB, {slope / 2**20:+.1f} MiB/h")
    assert slope <= (LONG_RUN_LIMIT if seconds >= LONG_RUN_S else SHORT_RUN_LIMIT)
