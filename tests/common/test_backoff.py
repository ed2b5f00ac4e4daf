"""The reconnect backoff every service shares."""

from __future__ import annotations

import pytest

from its_camera_ai.common import Backoff


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(0.5, 4.0, 2.0, 0.2)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    backoff.reset()
    assert backoff.next_delay() <= 0.6


def test_backoff_stays_finite_after_any_number_of_failures() -> None:
    backoff = Backoff(0.5, 4.0, 2.0, 0.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 4.0


@pytest.mark.parametrize(
    ("args", "problem"),
    [((0.0, 1.0), "initial"), ((2.0, 1.0), "initial"), ((0.1, 1.0, 0.5), "multiplier")],
)
def test_backoff_refuses_nonsense(args: tuple[float, ...], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Backoff(*args)
