"""One batch through the model: preprocess, forward, postprocess, each timed.

Runs on the batching thread. Frames are letterboxed straight from their ring slots into a
preallocated input tensor; only after the forward pass (which synchronises the device, so
every copy from the ring has landed) are the slots checked for having been overwritten
meanwhile. A frame whose slot changed under the read produced garbage input: its result is
discarded and reported as ``FrameOverwritten``, never handed on as a detection.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from its_camera_ai import shm
from its_camera_ai.inference._batching import Work
from its_camera_ai.inference._metrics import InferenceMetrics
from its_camera_ai.inference._pixels import frame_rgb, letterbox_into
from its_camera_ai.inference.models import DetectionModel, Engine

__all__ = ["BatchRunner"]

_log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        model: DetectionModel,
        engine: Engine,
        metrics: InferenceMetrics,
        max_batch_size: int,
    ) -> None:
        self.model = model
        self.engine = engine
        self._metrics = metrics
        self._device = engine.device
        w, h = model.input_size
        self._input = torch.empty(max_batch_size, 3, h, w, device=self._device)

    def _image(self, work: Work) -> torch.Tensor:
        if isinstance(work.pixels, shm.Frame):
            return frame_rgb(work.pixels, self._device)
        array: np.ndarray = work.pixels
        return torch.from_numpy(array).to(self._device, non_blocking=True)

    def __call__(self, batch: list[Work]) -> None:
        m = self._metrics
        n = len(batch)
        t0 = time.monotonic_ns()
        for work in batch:
            work.started_ns, work.batch_size = t0, n
            m.queue_wait.observe((t0 - work.enqueued_ns) / 1e9)
        try:
            with torch.inference_mode():
                placements = letterbox_into(
                    self._input, [self._image(w) for w in batch], self.model.pad_value
                )
                x = self.model.normalise(self._input[:n])
                t1 = time.monotonic_ns()
                raw = self.engine(x)
                if self._device.type == "cuda":
                    torch.cuda.synchronize(self._device)
                t2 = time.monotonic_ns()
                # After the sync every read of a slot is complete: check none changed.
                intact = [not isinstance(w.pixels, shm.Frame) or w.pixels.is_valid() for w in batch]
                results = self.model.postprocess(
                    raw, placements, [w.score_threshold for w in batch]
                )
            t3 = time.monotonic_ns()
        except Exception as exc:  # every item hears of it; the service goes on
            m.batch_failures.inc()
            _log.exception("inference batch failed", extra={"batch_size": n})
            for work in batch:
                work.done(work, None, exc)
            return
        m.batch_size.observe(n)
        m.preprocess.observe((t1 - t0) / 1e9)
        m.model.observe((t2 - t1) / 1e9)
        m.postprocess.observe((t3 - t2) / 1e9)
        for work, result, ok in zip(batch, results, intact, strict=True):
            work.preprocess_ns, work.model_ns, work.postprocess_ns = t1 - t0, t2 - t1, t3 - t2
            if ok:
                m.detections.inc(len(result.scores))
                work.done(work, result, None)
            else:
                frame: shm.Frame = work.pixels
                frame.release()
                work.done(
                    work,
                    None,
                    shm.FrameOverwritten(
                        f"frame {frame.sequence} was overwritten in its ring while being read"
                    ),
                )
