"""The classification family: text, token (NER) and image classification.

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
