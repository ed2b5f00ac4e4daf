"""NMS-free decoding of the heatmap detector: 3x3 peak picking and a fixed top-K.

Why no NMS: each object is trained to be a single Gaussian peak in its class heatmap, so a
3x3 max-pool that keeps only the local maxima removes the duplicates NMS would. That keeps
decoding a handful of dense tensor ops with static shapes (``[B, K]``), cheap on CPU and
compilable by TensorRT, with no data-dependent loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from its_camera_ai.inference.models._network import STRIDE

__all__ = ["max_filter_3x3", "peak_boxes"]


def max_filter_3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter (stride 1, -inf padding) as two separable passes of shifted maxima.

    Same result as ``F.max_pool2d(x, 3, 1, 1)``, which on CPU is ~5x slower here (14 ms
    for a batch of 8 heatmaps); elementwise ops export and compile just as well.
    """
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    row = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])


def peak_boxes(
    heat_logits: torch.Tensor, ltrb: torch.Tensor, k: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` peaks per image -> boxes ``[B,K,4]`` (input pixels), scores, class indices.

    Static shapes throughout; ``k`` is clamped to the number of heatmap cells.
    """
    b, c, h, w = heat_logits.shape
    # Peaks and ranking on the logits: sigmoid is monotonic, so only the K winners need it
    # (a third of the decoding time at batch 8 otherwise).
    keep = max_filter_3x3(heat_logits) == heat_logits
    peaks = heat_logits.masked_fill(~keep, float("-inf"))
    k = min(k, c * h * w)
    logits, idx = peaks.reshape(b, -1).topk(k, dim=1)
    scores = torch.sigmoid(logits)
    classes = torch.div(idx, h * w, rounding_mode="floor")
    pos = idx - classes * (h * w)
    ys = torch.div(pos, w, rounding_mode="floor")
    xs = pos - ys * w
    # Cell (x, y) at stride 4 is centred on input pixel coordinate (x + 0.5) * 4: the same
    # convention the training targets use (see _targets).
    cx = (xs.to(ltrb.dtype) + 0.5) * STRIDE
    cy = (ys.to(ltrb.dtype) + 0.5) * STRIDE
    d = ltrb.reshape(b, 4, h * w).gather(2, pos.unsqueeze(1).expand(b, 4, k))
    boxes = torch.stack((cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]), dim=-1)
    return boxes, scores, classes
