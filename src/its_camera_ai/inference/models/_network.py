"""The shipped network: a small anchor-free CenterNet/TTFNet-style detector.

Why this shape: the target is >= 60 frames/s at batch 8 on two CPU cores, so the budget is
under two GFLOPs per frame: the shipped 640x384 input costs 1.58 and, run as
``inference_network`` lays it out, does ~92 frames/s end to end (docs/benchmarks.md). A
plain ResNet-ish backbone (dense 3x3 convolutions run well on CPU through oneDNN; depthwise
ones are memory bound) down to stride 32, a light top-down FPN back to stride 4, and two
heads at stride 4:

- ``heat``: one heatmap per class (sigmoid), trained with a Gaussian-penalised focal loss.
  Objects are peaks; a 3x3 max-pool keeps the local maxima, so decoding needs no NMS.
- ``ltrb``: distances from the cell centre to the box's left, top, right and bottom edges in
  input pixels (FCOS-style), trained with GIoU at every cell of the object's Gaussian
  (TTFNet), which converges in few epochs: the training budget here is under an hour of CPU.

The module is plain convolutions, upsampling and elementwise ops: ``torch.export`` and
TorchScript both take it, and so does TensorRT.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "STRIDE",
    "CenterNet",
    "NetConfig",
    "count_gflops",
    "inference_network",
    "set_memory_format",
]

STRIDE = 4
# Initial heatmap bias: sigmoid(-4.6) ~ 0.01, the focal-loss prior (RetinaNet): without it the
# first steps are dominated by the loss of millions of easy negatives.
_HEAT_PRIOR_BIAS = -4.6
# ltrb = softplus(x) * scale: distances in input pixels; the scale puts a typical vehicle
# (~16-64 px) near softplus' linear range at initialisation.
_LTRB_SCALE = 16.0


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Widths of the network; stored in the manifest so the weights rebuild their module."""

    num_classes: int = 6
    stem: int = 16
    widths: tuple[int, int, int, int] = (24, 48, 80, 128)  # strides 4, 8, 16, 32
    depths: tuple[int, int, int, int] = (0, 1, 2, 2)
    neck: int = 32
    head: int = 32

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetConfig:
        """The inverse of ``to_dict`` (JSON turns the tuples into lists)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown net fields {sorted(unknown)}")
        w, dp = tuple(int(v) for v in d["widths"]), tuple(int(v) for v in d["depths"])
        if len(w) != 4 or len(dp) != 4:
            raise ValueError("widths and depths need 4 entries (strides 4, 8, 16, 32)")
        return cls(
            num_classes=int(d["num_classes"]),
            stem=int(d["stem"]),
            widths=(w[0], w[1], w[2], w[3]),
            depths=(dp[0], dp[1], dp[2], dp[3]),
            neck=int(d["neck"]),
            head=int(d["head"]),
        )


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Basic(nn.Module):
    """ResNet basic block (two 3x3 convolutions and an identity shortcut)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = _cbr(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


def _dws(cin: int, cout: int) -> nn.Sequential:
    """Depthwise-separable 3x3: the neck and heads run at stride 4, where a dense 3x3 would
    cost more than the whole backbone."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _stage(cin: int, cout: int, depth: int, stride: int) -> nn.Sequential:
    layers: list[nn.Module] = [_cbr(cin, cout, 3, stride)]
    layers.extend(_Basic(cout) for _ in range(depth))
    return nn.Sequential(*layers)


class _Head(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, bias: float) -> None:
        super().__init__()
        self.body = _dws(cin, mid)
        self.out = nn.Conv2d(mid, cout, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.body(x))
        return out


class CenterNet(nn.Module):
    """``[B,3,H,W]`` normalised input -> (heat logits ``[B,C,H/4,W/4]``, ltrb ``[B,4,H/4,W/4]``).

    H and W must be multiples of 32.
    """

    def __init__(self, cfg: NetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or NetConfig()
        w, d = cfg.widths, cfg.depths
        self.stem = _cbr(3, cfg.stem, 3, 2)  # stride 2
        self.s4 = _stage(cfg.stem, w[0], d[0], 2)
        self.s8 = _stage(w[0], w[1], d[1], 2)
        self.s16 = _stage(w[1], w[2], d[2], 2)
        self.s32 = _stage(w[2], w[3], d[3], 2)
        self.lat = nn.ModuleList(
            [nn.Conv2d(c, cfg.neck, 1, bias=False) for c in (w[0], w[1], w[2], w[3])]
        )
        # One 3x3 after each merge smooths the nearest-neighbour upsampling seams.
        self.smooth = nn.ModuleList([_dws(cfg.neck, cfg.neck) for _ in range(3)])
        self.heat = _Head(cfg.neck, cfg.head, cfg.num_classes, _HEAT_PRIOR_BIAS)
        self.ltrb = _Head(cfg.neck, cfg.head, 4, 0.0)
        # An attribute, not the module global: TorchScript cannot close over globals.
        self.ltrb_scale = _LTRB_SCALE

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c4 = self.s4(self.stem(x))
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p = self.lat[3](c32)
        p = self.smooth[2](self.lat[2](c16) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        p = self.smooth[1](self.lat[1](c8) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        p = self.smooth[0](self.lat[0](c4) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        return self.heat(p), F.softplus(self.ltrb(p)) * self.ltrb_scale


def inference_network(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` laid out for inference: each BatchNorm folded into the
    convolution before it, and the weights channels-last.

    Same outputs to float rounding, and faster on CPU: oneDNN's convolutions run natively on
    channels-last (NHWC) tensors, so without it every convolution reorders its input and
    output, and an unfolded BatchNorm is one more pass over memory per layer. The shipped
    network at 640x384, batch 8, two cores: 145.8 ms in the trained layout, 84.0 ms as laid
    out here, side by side in ``benchmarks/detector_latency.py``.
    The model's own weights are untouched (training and ``state_dict`` keep the BatchNorms).
    """
    net = copy.deepcopy(model).eval()
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    set_memory_format(net, torch.channels_last)
    return net


def set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> None:
    """What ``Module.to(memory_format=...)`` does (its 4-D weights), in typed calls."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=memory_format)


def count_gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """Multiply-accumulates of convolutions and linears for one ``size`` (w, h) frame, in G.

    Counted with forward hooks (no extra dependency); one MAC = 2 FLOPs, the usual convention
    for "GFLOPs" of detectors is MACs, as Ultralytics reports, so this returns 2 x MACs / 1e9.
    """
    macs = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs += out.numel() * k
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size[1], size[0]))
    finally:
        for h in handles:
            h.remove()
    return 2.0 * macs / 1e9
