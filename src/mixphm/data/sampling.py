"""The low-resource protocol: k training and k dev questions drawn from the training split.

For seed s the training pool, in file order, is shuffled with Python's ``random`` seeded
with s (as the reference code does); the first k questions are D_train, the next k D_dev.
A sampled split round-trips through a small JSON manifest of question ids.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mixphm.data.examples import DataError, VQADataset
from mixphm.data.loaders import read_json

K_VALUES = (16, 32, 64, 100, 500, 1000)
SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class LowResourceSplit:
    k: int
    seed: int
    train: VQADataset
    dev: VQADataset


def sample_low_resource(pool: VQADataset, k: int, seed: int) -> LowResourceSplit:
    """D_train and D_dev of k questions each, disjoint, from ``pool`` (a training split)."""
    if k < 1:
        raise DataError(f"k must be a positive number of questions, got {k}")
    if 2 * k > len(pool):
        raise DataError(
            f"k={k} needs {2 * k} questions (k to train, k for dev) but the "
            f"{pool.name} {pool.split} pool has only {len(pool)}"
        )
    ids = [e.question_id for e in pool.examples]
    random.Random(seed).shuffle(ids)
    return LowResourceSplit(
        k,
        seed,
        pool.subset(ids[:k], f"train-k{k}-s{seed}"),
        pool.subset(ids[k : 2 * k], f"dev-k{k}-s{seed}"),
    )


def write_manifest(split: LowResourceSplit, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "dataset": split.train.name,
        "pool": split.train.source,
        "k": split.k,
        "seed": split.seed,
        "train": [e.question_id for e in split.train.examples],
        "dev": [e.question_id for e in split.dev.examples],
    }
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: str | Path, pool: VQADataset) -> LowResourceSplit:
    """The split a manifest names, resolved against ``pool`` (the same training split)."""
    path = Path(path)
    manifest = read_json(path)
    try:
        k, seed, train, dev = (manifest[key] for key in ("k", "seed", "train", "dev"))
    except (KeyError, TypeError):
        raise DataError(f"{path}: a manifest needs the fields k, seed, train and dev") from None
    if manifest.get("dataset") != pool.name:
        raise DataError(f"{path}: manifest is for {manifest.get('dataset')!r}, not {pool.name!r}")
    if len(train) != k or len(dev) != k or set(train) & set(dev):
        raise DataError(f"{path}: train and dev must be {k} disjoint question ids each")
    return LowResourceSplit(
        k, seed, pool.subset(train, f"train-k{k}-s{seed}"), pool.subset(dev, f"dev-k{k}-s{seed}")
    )
