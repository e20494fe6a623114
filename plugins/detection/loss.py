"""FCOS's training targets and loss, on the raw rows of adapt.plugins.detection.detector.

Targets (Tian et al., "FCOS", 2019, with centre sampling): a location is positive for a
true box when it lies inside the box and within 1.5 strides of its centre, and the
box's largest edge distance suits the location's level (up to 8 strides; above 4
strides of the next finer level); of several such boxes it takes the smallest. Loss:
sigmoid focal loss on the classes over every location, GIoU on the positives' boxes
(weighted by their centerness target), binary cross-entropy on centerness, each
divided by the positives' count. Focal and GIoU losses are torchvision's.

Labels, as the detection collator makes them: ``(batch, boxes, 5)`` rows ``class, x1,
y1, x2, y2`` in fractions of the image's width and height; padding rows have class
``-100``.
"""

from __future__ import annotations

import torch

from adapt.plugins.detection.detector import CENTERNESS, CENTRE, FIRST_CLASS, STRIDE, decode_boxes

#: How many strides from a box's centre a location may be and still be positive.
CENTRE_RADIUS = 1.5


def assign(raw: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per location: positive?, its class (-1 where negative) and its true box (x1 y1 x2 y2)."""
    points, stride = raw[..., CENTRE].detach(), raw[..., STRIDE].detach()  # (B, N, 2), (B, N)
    classes, boxes = labels[..., 0], labels[..., 1:5]  # (B, M), (B, M, 4)
    px, py = points[..., 0:1], points[..., 1:2]  # (B, N, 1)
    left, top = px - boxes[:, None, :, 0], py - boxes[:, None, :, 1]
    right, bottom = boxes[:, None, :, 2] - px, boxes[:, None, :, 3] - py  # (B, N, M)
    distances = torch.stack([left, top, right, bottom], dim=-1)
    inside = distances.min(dim=-1).values > 0
    centre_x, centre_y = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    radius = (CENTRE_RADIUS * stride)[..., None]
    near = ((px - centre_x[:, None, :]).abs() < radius) & ((py - centre_y[:, None, :]).abs() < radius)
    reach = distances.max(dim=-1).values
    finest, coarsest = stride.min(), stride.max()
    lower = torch.where(stride == finest, torch.zeros_like(stride), 4 * stride)[..., None]
    upper = torch.where(stride == coarsest, torch.full_like(stride, float("inf")), 8 * stride)[..., None]
    fits = inside & near & (reach >= lower) & (reach <= upper) & (classes[:, None, :] >= 0)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[:, None, :].expand_as(reach)
    area = torch.where(fits, area, torch.full_like(area, float("inf")))
    smallest, which = area.min(dim=-1)
    positive = torch.isfinite(smallest)
    target_class = torch.where(positive, classes.gather(1, which).long(), torch.full_like(which, -1))
    target_box = boxes.gather(1, which[..., None].expand(-1, -1, 4))
    return positive, target_class, target_box


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness of a location in its box: 1 at the centre, 0 at an edge."""
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    across = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-12)
    down = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-12)
    return torch.sqrt((across * down).clamp(min=0))


def fcos_loss(raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal + GIoU + centerness loss of a batch (see the module's docstring)."""
    import torch.nn.functional as F
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    raw = raw.float()
    positive, target_class, target_box = assign(raw, labels.float())
    logits = raw[..., FIRST_CLASS:]
    onehot = torch.zeros_like(logits)
    onehot[positive] = F.one_hot(target_class[positive], logits.shape[-1]).to(logits.dtype)
    count = positive.sum().clamp(min=1).float()
    loss = sigmoid_focal_loss(logits, onehot, reduction="sum") / count
    if not positive.any():
        return loss
    rows, truth = raw[positive], target_box[positive]
    weight = centerness_target(rows[:, CENTRE], truth)
    giou = generalized_box_iou_loss(decode_boxes(rows), truth, reduction="none")
    loss = loss + (giou * weight).sum() / weight.sum().clamp(min=1e-6)
    return loss + F.binary_cross_entropy_with_logits(rows[:, CENTERNESS], weight, reduction="sum") / count
