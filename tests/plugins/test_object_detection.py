"""object-detection: FCOS targets and loss, decoding to final boxes, augmentation that keeps
boxes true, and the agreement of two sets of detections. The model here is a tiny detector
on timm's smallest MobileNetV3 (random weights), so each test takes a second or two."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.plugins.detection.augment import flip_and_crop
from adapt.plugins.detection.loss import assign
from adapt.plugins.detection.detector import FIRST_CLASS, boxes_and_scores
from adapt.host import make_host
from adapt.interfaces import IGNORE_INDEX


@pytest.fixture(scope="module")
def task():
    return make_host().tasks.get("object-detection")


def rows_for(points: list[tuple[float, float, float]], classes: int = 3) -> torch.Tensor:
    """Raw rows (1, N, 8 + classes) at the given (px, py, stride), every other column zero."""
    raw = torch.zeros(1, len(points), FIRST_CLASS + classes)
    raw[0, :, 0:3] = torch.tensor(points)
    return raw


def test_a_location_is_positive_for_the_smallest_box_it_lies_in_at_its_level():
    # fine level (stride 0.05, boxes reaching up to 0.4): locations near a small box's
    # centre; coarse level (0.1, the coarsest: boxes reaching 0.4 and more): one location
    raw = rows_for([(0.30, 0.30, 0.05), (0.32, 0.30, 0.05), (0.60, 0.60, 0.05), (0.35, 0.35, 0.1), (0.9, 0.9, 0.05)])
    small = [2.0, 0.25, 0.25, 0.35, 0.35]  # class 2, 0.1 of the side: the fine level's size
    large = [1.0, 0.0, 0.0, 0.9, 0.9]  # class 1, holds every location but the last
    padding = [IGNORE_INDEX, 0.0, 0.0, 1.0, 1.0]
    positive, classes, boxes = assign(raw, torch.tensor([[large, small, padding]]))
    assert positive.tolist() == [[True, True, False, True, False]]
    assert classes.tolist() == [[2, 2, -1, 1, -1]]  # the smallest box wins where both fit
    assert boxes[0, 3].tolist() == pytest.approx(large[1:])


def test_perfect_raw_outputs_decode_to_the_true_boxes_and_map_1(task):
    """Rows that point exactly at the true box with a confident class decode, through NMS,
    to that box: pycocotools then scores mAP 1.0, and mAP 0 once the class is wrong."""
    raw = rows_for([(0.3, 0.3, 0.05), (0.7, 0.6, 0.05), (0.1, 0.9, 0.05)])
    raw[0, :, FIRST_CLASS:] = -9.0
    truth = [[0, 0.2, 0.25, 0.4, 0.35], [2, 0.6, 0.5, 0.75, 0.7]]
    for row, (label, x1, y1, x2, y2) in enumerate(truth):
        px, py = raw[0, row, 0:2].tolist()
        raw[0, row, 3:7] = torch.tensor([px - x1, py - y1, x2 - px, y2 - py])
        raw[0, row, 7] = 9.0
        raw[0, row, FIRST_CLASS + label] = 9.0
    labels = torch.tensor([[[float(v) for v in t] for t in truth]])
    predictions, references = task.decode(raw, labels)
    assert sorted(predictions[0]["labels"]) == [0, 2] and len(predictions[0]["boxes"]) == 2
    assert sorted(map(tuple, np.round(predictions[0]["boxes"], 5).tolist())) == sorted(tuple(t[1:]) for t in truth)
    assert references[0]["labels"] == [0, 2] and np.allclose(references[0]["boxes"], [t[1:] for t in truth])
    assert task.metrics(predictions, references, ["a", "b", "c"])["map50"] == pytest.approx(1.0)
    wrong = raw.clone()
    wrong[0, :, FIRST_CLASS:] = wrong[0, :, FIRST_CLASS:].flip(-1)
    assert task.metrics(task.decode(wrong, labels)[0], references, ["a", "b", "c"])["map50"] == 0.0


def test_boxes_and_scores_clip_to_the_image():
    raw = rows_for([(0.02, 0.98, 0.05)])
    raw[0, 0, 3:7] = torch.tensor([0.1, 0.1, 0.1, 0.1])
    boxes, scores = boxes_and_scores(raw)
    assert boxes[0, 0].tolist() == pytest.approx([0.0, 0.88, 0.12, 1.0])
    assert scores.shape == (1, 1, 3) and float(scores.max()) == pytest.approx(0.5)


def test_the_loss_falls_when_a_tiny_detector_fits_one_batch(task):
    host = make_host()
    backbone = host.backbones.get("mobilenet")
    options = backbone.options_schema(image_size=64, head={"channels": 16, "depth": 1})
    built = task.wrap_model(backbone.build("object-detection", 2, checkpoint=None, arch="mobilenetv3_small_050", options=options), 2)  # the task puts its head on the features
    collate = backbone.collator(built, options)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[8:24, 30:50] = 255
    batch = collate([{"image": image, "boxes": [[30.0, 8.0, 50.0, 24.0]], "labels": [1]}, {"image": image[:, ::-1].copy(), "boxes": [[14.0, 8.0, 34.0, 24.0]], "labels": [0]}])
    assert batch["labels"][0].tolist() == [[1.0, 30 / 64, 8 / 64, 50 / 64, 24 / 64]]
    optimiser = torch.optim.Adam(built.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task.loss(built.model(batch["pixel_values"]), batch["labels"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def square_example(rng_seed: int) -> dict:
    """A black image with one white rectangle and the rectangle's true box."""
    rng = np.random.default_rng(rng_seed)
    image = np.zeros((90, 120, 3), dtype=np.uint8)
    x1, y1 = int(rng.integers(0, 80)), int(rng.integers(0, 50))
    x2, y2 = x1 + int(rng.integers(10, 40)), y1 + int(rng.integers(10, 40))
    image[y1:y2, x1:x2] = 255
    return {"image": image, "size": [120, 90], "boxes": [[float(x1), float(y1), float(x2), float(y2)]], "labels": [0]}


@pytest.mark.parametrize("seed", range(12))
def test_flip_and_crop_keep_each_box_on_its_object(seed):
    """After augmentation, each kept box still frames the white pixels (clipped where the
    crop cut it), and a box that mostly left the crop is dropped."""
    example = square_example(seed)
    out = flip_and_crop(example, np.random.default_rng(seed))
    white = np.argwhere(out["image"][:, :, 0] > 0)
    assert out["size"] == [out["image"].shape[1], out["image"].shape[0]]
    if not out["boxes"]:
        x1, y1, x2, y2 = example["boxes"][0]
        assert len(white) < 0.6 * (x2 - x1) * (y2 - y1)  # most of the object is outside the crop
        return
    (ys, xs), box = white.min(0), out["boxes"][0]
    assert box == [float(xs), float(ys), float(white[:, 1].max() + 1), float(white[:, 0].max() + 1)]
    assert out["labels"] == [0]


def test_agreement_counts_confident_reference_boxes_found_again(task):
    reference = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], "scores": [0.9, 0.8, 0.1], "labels": [1, 2, 1]}]
    same = [{"boxes": [[0, 0, 10, 10.2], [20, 20, 30, 30]], "scores": [0.5, 0.8], "labels": [1, 2]}]
    assert task.agreement(reference, same) == 1.0  # the 0.1 box is below the compared scores
    relabelled = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.8], "labels": [1, 0]}]
    assert task.agreement(reference, relabelled) == 0.5
    moved = [{"boxes": [[0, 0, 10, 10], [23, 20, 33, 30]], "scores": [0.9, 0.8], "labels": [1, 2]}]
    assert task.agreement(reference, moved) == 0.5
    assert task.agreement(reference, [{"boxes": [], "scores": [], "labels": []}]) == 0.0


@pytest.mark.parametrize("method_name", ["freeze", "lora", "adapters"])
def test_every_method_adapts_the_detector_and_merges_exactly(method_name, task):
    """A few steps of the detection loss, then the merge reproduces the raw head outputs
    (LoRA and freeze folded, adapters inline), and the adapter state round-trips."""
    from adapt.testing import check_method

    host = make_host()
    backbone = host.backbones.get("mobilenet")
    options = backbone.options_schema(image_size=64, head={"channels": 16, "depth": 1})

    def build():
        torch.manual_seed(0)
        return task.wrap_model(backbone.build("object-detection", 2, checkpoint=None, arch="mobilenetv3_small_050", options=options), 2)  # the task puts its head on the features

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[10:40, 20:44] = 200
    batch = backbone.collator(build(), options)([{"image": image, "boxes": [[20.0, 10.0, 44.0, 40.0]], "labels": [1]}] * 2)
    merged = check_method(host.methods.get(method_name), build=build, batch=batch, loss=task.loss, atol=1e-4)
    assert merged.folded == (method_name != "adapters")


def test_check_exporter_compares_every_graph_output_of_a_detector_with_nms_inside(task, tmp_path):
    """adapt.testing.check_exporter on a task's graph_outputs (logits, then boxes after NMS):
    each output by name, through the exporter's load_outputs."""
    from adapt.interfaces import OnnxIO
    from adapt.testing import check_exporter

    host = make_host()
    backbone = host.backbones.get("mobilenet")
    options = backbone.options_schema(image_size=64, head={"channels": 16, "depth": 1})
    torch.manual_seed(0)
    built = task.wrap_model(backbone.build("object-detection", 2, checkpoint=None, arch="mobilenetv3_small_050", options=options), 2)  # the task puts its head on the features
    module, names = task.graph_outputs(built.model.eval())
    base = backbone.onnx_io(built)
    io = OnnxIO(base.input_names, (*base.output_names, *names), {**base.dynamic_axes, **{n: {0: "detections"} for n in names}})
    inputs = backbone.example_inputs(built, 2)
    check_exporter(host.exporters.get("onnx"), model=module, inputs=inputs, io=io, path=tmp_path / "det.onnx")


def test_a_backbone_without_feature_levels_is_a_clear_error(task):
    """The detector's head goes on the backbone's feature levels (BuiltModel.pyramid): a model
    without them is one message naming what is missing and which backbone has it."""
    from adapt.errors import ConfigError
    from adapt.testing import tiny_image_model

    with pytest.raises(ConfigError) as info:
        task.wrap_model(tiny_image_model(), 2)
    assert "BuiltModel.pyramid" in info.value.message and "mobilenet" in info.value.hint
