"""The embeddings family: embeddings and recommendation: the image- and text-embedding tasks (ArcFace/CosFace, in-batch
negatives, retrieval metrics, a gallery beside the export), the two-tower recommendation task, its interactions source
and item-table backbone, and the reading-set simulator (python -m adapt.plugins.embeddings.bbc_interactions).

A family package imports adapt's core and its own modules, never another family's
(tests/test_architecture.py)."""
