"""From a detector's per-location outputs to final detections, inside the model, so the
exported ONNX graph returns finished boxes and a device needs no post-processing code.

``Detections`` takes a batch of candidate boxes ``(B, N, 4)`` (x1 y1 x2 y2) and class
scores ``(B, N, C)`` (probabilities) and keeps, per image: the ``candidates`` best
(box, class) pairs above ``score_threshold``, then class-aware non-maximum suppression
(torchvision's ``batched_nms``, which exports as ONNX ``NonMaxSuppression``; the group
of a candidate is its image and class, so one call serves the whole batch), then at
most ``max_detections`` per image. Outputs, best first: ``boxes``
(K x 4), ``scores`` (K), ``labels`` (K, class indices) and ``images`` (K, the index of
the image in the batch: all zeros for the one image a device sends).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms  # imported before any export: it registers NMS's ONNX form


class Detections(nn.Module):
    """Score threshold, top candidates, class-aware NMS, the best ``max_detections`` per image."""

    def __init__(
        self,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        candidates: int = 1000,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.candidates, self.max_detections = candidates, max_detections

    def forward(
        self, boxes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, _, classes = scores.shape
        flat = scores.flatten(1)  # (B, N * C): every (location, class) pair
        best, order = flat.topk(min(self.candidates, flat.shape[1]), dim=1)
        images = torch.arange(batch, device=scores.device)[:, None].expand_as(order).flatten()
        best, order = best.flatten(), order.flatten()
        keep = best > self.score_threshold
        best, order, images = best[keep], order[keep], images[keep]
        labels = order % classes
        chosen = boxes[images, torch.div(order, classes, rounding_mode="floor")]
        kept = batched_nms(chosen, best, images * classes + labels, self.iou_threshold)  # best first
        mine = images[kept][:, None] == torch.arange(batch, device=scores.device)[None, :]  # (K, B)
        rank = (mine.long().cumsum(0) * mine).sum(1)  # 1 for an image's best detection, 2 for its next...
        kept = kept[rank <= self.max_detections]
        return chosen[kept], best[kept], labels[kept], images[kept]
