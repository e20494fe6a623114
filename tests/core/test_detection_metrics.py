"""COCO mAP by pycocotools on answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from adapt.plugins.detection.metrics import coco_map

TRUTH = [{"boxes": [[10, 10, 60, 60]], "labels": [2]}]


def test_a_perfect_detection_scores_one():
    result = coco_map([{"boxes": [[10, 10, 60, 60]], "scores": [0.9], "labels": [2]}], TRUTH, 5)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)


def test_a_box_of_iou_0_54_counts_at_one_of_the_ten_thresholds():
    # shifted right by 15: intersection 35 x 50 = 1750, union 2500 + 2500 - 1750 = 3250, IoU 0.538:
    # a hit at IoU 0.5 only, of the thresholds 0.5, 0.55, ..., 0.95, so mAP = 1/10
    result = coco_map([{"boxes": [[25, 10, 75, 60]], "scores": [0.9], "labels": [2]}], TRUTH, 5)
    assert result["map50"] == pytest.approx(1.0) and result["map"] == pytest.approx(0.1)


def test_a_higher_ranked_false_positive_halves_precision():
    # a same-class box elsewhere ranked above the hit leaves precision 1/2 at recall 1: COCO's
    # interpolated AP 0.5 for that class; the other class's object is missed: AP 0
    preds = [{"boxes": [[100, 100, 150, 150], [10, 10, 60, 60]], "scores": [0.95, 0.9], "labels": [2, 2]}]
    result = coco_map(preds, [{"boxes": [[10, 10, 60, 60], [200, 200, 201, 201]], "labels": [2, 4]}], 5)
    assert result["map50"] == pytest.approx((0.5 + 0.0) / 2)  # class 2: AP 0.5; class 4: missed, AP 0


def test_no_predictions_score_zero_and_no_objects_are_nan():
    assert coco_map([{"boxes": [], "scores": [], "labels": []}], TRUTH, 5)["map50"] == 0.0
    assert math.isnan(coco_map([{"boxes": [[1, 1, 5, 5]], "scores": [0.5], "labels": [0]}], [{"boxes": [], "labels": []}], 5)["map"])
