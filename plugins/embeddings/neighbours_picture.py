"""``neighbours.png``: what an image-embedding model finds. For a few test images (the
queries, left), their nearest other test images by cosine, each titled with its identity and
cosine, in green where it is the query's identity and red where not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

#: Queries shown (rows) and neighbours per query (columns after the query).
QUERIES, NEIGHBOURS = 4, 4


def nearest(embeddings: Any, query: int, count: int) -> list[tuple[int, float]]:
    """The ``count`` examples nearest ``query`` by cosine (the embeddings are normalised), itself left out."""
    import numpy as np

    cosines = embeddings @ embeddings[query]
    cosines[query] = -np.inf
    order = np.argsort(-cosines, kind="stable")[:count]
    return [(int(i), float(cosines[i])) for i in order]


def draw_neighbours(
    examples: Sequence[Mapping[str, Any]],
    predictions: Sequence[Sequence[float]],
    label_names: Sequence[str],
    folder: Path,
) -> dict[str, Path]:
    if len(examples) < 2:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from adapt.report import save_figure
    from adapt.web_export import rgb_picture

    embeddings = np.asarray(predictions, dtype=np.float32)
    names = [str(label_names[int(e["label"])]) for e in examples]
    rows, columns = min(QUERIES, len(examples)), 1 + min(NEIGHBOURS, len(examples) - 1)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), dpi=100, squeeze=False)
    for row in range(rows):
        shown = [(row, None), *nearest(embeddings, row, columns - 1)]
        for column, (index, cosine) in enumerate(shown):
            axis = axes[row][column]
            axis.imshow(rgb_picture(examples[index]["image"]))
            axis.set_xticks([])
            axis.set_yticks([])
            if cosine is None:
                axis.set_title(f"query: {names[index]}", fontsize=8)
            else:
                colour = "green" if names[index] == names[row] else "red"
                axis.set_title(f"{names[index]} {cosine:.2f}", fontsize=8, color=colour)
    fig.suptitle("test images (left) and their nearest test images by cosine", fontsize=9)
    return {"neighbours": save_figure(fig, folder / "neighbours.png")}
