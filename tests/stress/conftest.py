"""``--duration`` for the memory test (``pytest -m memory tests/stress/test_memory_leaks.py
--duration=24h``). pytest's own ``--durations`` is a different option (pytest turns off
prefix matching); registered here, so the option exists when tests/stress is collected."""

from __future__ import annotations

import re

import pytest

_UNITS = {"s": 1, "m": 60, "h": 3600}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--duration",
        default="60s",
        help="how long tests/stress/test_memory_leaks.py measures (90s, 30m, 24h; default 60s)",
    )


def duration_seconds(config: pytest.Config) -> float:
    text = str(config.getoption("--duration", default="60s"))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text)
    if match is None:
        raise pytest.UsageError(f"--duration: {text!r} is not a duration such as 90s, 30m, 24h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
