"""A YOLOv3-style detection head (written here: ultralytics is AGPL), its loss and its box decoding.

Three levels (finest first) with YOLOv3's three anchors each (given for 416 px and scaled to the
input size). A level's stride is the input size over its map's width, as in MGCA's ``YOLOLoss``
(8 / 16 / 32 for a plain trunk, 8 / 16 / 16 for a ResNet at output stride 16). A ground-truth box
is assigned to the one anchor whose shape fits it best (IoU of widths/heights), in the grid cell
holding its centre. Loss (YOLOv3's): BCE on objectness over every cell, BCE on the centre offsets,
squared error on the log width/height ratios, BCE on the class. Decoding as MGCA's
``non_max_suppression``: a box is kept when sigmoid(objectness) >= confidence and ranked by it (one
class: the class score picks nothing), then torchvision's NMS per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

ANCHORS_416 = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
PER_LEVEL = 3


class YoloHead(nn.Module):
    """Per level: conv3x3-BN-LeakyReLU then a 1x1 conv to ``3 x (4 box + 1 objectness + classes)`` outputs."""

    def __init__(self, in_channels: list[int], num_classes: int = 1, width: int = 256,
                 objectness_prior: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        outputs = PER_LEVEL * (5 + num_classes)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.1),
                          nn.Conv2d(width, outputs, 1))
            for c in in_channels
        )  # fmt: skip
        if objectness_prior is not None:  # RetinaNet's prior init: every cell starts at objectness p
            if not 0.0 < objectness_prior < 1.0:
                raise ValueError(f"detection.objectness_prior must be in (0, 1), got {objectness_prior}")
            with torch.no_grad():
                for level in self.levels:
                    level[-1].bias.view(PER_LEVEL, 5 + num_classes)[:, 4] = math.log(
                        objectness_prior / (1 - objectness_prior))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw outputs per level ``[B, 3, h, w, 5 + classes]``."""
        out = []
        for layer, x in zip(self.levels, maps):
            y = layer(x)
            b, _, h, w = y.shape
            out.append(y.view(b, PER_LEVEL, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        return out


def anchors(image_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``[9, 2]`` anchor widths/heights in pixels for a square input of ``image_size``."""
    return torch.tensor(ANCHORS_416, dtype=torch.float32, device=device) * (image_size / 416)


def level_stride(image_size: int, out: torch.Tensor) -> float:
    """Input pixels per cell of one level's output ``[B, 3, h, w, ...]`` (MGCA: input size / map size)."""
    return image_size / out.shape[3]


def _flatten_targets(boxes: list[torch.Tensor]) -> torch.Tensor:
    """``[M, 5]`` (image index, x1, y1, x2, y2) of every ground-truth box of the batch."""
    parts = [torch.cat([torch.full((len(b), 1), float(i), device=b.device), b.float()], 1) for i, b in enumerate(boxes)]
    return torch.cat(parts) if parts else torch.zeros(0, 5)


def yolo_loss(outputs: list[torch.Tensor], boxes: list[torch.Tensor], image_size: int) -> torch.Tensor:
    """YOLOv3's loss for a batch; ``boxes[i]`` ``[k_i, 4]`` x1, y1, x2, y2 in input pixels (class 0); mean per image."""
    device = outputs[0].device
    gt = _flatten_targets([b.to(device) for b in boxes])
    wh = (gt[:, 3:5] - gt[:, 1:3]).clamp(min=1e-3)
    centre = (gt[:, 1:3] + gt[:, 3:5]) / 2
    prior = anchors(image_size, device)
    inter = torch.minimum(wh[:, None], prior[None]).prod(-1)
    best = (inter / (wh.prod(-1)[:, None] + prior.prod(-1)[None] - inter)).argmax(1)  # [M]
    total = outputs[0].new_zeros(())
    for level, out in enumerate(outputs):
        b, _, h, w, _ = out.shape
        stride = level_stride(image_size, out)
        pick = best // PER_LEVEL == level
        image, anchor = gt[pick, 0].long(), best[pick] % PER_LEVEL
        cell = centre[pick] / stride
        gx, gy = cell[:, 0].long().clamp(0, w - 1), cell[:, 1].long().clamp(0, h - 1)
        objectness = torch.zeros(out.shape[:4], device=device)
        objectness[image, anchor, gy, gx] = 1.0
        total = total + F.binary_cross_entropy_with_logits(out[..., 4], objectness, reduction="sum")
        if pick.any():
            chosen = out[image, anchor, gy, gx]  # [m, 5 + C]
            offset = cell - torch.stack([gx, gy], 1).float()
            log_ratio = torch.log(wh[pick] / prior[best[pick]])
            total = total + F.binary_cross_entropy_with_logits(chosen[:, :2], offset.clamp(0, 1), reduction="sum")
            total = total + F.mse_loss(chosen[:, 2:4], log_ratio, reduction="sum")
            total = total + F.binary_cross_entropy_with_logits(chosen[:, 5:], torch.ones_like(chosen[:, 5:]),
                                                               reduction="sum")  # fmt: skip
    return total / outputs[0].shape[0]


def decode(
    outputs: list[torch.Tensor], image_size: int, confidence: float, nms_iou: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes [k, 4] x1, y1, x2, y2 in input pixels, objectness [k])`` after the threshold and NMS."""
    prior = anchors(image_size, outputs[0].device).view(len(outputs), PER_LEVEL, 2)
    rows = []
    for level, out in enumerate(outputs):
        b, a, h, w, _ = out.shape
        stride = level_stride(image_size, out)
        ys, xs = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij")
        cx = (out[..., 0].sigmoid() + xs) * stride
        cy = (out[..., 1].sigmoid() + ys) * stride
        bw = out[..., 2].clamp(max=8).exp() * prior[level, :, 0].view(1, a, 1, 1)
        bh = out[..., 3].clamp(max=8).exp() * prior[level, :, 1].view(1, a, 1, 1)
        score = out[..., 4].sigmoid()  # MGCA: objectness gates and ranks the boxes
        image = torch.arange(b, device=out.device).view(b, 1, 1, 1).expand(b, a, h, w)
        rows.append(torch.stack([image.float(), cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, score], -1)
                    .reshape(-1, 6))  # fmt: skip
    flat = torch.cat(rows)
    flat = flat[flat[:, 5] >= confidence]
    flat[:, 1:5] = flat[:, 1:5].clamp(0, image_size)
    keep = batched_nms(flat[:, 1:5], flat[:, 5], flat[:, 0].long(), nms_iou)
    flat = flat[keep]
    images = flat[:, 0].long()
    return [(flat[images == i, 1:5], flat[images == i, 5]) for i in range(outputs[0].shape[0])]
