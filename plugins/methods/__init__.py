"""The methods family: the built-in methods: freeze, LoRA, bottleneck adapters, and their layers.

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
