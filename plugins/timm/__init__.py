"""The timm family: timm's mobile CNNs (MobileNet, EfficientNet-Lite, ...) as a backbone for classification, detection
and embeddings.

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
