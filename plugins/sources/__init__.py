"""The sources family: the generic data sources: csv, jsonl, text folders, CoNLL, image folders, scikit-learn's digits.

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
