"""Fine-tuning a YOLOX detector (the shipped ``yolox-nano-coco``) on simulator data.

The pretrained network already sees vehicles in real video; the simulator teaches it our
views (pole cameras, night, rain, fog, small and partly hidden objects) in our six classes.
Its head keeps COCO's 80 classes, so the class map of its manifest stays as it is and the
network is still the same file format: the simulator's classes are trained into their COCO
channels (car 2, truck 7, bus 5, motorcycle 3, bicycle 1, person 0) and every other channel
is pushed down on them.

Loss (YOLOX): SimOTA assigns each object the ``k`` anchor points of least cost (class BCE +
3 x IoU cost, points outside both the box and its centre region excluded), ``k`` the sum of
its 10 best IoUs; IoU loss (1 - IoU^2) on the assigned points' boxes, objectness BCE on
every point, class BCE on the assigned ones with the IoU as target. The exported network
outputs probabilities (objectness and classes through a sigmoid) and raw box offsets, so the
BCE terms take probabilities. Difficult objects (hidden, tiny) are neither positive nor
negative: points inside them are left out of the objectness loss.

Keeping what it knows of real video: the first ``freeze`` convolutions (in graph order: the
backbone's stem and early stages) can be kept fixed, those after them up to the ``slow``-th
can learn at ``slow_lr_scale`` times the rate, the learning rate is small, and the
weights shipped are an exponential moving average; ``anchor_weight`` pulls the trained
weights towards the pretrained ones (L2-SP, Li et al. 2018) instead of towards zero. Which
of these keeps it best on real clips is measured by ``benchmarks/real_clip_counts.py``
against the COCO weights.

Runs resume from a checkpoint (weights, average, optimiser, data order and random state), so
a 3-hour CPU run can be cut and continued; the same script runs on a GPU (``--device``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from its_camera_ai.inference.training._data import TrainSet, augment, clip_boxes, load_trainset
from its_camera_ai.inference.training._train import WeightAverage, lr_at

__all__ = ["SIM_TO_COCO", "FinetuneConfig", "anchor_points", "finetune_yolox", "yolox_loss"]

# The simulator's classes (car, truck, bus, motorcycle, bicycle, person) as COCO indices.
SIM_TO_COCO = (2, 7, 5, 3, 1, 0)
_CENTRE_RADIUS = 2.5  # strides: the centre region of SimOTA
_TOP_IOUS = 10
_IOU_COST, _OUTSIDE_COST = 3.0, 1e5
_BOX_WEIGHT = 5.0
_EPS = 1e-7


@dataclass(frozen=True, slots=True)
class FinetuneConfig:
    data: str
    init: str  # the TorchScript network to start from (e.g. yolox-nano-coco.pt)
    seeds: tuple[int, ...] | None = None  # None: every shard in the data's index.json
    input_size: tuple[int, int] = (416, 416)  # (w, h): the network's
    # (w, h): train on random crops of this size of the zoomed input (None: the whole
    # input). The network is fully convolutional, so a crop teaches it the input's scale
    # for a fraction of the pixels.
    crop_size: tuple[int, int] | None = None
    strides: tuple[int, ...] = (8, 16, 32)
    steps: int = 3000
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    zoom: tuple[float, float] = (0.7, 1.4)
    # close_share of the crops zoom by close_zoom instead (vehicles near the camera).
    close_zoom: tuple[float, float] | None = None
    close_share: float = 0.0
    freeze: int = 0  # the first N convolutions (graph order) keep their weights
    # Convolutions from the freeze-th up to the slow-th learn at slow_lr_scale x the rate:
    # the early layers adapt to the simulator's look without carrying it into what the
    # head reads as fast as the rest (0: none).
    slow: int = 0
    slow_lr_scale: float = 1.0
    # L2-SP: anchor_weight x the squared distance of the trained weights from where they
    # started, added to the loss (0: off); keeps what COCO taught without any COCO images.
    anchor_weight: float = 0.0
    # Distillation: distil_weight x the class outputs' divergence from the starting
    # network's, weighted by its objectness (0: off, and no teacher runs).
    distil_weight: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def anchor_points(size: tuple[int, int], strides: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The output's anchor points in output order: grid cells (x, y) [A, 2] and strides [A]."""
    w, h = size
    cells, scale = [], []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
        cells.append(torch.stack((xs, ys), dim=-1).reshape(-1, 2).float())
        scale.append(torch.full((cells[-1].shape[0],), float(s)))
    return torch.cat(cells), torch.cat(scale)


def _decode(raw: torch.Tensor, cells: torch.Tensor, stride: torch.Tensor) -> torch.Tensor:
    """Raw box outputs [..., 4] -> boxes x1 y1 x2 y2 in input pixels."""
    s = stride[:, None]
    xy = (raw[..., :2] + cells) * s
    wh = torch.exp(raw[..., 2:4].clamp(max=10.0)) * s
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of [M, 4] and [N, 4] boxes -> [M, N]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + _EPS)


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each box of [N, 4] with the same row of [N, 4] -> [N]."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter
    return inter / (union + _EPS)


def _inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[M, A]: which points lie inside which boxes."""
    x, y = points[None, :, 0], points[None, :, 1]
    return (
        (x > boxes[:, None, 0]) & (x < boxes[:, None, 2])
        & (y > boxes[:, None, 1]) & (y < boxes[:, None, 3])
    )  # fmt: skip


@torch.no_grad()
def _simota(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt: torch.Tensor,
    gt_cls: torch.Tensor,
    centres: torch.Tensor,
    stride: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimOTA for one image: (foreground points [F], their object [F], its IoU [F])."""
    in_box = _inside(centres, gt)
    mid = (gt[:, :2] + gt[:, 2:]) / 2
    radius = _CENTRE_RADIUS * stride[None, :]
    in_centre = ((centres[None, :, 0] - mid[:, None, 0]).abs() < radius) & (
        (centres[None, :, 1] - mid[:, None, 1]).abs() < radius
    )
    candidate = (in_box | in_centre).any(0).nonzero().squeeze(1)
    if len(candidate) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    ious = _iou(gt, boxes[candidate])  # [M, C]
    # Class cost: BCE of sqrt(obj x class) against the object's one-hot class, summed over
    # the classes: every class's "no" term, with the object's own class's turned to "yes".
    q = scores[candidate].clamp(_EPS, 1 - _EPS)  # [C, K]
    no = -torch.log1p(-q)
    own = q[:, gt_cls].T  # [M, C]
    cls_cost = no.sum(1)[None, :] - no[:, gt_cls].T - torch.log(own)
    geometry = (in_box & in_centre)[:, candidate]
    cost = cls_cost + _IOU_COST * -torch.log(ious + _EPS) + _OUTSIDE_COST * ~geometry
    k = ious.topk(min(_TOP_IOUS, ious.shape[1]), dim=1).values.sum(1).int().clamp(min=1)
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(len(gt)):
        matching[g, cost[g].topk(int(k[g]), largest=False).indices] = True
    shared = matching.sum(0) > 1
    if shared.any():  # a point two objects want goes to the cheaper one
        matching[:, shared] = False
        matching[cost[:, shared].argmin(0), shared.nonzero().squeeze(1)] = True
    fg = matching.any(0)
    owner = matching[:, fg].int().argmax(0)
    return candidate[fg], owner, ious[owner, fg.nonzero().squeeze(1)]


def yolox_loss(
    out: torch.Tensor,
    boxes: list[NDArray[np.float32]],
    classes: list[NDArray[np.int64]],
    difficult: list[NDArray[np.bool_]],
    size: tuple[int, int],
    cells: torch.Tensor,
    stride: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """YOLOX's loss on the network output ``out`` [B, A, 5 + C] for the boxes (pixels of the
    ``size`` input) and simulator classes of each image; the loss and its parts (per
    foreground point)."""
    pred = _decode(out[..., :4], cells, stride)
    obj, cls = out[..., 4].clamp(_EPS, 1 - _EPS), out[..., 5:].clamp(_EPS, 1 - _EPS)
    centres = (cells + 0.5) * stride[:, None]
    to_coco = torch.tensor(SIM_TO_COCO)
    obj_target = torch.zeros_like(obj)
    obj_weight = torch.ones_like(obj)
    box_loss, cls_loss = out.new_zeros(()), out.new_zeros(())
    fg_total = 0
    for i in range(len(out)):
        kept, ok = clip_boxes(boxes[i], *size)
        use = ok & ~difficult[i]
        ignored = torch.from_numpy(kept[~use])
        if len(ignored):
            obj_weight[i, _inside(centres, ignored).any(0)] = 0.0
        gt = torch.from_numpy(kept[use])
        if len(gt) == 0:
            continue
        gt_cls = to_coco[torch.from_numpy(classes[i][use])]
        scores = obj[i, :, None] * cls[i]
        points, owner, iou = _simota(pred[i].detach(), scores.detach(), gt, gt_cls, centres, stride)
        if len(points) == 0:
            continue
        fg_total += len(points)
        obj_target[i, points] = 1.0
        obj_weight[i, points] = 1.0
        box_loss = box_loss + (1.0 - _paired_iou(pred[i, points], gt[owner]) ** 2).sum()
        target = torch.zeros(len(points), cls.shape[-1])
        target[torch.arange(len(points)), gt_cls[owner]] = iou
        cls_loss = cls_loss + F.binary_cross_entropy(cls[i, points], target, reduction="sum")
    obj_loss = F.binary_cross_entropy(obj, obj_target, weight=obj_weight, reduction="sum")
    n = max(fg_total, 1)
    loss = (_BOX_WEIGHT * box_loss + obj_loss + cls_loss) / n
    parts = {
        k: float(v.detach()) / n
        for k, v in (("box", box_loss), ("obj", obj_loss), ("cls", cls_loss))
    }
    return loss, parts


def _parameter_groups(
    model: nn.Module, cfg: FinetuneConfig
) -> tuple[list[list[nn.Parameter]], list[float], int]:
    """The optimiser's parameter groups and the factor of the rate each learns at: the first
    ``cfg.freeze`` convolutions' weights fixed (left out), those up to ``cfg.slow`` slowed;
    and how many were frozen. The factors come from the config, not the optimiser's state,
    so a checkpoint from before there were factors resumes too."""
    convs = sorted(
        {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()},
        key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")],
    )
    index = {conv: i for i, conv in enumerate(convs)}
    slow: list[nn.Parameter] = []
    normal: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        i = index[name.rsplit(".", 1)[0]]
        p.requires_grad_(i >= cfg.freeze)
        if p.requires_grad:
            (slow if i < cfg.slow else normal).append(p)
    groups, scales = [normal], [1.0]
    if slow:
        groups.append(slow)
        scales.append(cfg.slow_lr_scale)
    return groups, scales, min(cfg.freeze, len(convs))


def _load_script(path: str) -> torch.jit.ScriptModule:
    module: torch.jit.ScriptModule = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    return module


def _checkpoint_state(
    model: nn.Module,
    average: WeightAverage,
    opt: torch.optim.Optimizer,
    step: int,
    gen: torch.Generator,
    order: torch.Tensor,
    pos: int,
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "average": average.model.state_dict(),
        "average_updates": average.updates,
        "optimiser": opt.state_dict(),
        "step": step,
        "generator": gen.get_state(),
        "order": order,
        "pos": pos,
    }


def _resume(
    checkpoint: Path,
    model: nn.Module,
    average: WeightAverage,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
) -> tuple[torch.Tensor, int, int]:
    """Load a checkpoint's state into the run; its data order, position in it and step."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    average.model.load_state_dict(state["average"])
    average.updates = int(state["average_updates"])
    opt.load_state_dict(state["optimiser"])
    gen.set_state(state["generator"])
    return state["order"], int(state["pos"]), int(state["step"])


def _squared_distance(
    params: Sequence[torch.Tensor], start: Sequence[torch.Tensor]
) -> torch.Tensor:
    return torch.stack([((p - p0) ** 2).sum() for p, p0 in zip(params, start, strict=True)]).sum()


def _distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """How far the student's class outputs [B, A, 5 + C] are from the teacher's (Bernoulli
    KL divergence summed over the classes: 0 where they agree), per point weighted by the
    teacher's objectness: where it sees nothing, its classes mean nothing."""
    weight = teacher[..., 4:5]
    target = teacher[..., 5:].clamp(_EPS, 1 - _EPS)
    cls = student[..., 5:].clamp(_EPS, 1 - _EPS)
    kl = F.binary_cross_entropy(cls, target, reduction="none") - F.binary_cross_entropy(
        target, target, reduction="none"
    )
    return (kl * weight).sum() / weight.sum().clamp(min=1.0)


def _hold_back(
    cfg: FinetuneConfig,
    x: torch.Tensor,
    out: torch.Tensor,
    teacher: torch.jit.ScriptModule | None,
    trainable: Sequence[torch.Tensor],
    pretrained: Sequence[torch.Tensor],
    parts: dict[str, float],
) -> torch.Tensor:
    """The terms that keep the network near where it started (L2-SP on its weights,
    distillation of its class outputs on the input ``x``), recorded in ``parts``."""
    total = out.new_zeros(())
    if cfg.anchor_weight > 0:
        drift = _squared_distance(trainable, pretrained)
        parts["anchor"] = float(drift.detach())
        total = total + cfg.anchor_weight * drift
    if teacher is not None:
        with torch.no_grad():
            taught = teacher(x).float().cpu()
        distil = _distillation(out, taught)
        parts["distil"] = float(distil.detach())
        total = total + cfg.distil_weight * distil
    return total


def _next_indices(
    order: torch.Tensor, pos: int, batch_size: int, gen: torch.Generator
) -> tuple[list[int], torch.Tensor, int]:
    """The next batch's image indices in the epoch's ``order`` from ``pos``; a new shuffled
    order once the rest is too short for a batch. The indices, the order and the new position."""
    if pos + batch_size > len(order):
        order, pos = torch.randperm(len(order), generator=gen), 0
    return order[pos : pos + batch_size].tolist(), order, pos + batch_size


def _network_batch(
    data: TrainSet, idx: list[int], gen: torch.Generator, cfg: FinetuneConfig, device: torch.device
) -> tuple[torch.Tensor, list[NDArray[np.float32]]]:
    """The images ``idx`` augmented (zoomed, cropped to ``cfg.crop_size``) as the network's
    input, BGR 0-255 (its manifest's ``channels`` and ``scale``), and their boxes."""
    x, boxes = augment(
        data.images[idx],
        [data.boxes[i] for i in idx],
        gen,
        scale=cfg.zoom,
        out_size=cfg.crop_size,
        close_scale=cfg.close_zoom,
        close_share=cfg.close_share,
    )
    return x[:, [2, 1, 0]].mul_(255.0).to(device), boxes


def finetune_yolox(
    cfg: FinetuneConfig,
    checkpoint: Path | None = None,
    checkpoint_every: int = 100,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Fine-tune ``cfg.init`` on ``cfg.data``; the averaged network (eval mode) and run
    statistics. ``checkpoint``: saved there every ``checkpoint_every`` steps and resumed
    from if it exists. ``progress(step, total, losses)`` after every step."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data: TrainSet = load_trainset(Path(cfg.data), cfg.input_size, cfg.seeds)
    n = int(data.images.shape[0])
    model, replica = (_load_script(cfg.init) for _ in range(2))
    teacher = _load_script(cfg.init).eval() if cfg.distil_weight > 0 else None
    model.train()
    groups, scales, frozen = _parameter_groups(model, cfg)
    average = WeightAverage(model, cfg.ema_decay, replica)
    trainable = [p for group in groups for p in group]
    device = torch.device(cfg.device)
    # Where L2-SP pulls back to: the starting weights, also when resuming a run.
    pretrained = [p.detach().to(device, copy=True) for p in trainable]
    opt = torch.optim.AdamW(
        [{"params": group} for group in groups], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos, start = torch.randperm(n, generator=gen), 0, 0
    if checkpoint is not None and checkpoint.exists():
        order, pos, start = _resume(checkpoint, model, average, opt, gen)
        log(f"resumed from {checkpoint} at step {start}")
    log(f"{n} images, {frozen} convolutions frozen, steps {start}..{cfg.steps}")
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    size = cfg.crop_size or cfg.input_size
    cells, stride = anchor_points(size, cfg.strides)
    losses: dict[str, float] = {}
    began = time.perf_counter()
    for step in range(start, cfg.steps):
        idx, order, pos = _next_indices(order, pos, cfg.batch_size, gen)
        x, boxes = _network_batch(data, idx, gen, cfg, device)
        rate = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        for group, scale in zip(opt.param_groups, scales, strict=True):
            group["lr"] = scale * rate
        out = model(x).float().cpu()
        loss, parts = yolox_loss(
            out,
            boxes,
            [data.classes[i] for i in idx],
            [data.difficult[i] for i in idx],
            size,
            cells,
            stride,
        )
        loss = loss + _hold_back(cfg, x, out, teacher, trainable, pretrained, parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, 10.0)
        opt.step()
        average.update()
        losses = {k: v if not losses else 0.95 * losses[k] + 0.05 * v for k, v in parts.items()}
        if progress is not None:
            progress(step + 1, cfg.steps, losses)
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            state = _checkpoint_state(model, average, opt, step + 1, gen, order, pos)
            torch.save(state, checkpoint)
    if not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"the loss diverged: {losses}")
    shipped = cast(torch.jit.ScriptModule, average.model.to("cpu").eval())
    stats = {
        "steps": cfg.steps,
        "resumed_at_step": start,
        "images": n,
        "frozen_convolutions": frozen,
        "train_seconds": round(time.perf_counter() - began, 1),
        "final_losses": {k: round(v, 4) for k, v in losses.items()},
    }
    return shipped, stats
