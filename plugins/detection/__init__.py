"""The detection family: object detection: the task (FCOS loss, COCO mAP by pycocotools, augmentation), the detector
head with NMS in the graph, box helpers, the COCO and YOLO sources, and the example-set builder (python -m
adapt.plugins.detection.example_set).

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
