"""The checklist's latency figures (``pytest -m performance tests/load/test_latency.py``):
p99 of query RPCs under load, and capture -> detections of the rated cameras.

Short by default; ``ITS_LOAD_SECONDS`` lengthens each measured window,
``ITS_LOAD_CONCURRENCY`` sets the query callers (default 16).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from its_camera_ai.loadtest import GROUPS, LoadPlan, plan_calls, run_load
from tests.load.system import P95_LIMIT_S, P99_LIMIT_S, RATED_CAMERAS, serve_all

pytestmark = pytest.mark.performance

SECONDS = float(os.environ.get("ITS_LOAD_SECONDS", "15"))
CONCURRENCY = int(os.environ.get("ITS_LOAD_CONCURRENCY", "16"))


@pytest.mark.timeout(300 + 3 * SECONDS)
async def test_query_p99_under_load_and_capture_to_detections_p99(
    postgres_dsn: str, tmp_path: Path
) -> None:
    with serve_all(postgres_dsn, tmp_path) as system:
        async with system.pipeline() as load:
            await load.add(RATED_CAMERAS)
            await load.wait_attached(120)
            plan = LoadPlan(
                system.target,
                plan_calls([*GROUPS["query"], *GROUPS["cameras"]], load.cameras),
                concurrency=CONCURRENCY,
                duration_s=SECONDS,
                label="query",
            )
            report = (await run_load(plan)).as_dict()
            window = await load.measure(SECONDS)
        assert system.alive(), system.log_tail()
    print(f"\nquery load: {report['total']}\npipeline: {window.line()}")
    total = report["total"]
    assert total["errors"] == {}
    assert total["latency_ms"]["p99"] <= P99_LIMIT_S * 1e3
    assert total["latency_ms"]["p95"] <= P95_LIMIT_S * 1e3
    assert window.frames_detected > 0
    assert window.latency_s(0.99) <= P99_LIMIT_S
    assert window.latency_s(0.95) <= P95_LIMIT_S
