"""Final detections inside the model: the same as a plain per-class NMS with torchvision,
and the same again from the exported ONNX graph (NonMaxSuppression) in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import nms

from adapt.plugins.detection.post import Detections


def candidates(seed: int, n: int = 300, classes: int = 4, peak: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(n, 2, generator=generator) * 200
    sizes = 10 + torch.rand(n, 2, generator=generator) * 60
    boxes = torch.cat([corners, corners + sizes], 1)
    scores = torch.rand(n, classes, generator=generator) * peak
    return boxes, scores


def operators(graph):
    """Every operator of a graph, those inside If/Loop bodies included."""
    for node in graph.node:
        yield node.op_type
        for attribute in node.attribute:
            for body in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                yield from operators(body)


def reference(boxes, scores, threshold, iou, limit):
    """Every (box, class) above the threshold, NMS class by class, the best ``limit``."""
    found = []
    for c in range(scores.shape[1]):
        mask = scores[:, c] > threshold
        for i in nms(boxes[mask], scores[mask, c], iou).tolist():
            found.append((float(scores[mask, c][i]), c, boxes[mask][i]))
    found.sort(key=lambda f: -f[0])
    return found[:limit]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_detections_are_a_per_class_nms_of_the_candidates(seed):
    boxes, scores = candidates(seed)
    module = Detections(score_threshold=0.3, iou_threshold=0.5, candidates=10_000, max_detections=50)
    got_boxes, got_scores, got_labels, images = module(boxes[None], scores[None])
    assert images.tolist() == [0] * len(images)
    expected = reference(boxes, scores, 0.3, 0.5, 50)
    assert got_scores.tolist() == pytest.approx([e[0] for e in expected])
    assert got_labels.tolist() == [e[1] for e in expected]
    assert torch.equal(got_boxes, torch.stack([e[2] for e in expected]))


def test_the_exported_graph_returns_the_same_detections(tmp_path):
    module = Detections(score_threshold=0.3, iou_threshold=0.5, candidates=600, max_detections=40).eval()
    boxes, scores = candidates(0)
    path = tmp_path / "post.onnx"
    torch.onnx.export(module, (boxes[None], scores[None]), str(path), input_names=["candidate_boxes", "candidate_scores"], output_names=["boxes", "scores", "labels", "images"], opset_version=17, dynamo=False, dynamic_axes={"candidate_boxes": {0: "batch"}, "candidate_scores": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "NonMaxSuppression" in set(operators(__import__("onnx").load(str(path)).graph))
    for seeds, peak in (((0,), 1.0), ((5, 6), 1.0), ((7,), 0.2)):  # peak 0.2: nothing above the threshold, an empty answer
        pairs = [candidates(seed, peak=peak) for seed in seeds]
        boxes, scores = torch.stack([b for b, _ in pairs]), torch.stack([s for _, s in pairs])
        want = [t.numpy() for t in module(boxes, scores)]
        got = session.run(None, {"candidate_boxes": boxes.numpy(), "candidate_scores": scores.numpy()})
        assert len(got[0]) == len(want[0]) and (peak < 0.3) == (len(got[0]) == 0)
        for a, b in zip(want, got):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_a_batch_gives_each_image_its_own_detections():
    """Two images in one call: each gets exactly what it gets alone (NMS never crosses
    images), at most ``max_detections`` each, and the image index says whose it is."""
    module = Detections(score_threshold=0.3, iou_threshold=0.5, candidates=10_000, max_detections=20)
    pairs = [candidates(seed) for seed in (3, 4)]
    boxes, scores, labels, images = module(torch.stack([b for b, _ in pairs]), torch.stack([s for _, s in pairs]))
    for index, (b, s) in enumerate(pairs):
        alone = module(b[None], s[None])
        mine = images == index
        assert int(mine.sum()) == len(alone[0]) == 20
        assert torch.equal(boxes[mine], alone[0]) and torch.equal(labels[mine], alone[2])
        assert scores[mine].tolist() == alone[1].tolist()
