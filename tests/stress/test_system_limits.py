"""Graceful degradation (``pytest -m stress tests/stress/test_system_limits.py``):
simulated cameras added past the machine's capacity, then taken away.

Past capacity, frames are shed by the newest-frame policy and counted by reason, the frames
processed keep a bounded latency, no process crashes and analytics rejects nothing; when
the load drops back to the rated cameras, shedding stops and latency returns to its budget.
``ITS_STRESS_STEPS`` sets the camera counts (default ``1,3,5``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.load.system import RATED_CAMERAS, serve_all

pytestmark = pytest.mark.stress

STEPS = [int(n) for n in os.environ.get("ITS_STRESS_STEPS", "1,3,5").split(",")]
WINDOW_S = float(os.environ.get("ITS_LOAD_SECONDS", "10"))
# Bounded, not within budget. The newest-frame policy keeps at most one frame per camera
# waiting: a processed frame waits for the batch being run, then for its own; at 5 cameras
# on two CPU cores a batch takes ~0.5 s (p50 0.5 s, p99 1.0 s measured 2026-12-05). A queue
# would instead grow by seconds every second.
OVERLOAD_P99_LIMIT_S = 1.5


@pytest.mark.timeout(300 + 4 * WINDOW_S * (len(STEPS) + 1))
async def test_past_capacity_sheds_and_recovers(postgres_dsn: str, tmp_path: Path) -> None:
    with serve_all(postgres_dsn, tmp_path) as system:
        async with system.pipeline() as load:
            windows = []
            for cameras in STEPS:
                await load.add(cameras - len(load.cameras))
                await load.wait_attached(120)
                await load.measure(3.0, "settle")
                windows.append(await load.measure(WINDOW_S, f"{cameras} cameras"))
                print(f"\n{windows[-1].line()}")
                assert system.alive(), system.log_tail()
            await load.remove(len(load.cameras) - RATED_CAMERAS)
            await load.measure(5.0, "settle")
            recovered = await load.measure(WINDOW_S, "recovered")
            print(f"\nrecovered: {recovered.line()}")
        assert system.alive(), system.log_tail()
    overloaded = windows[-1]
    assert overloaded.skip_share > 0, "the last step was not past capacity: raise the steps"
    assert sum(overloaded.skipped.values()) > 0  # counted, by reason
    for window in windows:
        assert window.frames_detected > 0
        assert window.latency_s(0.99) <= OVERLOAD_P99_LIMIT_S, window.line()
        assert not any(k.startswith("rejected") for k in window.analytics_frames), window.line()
    # Recovered: back to what the same load got before the overload (on two CPU cores even
    # one 30 fps camera is past the model's rate, so "no shedding" is not the baseline).
    before = windows[0]
    assert before.cameras == recovered.cameras, "the first step is the load recovered to"
    assert recovered.skip_share <= before.skip_share + 0.1, (before.line(), recovered.line())
    assert recovered.latency_s(0.99) <= 1.5 * before.latency_s(0.99), (
        before.line(),
        recovered.line(),
    )
