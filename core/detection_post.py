"""From a detector's per-location outputs to final detections, inside the model, so the
exported ONNX graph returns finished boxes and a device needs no post-processing code.

``Detections`` takes one image's candidate boxes (N x 4, x1 y1 x2 y2 in input pixels)
and class scores (N x C, probabilities) and keeps: the ``candidates`` best
(box, class) pairs above ``score_threshold``, then class-aware non-maximum
suppression (torchvision's ``batched_nms``, which exports as ONNX
``NonMaxSuppression``), then at most ``max_detections``, best first. Outputs:
``boxes`` (K x 4), ``scores`` (K), ``labels`` (K, class indices), K <= max_detections.
The input size is fixed (detection graphs take one image size), so N is too.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms  # imported before any export: it registers NMS's ONNX form


class Detections(nn.Module):
    """Score threshold, top candidates, class-aware NMS, the best ``max_detections``."""

    def __init__(self, score_threshold: float = 0.05, iou_threshold: float = 0.5, candidates: int = 1000, max_detections: int = 100) -> None:
        super().__init__()
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.candidates, self.max_detections = candidates, max_detections

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        classes = scores.shape[1]
        best, order = scores.flatten().topk(min(self.candidates, scores.numel()))
        keep = best > self.score_threshold
        best, order = best[keep], order[keep]
        labels = order % classes
        chosen = boxes[torch.div(order, classes, rounding_mode="floor")]
        kept = batched_nms(chosen, best, labels, self.iou_threshold)[: self.max_detections]
        return chosen[kept], best[kept], labels[kept]
