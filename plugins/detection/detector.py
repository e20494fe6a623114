"""An anchor-free (FCOS-style) detector on any timm mobile backbone, and the graph that
turns its outputs into final boxes on the device.

Why FCOS and not SSDLite: it has no anchor boxes to tune per data set, its head is a
few depthwise-separable convolutions (cheap on 2 cores, int8-friendly), and every
operation exports to plain ONNX. The backbone runs as a multi-scale feature extractor
(timm's ``features_only``, strides 8, 16 and 32); a light FPN (1x1 laterals, top-down
nearest upsampling) feeds one head whose convolutions every level shares (each level
has its own BatchNorms).

The model's output (``logits``, what training, the merge check and parity compare) is
one tensor ``(batch, locations, 8 + classes)``, one row per feature-map location:

    px, py, stride | l, t, r, b | centerness | class logits ...

All geometry is in fractions of the input side (the input is square), so every column
has a small range: ``(px, py)`` is the location's centre, ``stride`` its level's step,
and ``l, t, r, b`` the distances from the centre to the box's edges. A box is
``(px - l, py - t, px + r, py + b)``; a class's score is
``sqrt(sigmoid(class) * sigmoid(centerness))``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

#: Columns of a raw output row, before the class logits: the location's centre and its
#: level's stride, the distances to the box's edges, the centerness logit.
CENTRE, STRIDE, BOX, CENTERNESS = slice(0, 2), 2, slice(3, 7), 7
FIRST_CLASS = 8
#: Final-detection settings of the exported graph and of the task's decoding.
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS = 0.05, 0.5, 100


class _TowerBlock(nn.Module):
    """A depthwise-separable convolution shared by every level, with one BatchNorm per
    level (as EfficientDet's head): levels differ in their statistics, and one shared
    norm's running averages would fit none of them at evaluation."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(levels))
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return self.act(self.norms[level](self.pointwise(self.depthwise(x))))


class DetectionHead(nn.Module):
    """FPN-lite laterals and one tower shared by the levels (its BatchNorms per level); per
    level: box distances, centerness, classes."""

    def __init__(
        self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 64, depth: int = 2
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU6(inplace=True))
            for c in in_channels
        )
        self.tower = nn.ModuleList(_TowerBlock(channels, len(strides)) for _ in range(depth))
        self.classes = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.boxes = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        nn.init.normal_(self.classes.weight, std=0.01)
        nn.init.normal_(self.boxes.weight, std=0.01)
        nn.init.constant_(
            cast(torch.Tensor, self.classes.bias), -4.6
        )  # prior probability 0.01: the focal loss starts stable
        nn.init.zeros_(cast(torch.Tensor, self.boxes.bias))

    def forward(self, features: list[torch.Tensor], side: int) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features)]
        for i in range(len(levels) - 2, -1, -1):  # top-down: coarse context into fine levels
            levels[i] = levels[i] + nn.functional.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="nearest")
        rows = [self._level(x, i, side) for i, x in enumerate(levels)]
        return torch.cat(rows, dim=1)

    def _level(self, x: torch.Tensor, i: int, side: int) -> torch.Tensor:
        for block in self.tower:
            x = block(x, i)
        batch, _, height, width = x.shape
        stride = self.strides[i] / side
        distances = torch.exp((self.boxes(x) * self.scales[i]).clamp(max=8.0)) * stride
        ys = (torch.arange(height, dtype=x.dtype, device=x.device) + 0.5) * stride
        xs = (torch.arange(width, dtype=x.dtype, device=x.device) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = (
            torch.stack([grid_x, grid_y, torch.full_like(grid_x, stride)], dim=0).unsqueeze(0).expand(batch, -1, -1, -1)
        )
        row = torch.cat([points, distances, self.centerness(x), self.classes(x)], dim=1)
        return row.flatten(2).transpose(1, 2)


#: The head's size where the backbone's options say nothing (mobilenet's ``options.head`` does).
HEAD_DEFAULTS = {"channels": 64, "depth": 2}


class Detector(nn.Module):
    """``model`` (a feature extractor: one map per level) and ``head``; ``forward(pixel_values)`` -> raw rows."""

    def __init__(self, features: nn.Module, head: DetectionHead) -> None:
        super().__init__()
        self.model, self.head = features, head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(pixel_values), int(pixel_values.shape[-1]))


def decode_boxes(raw: torch.Tensor) -> torch.Tensor:
    """Raw rows ``(..., 8 + C)`` as the boxes they predict, ``(..., 4)``: x1 y1 x2 y2 in
    fractions of the input side (not clipped: the loss compares them as they are)."""
    centre, distances = raw[..., CENTRE], raw[..., BOX]
    return torch.cat([centre - distances[..., 0:2], centre + distances[..., 2:4]], dim=-1)


def boxes_and_scores(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows ``(..., locations, 8 + C)`` as boxes ``(..., locations, 4)`` (x1 y1 x2 y2 in
    fractions of the input side, clipped to the image) and class scores ``(..., locations, C)``."""
    boxes = decode_boxes(raw).clamp(0.0, 1.0)
    scores = torch.sqrt(torch.sigmoid(raw[..., FIRST_CLASS:]) * torch.sigmoid(raw[..., CENTERNESS : CENTERNESS + 1]))
    return boxes, scores


#: The exported detection graph's outputs after ``logits`` (the raw rows).
FINAL_OUTPUTS = ("boxes", "scores", "labels", "batch_index")


class FinalDetections(nn.Module):
    """The exported graph: the detector's raw rows (``logits``, for parity) and the final
    detections of every image in the batch: ``boxes`` (x1 y1 x2 y2 in input pixels),
    ``scores``, ``labels`` (class indices) and ``batch_index`` (whose image), after
    class-aware NMS, at most :data:`MAX_DETECTIONS` per image, best first."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        from adapt.plugins.detection.post import Detections

        self.detector = detector
        self.final = Detections(SCORE_THRESHOLD, IOU_THRESHOLD, max_detections=MAX_DETECTIONS)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.detector(pixel_values)
        boxes, scores, labels, images = self.final(*boxes_and_scores(raw))
        return raw, boxes * float(pixel_values.shape[-1]), scores, labels, images
