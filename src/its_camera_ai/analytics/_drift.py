"""Model drift: the detector's class mix and score distribution against a baseline.

The baseline is the first ``drift_baseline_detections`` detections after start-up or a model
version change, or a configured distribution (``set_baseline``). The current distribution is
the last ``drift_window_detections`` detections, kept as fixed-size chunks so the window
slides in steps and the state stays small. Divergence is KL(current || baseline) with
Dirichlet smoothing (``drift_alpha`` added to every cell of both histograms): no cell has
zero probability, so the value is always finite. A MODEL_DRIFT event opens when either
divergence exceeds ``drift_threshold`` and closes when both fall below ``drift_clear``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._events import EventBook
from its_camera_ai.analytics._records import (
    NUM_CLASSES,
    EventEvidence,
    EventRecord,
    EventType,
    Severity,
)
from its_camera_ai.common import AnalyticsEngineSettings

__all__ = ["DriftMonitor", "kl_divergence"]

F64 = NDArray[np.float64]
_KEY = "drift"


def kl_divergence(p_counts: F64, q_counts: F64, alpha: float) -> float:
    """KL(P || Q) in nats between two smoothed histograms of counts."""
    p = (p_counts + alpha) / (p_counts.sum() + alpha * len(p_counts))
    q = (q_counts + alpha) / (q_counts.sum() + alpha * len(q_counts))
    return float(np.sum(p * np.log(p / q)))


class DriftMonitor:
    def __init__(self, cfg: AnalyticsEngineSettings) -> None:
        self.cfg = cfg
        self.bins = cfg.drift_score_bins
        self.model_version = ""
        self.fixed = False  # baseline configured, not learned
        self.reset("")

    def reset(self, model_version: str) -> None:
        self.model_version = model_version
        if not self.fixed:
            self.base_cls = np.zeros(NUM_CLASSES)
            self.base_score = np.zeros(self.bins)
            self.base_n = 0
        self.cur_cls = np.zeros(NUM_CLASSES)
        self.cur_score = np.zeros(self.bins)
        self.cur_n = 0
        n_chunks = max(1, self.cfg.drift_window_detections // self.cfg.drift_chunk_detections)
        self.window: deque[tuple[F64, F64]] = deque(maxlen=n_chunks)
        self.kl_class: float | None = None
        self.kl_score: float | None = None

    def set_baseline(self, class_counts: F64, score_counts: F64) -> None:
        """Use a configured baseline (e.g. from validation data) instead of learning one."""
        self.base_cls = np.asarray(class_counts, dtype=np.float64).reshape(NUM_CLASSES)
        self.base_score = np.asarray(score_counts, dtype=np.float64).reshape(self.bins)
        self.base_n = self.cfg.drift_baseline_detections
        self.fixed = True

    def _hist(self, classes: NDArray[np.int64], scores: F64) -> tuple[F64, F64]:
        c = np.bincount(classes, minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.float64)
        idx = np.minimum((scores * self.bins).astype(np.int64), self.bins - 1)
        s = np.bincount(idx, minlength=self.bins)[: self.bins].astype(np.float64)
        return c, s

    def observe(self, classes: NDArray[np.int64], scores: F64) -> bool:
        """Add detections; True when the divergences were recomputed."""
        cfg, updated = self.cfg, False
        i, n = 0, len(classes)
        while i < n:
            if self.base_n < cfg.drift_baseline_detections:
                take = min(n - i, cfg.drift_baseline_detections - self.base_n)
                c, s = self._hist(classes[i : i + take], scores[i : i + take])
                self.base_cls += c
                self.base_score += s
                self.base_n += take
            else:
                take = min(n - i, cfg.drift_chunk_detections - self.cur_n)
                c, s = self._hist(classes[i : i + take], scores[i : i + take])
                self.cur_cls += c
                self.cur_score += s
                self.cur_n += take
                if self.cur_n >= cfg.drift_chunk_detections:
                    self.window.append((self.cur_cls, self.cur_score))
                    self.cur_cls, self.cur_score = np.zeros(NUM_CLASSES), np.zeros(self.bins)
                    self.cur_n = 0
                    if len(self.window) == self.window.maxlen:
                        self._compute()
                        updated = True
            i += take
        return updated

    def _compute(self) -> None:
        a = self.cfg.drift_alpha
        # Class 0 never occurs; leaving it out keeps the smoothing from diluting real classes.
        win_cls = np.sum([w[0] for w in self.window], axis=0)[1:]
        win_score = np.sum([w[1] for w in self.window], axis=0)
        self.kl_class = kl_divergence(win_cls, self.base_cls[1:], a)
        self.kl_score = kl_divergence(win_score, self.base_score, a)

    def events(self, book: EventBook, seq: int, t_ns: int) -> list[EventRecord]:
        """Open, refresh or close the MODEL_DRIFT event after ``observe`` returned True."""
        if self.kl_class is None or self.kl_score is None:
            return []
        cfg, worst = self.cfg, max(self.kl_class, self.kl_score)
        details = (("kl_class", self.kl_class), ("kl_score", self.kl_score))
        text = (
            f"Detector output departs from its baseline: class-mix KL {self.kl_class:.3f}, "
            f"score KL {self.kl_score:.3f}"
        )
        evidence = EventEvidence(seq, t_ns, None, None)
        if not book.is_open(_KEY):
            if worst > cfg.drift_threshold:
                return [
                    book.open(
                        _KEY,
                        EventType.MODEL_DRIFT,
                        Severity.LOW,
                        t_ns,
                        t_ns,
                        evidence=evidence,
                        description=text,
                        details=details,
                    )
                ]
            return []
        if worst < cfg.drift_clear:
            rec = book.close(_KEY, t_ns, t_ns)
            return [] if rec is None else [rec]
        rec = book.touch(_KEY, t_ns, evidence, text, details)
        return [] if rec is None else [rec]

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "fixed": self.fixed,
            "base_cls": self.base_cls.tolist(),
            "base_score": self.base_score.tolist(),
            "base_n": self.base_n,
            "cur_cls": self.cur_cls.tolist(),
            "cur_score": self.cur_score.tolist(),
            "cur_n": self.cur_n,
            "window": [[c.tolist(), s.tolist()] for c, s in self.window],
            "kl": [self.kl_class, self.kl_score],
        }

    def restore(self, s: dict[str, Any]) -> None:
        self.fixed = bool(s["fixed"])
        self.reset(str(s["model_version"]))
        self.base_cls = np.asarray(s["base_cls"], dtype=np.float64)
        self.base_score = np.asarray(s["base_score"], dtype=np.float64)
        self.base_n = int(s["base_n"])
        self.cur_cls = np.asarray(s["cur_cls"], dtype=np.float64)
        self.cur_score = np.asarray(s["cur_score"], dtype=np.float64)
        self.cur_n = int(s["cur_n"])
        for c, sc in s["window"]:
            self.window.append((np.asarray(c, dtype=np.float64), np.asarray(sc, np.float64)))
        self.kl_class, self.kl_score = s["kl"]
