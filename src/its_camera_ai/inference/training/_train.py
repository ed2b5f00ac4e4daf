"""Training loop of the shipped detector: losses, schedule, deterministic CPU run.

Losses (TTFNet): a penalty-reduced focal loss on the class heatmaps (CenterNet) normalised by
the number of objects, and GIoU on the boxes predicted at every regression cell, weighted by
the Gaussian. Each class's heatmap terms are weighted by its object count^-0.5
(``class_balance``): mAP averages the classes, and with cars 12x as many as motorcycles the
unweighted loss is mostly cars; held-out mAP@0.5 0.716 -> 0.741 at the same steps
(docs/benchmarks.md). AdamW with a linear warm-up and cosine decay: from scratch, a short schedule
and a high learning rate are what fit in an hour of a 2-core CPU.

Speed: the forward and backward passes run under bfloat16 autocast on channels-last tensors
(``precision="bf16"``), which oneDNN maps to the CPU's bf16/AMX units where it has them.
A whole step of 16 crops, augmentation included (``--max-steps`` runs with and without
``--precision fp32``): 0.32 s against 0.47 s in float32 on an Intel CPU with AMX; 0.42 s
against 0.60 s on an AMD EPYC with AVX512-BF16 and no AMX, this project's other machine
kind, with the cheaper augmentation of ``_data.augment`` (~60 ms less a step than before).
``torch.compile`` of the network gained nothing there (0.42 s either way, 0.68 s against
0.60 s in float32), so it is not used. The weights, optimiser and losses stay float32.
The weights shipped are an exponential moving average of the trained ones (YOLOv5's
``ModelEMA``), the usual remedy for the noise of a short schedule; its gain over the last
step was not measured separately here.

Determinism: every random draw (initialisation, order, augmentation) comes from the config's
seed, the thread count is fixed and ``torch.use_deterministic_algorithms`` is on, so a rerun
with the same data gives the same weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from its_camera_ai.inference.models import STRIDE, CenterNet, NetConfig, set_memory_format
from its_camera_ai.inference.training._data import (
    TrainSet,
    augment,
    build_targets,
    load_trainset,
)

__all__ = [
    "TrainConfig",
    "WeightAverage",
    "class_weights",
    "focal_loss",
    "giou_loss",
    "lr_at",
    "train",
]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    data: str
    seeds: tuple[int, ...] | None = None  # None: every shard in the data's index.json
    # Defaults: the shipped weights' recipe. The network sees whole 640x384 frames (the
    # simulator's native size: no detail lost on the many small objects) but trains on
    # 480x288 crops of them, zoomed by ``zoom``: the pixels of a 480x288 detector per step.
    input_size: tuple[int, int] = (640, 384)  # (w, h), multiples of 32
    crop_size: tuple[int, int] | None = (480, 288)  # None: whole frames
    zoom: tuple[float, float] = (0.8, 1.25)  # scale jitter range
    epochs: float = 16.0
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 300
    box_loss_weight: float = 5.0
    # Heatmap loss of class c weighted by (objects of c)^-class_balance, normalised to a
    # mean of 1 per object: 0 weighs every object alike, 0.5 lifts the rare classes.
    class_balance: float = 0.5
    seed: int = 0
    threads: int = 2
    max_steps: int | None = None  # the CI smoke stops after a few steps
    # Start from these weights (a state dict) instead of from scratch: continuing a run
    # that was cut short with a fresh, decaying schedule.
    init: str | None = None
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    precision: Literal["bf16", "fp32"] = "bf16"
    ema_decay: float = 0.999  # 0: ship the last step's weights
    net: NetConfig = field(default_factory=NetConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore: torch.Tensor,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's focal loss; ``ignore`` (0/1, broadcast over classes) mutes negatives;
    ``class_weight`` ``[C]`` scales each class's heatmap terms."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).to(p.dtype)
    neg = (1.0 - pos) * ignore
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    if class_weight is not None:
        w = class_weight.view(1, -1, 1, 1)
        pos_loss, neg_loss = pos_loss * w, neg_loss * w
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def class_weights(
    classes: list[NDArray[np.int64]],
    difficult: list[NDArray[np.bool_]],
    num_classes: int,
    power: float,
) -> torch.Tensor:
    """(objects of c)^-power per class, scaled so that the mean weight per object is 1."""
    counts = np.zeros(num_classes)
    for c, d in zip(classes, difficult, strict=True):
        counts += np.bincount(c[~d], minlength=num_classes)[:num_classes]
    w = np.maximum(counts, 1.0) ** -power
    w *= counts.sum() / max(float((w * counts).sum()), 1e-12)
    return torch.tensor(w, dtype=torch.float32)


def giou_loss(ltrb: torch.Tensor, box: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted 1 - GIoU between boxes predicted at each cell and their targets."""
    _, _, h, w = ltrb.shape
    mask = weight[:, 0] > 0
    if not bool(mask.any()):
        return ltrb.sum() * 0.0
    ys, xs = torch.meshgrid(
        (torch.arange(h, dtype=ltrb.dtype) + 0.5) * STRIDE,
        (torch.arange(w, dtype=ltrb.dtype) + 0.5) * STRIDE,
        indexing="ij",
    )
    cx, cy = xs.expand_as(mask)[mask], ys.expand_as(mask)[mask]
    d = ltrb.permute(0, 2, 3, 1)[mask]
    t = box.permute(0, 2, 3, 1)[mask]
    wt = weight[:, 0][mask]
    p = torch.stack((cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]), dim=1)
    ix0, iy0 = torch.maximum(p[:, 0], t[:, 0]), torch.maximum(p[:, 1], t[:, 1])
    ix1, iy1 = torch.minimum(p[:, 2], t[:, 2]), torch.minimum(p[:, 3], t[:, 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    ap = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    at = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    union = ap + at - inter + 1e-6
    ex0, ey0 = torch.minimum(p[:, 0], t[:, 0]), torch.minimum(p[:, 1], t[:, 1])
    ex1, ey1 = torch.maximum(p[:, 2], t[:, 2]), torch.maximum(p[:, 3], t[:, 3])
    enclose = (ex1 - ex0) * (ey1 - ey0) + 1e-6
    giou = inter / union - (enclose - union) / enclose
    return ((1 - giou) * wt).sum() / wt.sum().clamp(min=1e-6)


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up from 0 (``decay * (1 - exp(-updates / 2000))``, as YOLOv5) so the
    average is not anchored to the random initialisation of a short run.
    """

    def __init__(self, model: nn.Module, decay: float, replica: nn.Module | None = None) -> None:
        # ``replica``: an identical copy to average into, for modules ``deepcopy`` cannot
        # copy as leaves (TorchScript: load the file twice).
        self.model = (copy.deepcopy(model) if replica is None else replica).eval()
        self.decay = decay
        self.updates = 0
        for p in self.model.parameters():
            p.requires_grad_(False)
        # (average, live) tensor pairs, resolved once: state dict entries share storage
        # with the modules, so updating them in place updates the average model.
        live = model.state_dict()
        self._pairs = [(avg, live[name]) for name, avg in self.model.state_dict().items()]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live model's current weights into the average (after each step)."""
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / 2000.0))
        for avg, live in self._pairs:
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(live, alpha=1.0 - d)
            else:
                avg.copy_(live)


def lr_at(step: int, total: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to 2 % of it."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(total - warmup_steps, 1)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _initial_model(cfg: TrainConfig, log: Callable[[str], None]) -> CenterNet:
    """A fresh network (or ``cfg.init``'s weights), laid out channels-last for training."""
    model = CenterNet(cfg.net)
    if cfg.init is not None:
        model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
        log(f"initialised from {cfg.init}")
    set_memory_format(model, torch.channels_last)
    return model


def _optimiser(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    # No weight decay on BatchNorm and biases: decaying them only hurts a small network.
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        weight_decay=0.0,
    )


def _optimise(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    weight_of_class: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the normalised batch ``x``; its (heatmap, box) losses."""
    heat, ignore, box, weight = targets
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        heat_logits, ltrb = model(x)
    lh = focal_loss(heat_logits.float(), heat, ignore, weight_of_class)
    lb = giou_loss(ltrb.float(), box, weight)
    loss = lh + cfg.box_loss_weight * lb
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    return lh, lb


def _training_batch(
    data: TrainSet, idx: list[int], gen: torch.Generator, cfg: TrainConfig, seen: tuple[int, int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The augmented images ``idx`` of ``data`` (uint8 scale) and their heatmap targets."""
    x, boxes = augment(
        data.images[idx], [data.boxes[i] for i in idx], gen, scale=cfg.zoom, out_size=seen
    )
    targets = build_targets(
        boxes,
        [data.classes[i] for i in idx],
        [data.difficult[i] for i in idx],
        seen,
        cfg.net.num_classes,
    )
    return x, targets


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
    checkpoint: Path | None = None,
    checkpoint_every: int = 200,
) -> tuple[CenterNet, dict[str, Any]]:
    """Train from scratch on ``cfg.data``; returns the model (eval mode) and run statistics.

    ``checkpoint``: a state dict is saved there every ``checkpoint_every`` steps so a long
    run can be evaluated while it trains.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    data = load_trainset(Path(cfg.data), cfg.input_size, cfg.seeds)
    n = int(data.images.shape[0])
    log(f"loaded {n} images in {time.perf_counter() - t0:.1f} s")
    weight_of_class = class_weights(
        data.classes, data.difficult, cfg.net.num_classes, cfg.class_balance
    )
    log(f"heatmap loss weight per class: {[round(v, 2) for v in weight_of_class.tolist()]}")
    model = _initial_model(cfg, log)
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    opt = _optimiser(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(n // cfg.batch_size, 1)
    total = max(int(cfg.epochs * steps_per_epoch), 1)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    seen = cfg.crop_size or cfg.input_size
    model.train()
    order = torch.randperm(n, generator=gen)
    pos, smooth_h, smooth_b = 0, 0.0, 0.0
    t_train = time.perf_counter()
    for step in range(total):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size].tolist()
        pos += cfg.batch_size
        x, targets = _training_batch(data, idx, gen, cfg, seen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_steps)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        lh, lb = _optimise(model, opt, cfg, x, targets, weight_of_class)
        if average is not None:
            average.update()
        smooth_h = lh.item() if step == 0 else 0.95 * smooth_h + 0.05 * lh.item()
        smooth_b = lb.item() if step == 0 else 0.95 * smooth_b + 0.05 * lb.item()
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            shipped = model if average is None else average.model
            torch.save(_contiguous_state(shipped), checkpoint)
        if step % 25 == 0 or step == total - 1:
            el = time.perf_counter() - t_train
            log(
                f"step {step + 1}/{total} heat {smooth_h:.3f} giou {smooth_b:.3f} "
                f"lr {lr_at(step, total, cfg.lr, cfg.warmup_steps):.2e} {el:.0f} s "
                f"(eta {el / (step + 1) * (total - step - 1):.0f} s)"
            )
    if average is not None:
        model = cast(CenterNet, average.model)
    set_memory_format(model, torch.contiguous_format)
    model.eval()
    stats = {
        "steps": total,
        "images": n,
        "train_seconds": round(time.perf_counter() - t_train, 1),
        "final_heat_loss": round(smooth_h, 4),
        "final_giou_loss": round(smooth_b, 4),
    }
    return model, stats


def _contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in the default memory format (what ``torch.load`` users expect)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
