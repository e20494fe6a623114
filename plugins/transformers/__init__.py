"""The transformers family: the transformers backbones (any encoder or decoder the Auto classes map; bert and roberta as
names for it), their export form and merged folder, the [CLS]-only last layer, and the decoders: causal LM helpers, the
KV-cache export check and the text-generation task.

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
