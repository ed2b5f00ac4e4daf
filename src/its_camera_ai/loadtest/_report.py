"""What a load run measured: latency percentiles, calls/s, errors by status code, the JSON
report; and the progress bar on stderr."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["CallStats", "LoadReport", "Progress", "percentile"]

# Runs shorter than this finish before a progress bar would tell anything.
_PROGRESS_AFTER_S = 3.0


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in [0, 1]) of ascending values; NaN if none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class CallStats:
    """Latencies of the calls that succeeded and the status codes of those that did not."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: CallStats) -> None:
        self.latencies_s.extend(other.latencies_s)
        self.errors.update(other.errors)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        ordered = sorted(self.latencies_s)
        ok, failed = len(ordered), sum(self.errors.values())
        ms = {
            name: round(percentile(ordered, q) * 1e3, 3) if ordered else None
            for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        }
        return {
            "calls": ok + failed,
            "ok": ok,
            "errors": dict(sorted(self.errors.items())),
            "calls_per_second": round(ok / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": ms,
        }


@dataclass
class LoadReport:
    """One run: its settings, the totals and one entry per RPC."""

    target: str
    mode: str  # "closed" (a concurrency) or "open" (a rate)
    concurrency: int
    rate: float | None
    elapsed_s: float
    by_rpc: Mapping[str, CallStats]
    # Open loop: arrivals not sent because ``concurrency`` calls were already in flight.
    shed: int = 0

    @property
    def total(self) -> CallStats:
        merged = CallStats()
        for stats in self.by_rpc.values():
            merged.merge(stats)
        return merged

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "elapsed_s": round(self.elapsed_s, 3),
            "shed": self.shed,
            "total": self.total.summary(self.elapsed_s),
            "by_rpc": {name: s.summary(self.elapsed_s) for name, s in self.by_rpc.items()},
        }

    def table(self) -> str:
        """The report for a terminal: one line per RPC and the total."""
        rows: list[tuple[str, ...]] = [
            ("rpc", "calls", "calls/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors")
        ]
        entries = [*self.by_rpc.items(), ("total", self.total)]
        for name, stats in entries:
            s = stats.summary(self.elapsed_s)
            ms = s["latency_ms"]
            errors = " ".join(f"{code}={n}" for code, n in s["errors"].items()) or "0"
            rows.append(
                (name, str(s["calls"]), f"{s['calls_per_second']:.1f}",
                 *(_ms(ms[k]) for k in ("p50", "p95", "p99", "max")), errors)
            )  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        load = f"rate {self.rate:g}/s" if self.mode == "open" else "closed loop"
        head = f"{self.target}: {load}, concurrency {self.concurrency}, {self.elapsed_s:.1f} s" + (
            f", {self.shed} arrivals shed" if self.shed else ""
        )
        return "\n".join([head, *(line.rstrip() for line in lines)])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class Progress:
    """A progress bar with ETA on stderr for runs longer than a few seconds: redrawn in place
    on a terminal, a line every few seconds otherwise (a CI log)."""

    def __init__(self, total_s: float, label: str, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._total_s = total_s
        self._label = label
        self._enabled = total_s >= _PROGRESS_AFTER_S
        self._started = time.monotonic()
        self._last_line = self._started
        self._interactive = self._stream.isatty()

    def update(self, detail: str = "") -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        elapsed = now - self._started
        if not self._interactive and now - self._last_line < 5.0:
            return
        self._last_line = now
        done = min(1.0, elapsed / self._total_s)
        bar = "#" * int(done * 24)
        text = (
            f"{self._label} [{bar:<24}] {done:4.0%} {elapsed:5.1f}/{self._total_s:.0f} s"
            f" ETA {max(0.0, self._total_s - elapsed):4.0f} s {detail}"
        )
        end = "\r" if self._interactive else "\n"
        self._stream.write(text + end)
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._interactive:
            self._stream.write("\n")
            self._stream.flush()
