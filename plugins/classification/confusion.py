"""The confusion matrix picture of a classification run's test split (``Task.draw``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

#: Past this many classes the cells are too small to print their counts in.
MAX_COUNTED_CLASSES = 25


def draw_confusion(
    references: Sequence[int], predictions: Sequence[int], label_names: Sequence[str], folder: Path
) -> dict[str, Path]:
    """``confusion_matrix.png``: true labels down, predicted across, counts in the cells
    (scikit-learn's ConfusionMatrixDisplay); nothing for an empty split."""
    if not references:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    from adapt.report import save_figure

    side = min(4 + 0.45 * len(label_names), 16)
    fig, axes = plt.subplots(figsize=(side, side), dpi=100)
    ConfusionMatrixDisplay.from_predictions(
        list(references),
        list(predictions),
        labels=list(range(len(label_names))),
        display_labels=list(label_names),
        include_values=len(label_names) <= MAX_COUNTED_CLASSES,
        xticks_rotation="vertical",
        colorbar=False,
        ax=axes,
    )
    axes.set_title(f"test split: {len(references)} examples")
    return {"confusion_matrix": save_figure(fig, folder / "confusion_matrix.png")}
