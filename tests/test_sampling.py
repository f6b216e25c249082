"""The low-resource sampler: disjoint k/k splits, seeded, reproducible through manifests."""

import json
import random

import pytest

from mixphm.data import (
    K_VALUES,
    SEEDS,
    DataError,
    load_easy_vqa,
    read_manifest,
    sample_low_resource,
    write_manifest,
)


@pytest.fixture(scope="module")
def pool():
    return load_easy_vqa("train")


def ids(dataset):
    return [e.question_id for e in dataset.examples]


@pytest.mark.parametrize("k", K_VALUES)
def test_train_and_dev_are_disjoint_and_of_size_k(pool, k):
    split = sample_low_resource(pool, k, seed=13)
    assert len(split.train) == len(split.dev) == k
    assert not set(ids(split.train)) & set(ids(split.dev))


def test_same_seed_same_split_other_seed_other_split(pool):
    first = sample_low_resource(pool, 64, seed=42)
    again = sample_low_resource(pool, 64, seed=42)
    assert ids(first.train) == ids(again.train) and ids(first.dev) == ids(again.dev)
    others = [sample_low_resource(pool, 64, seed=s) for s in SEEDS if s != 42]
    assert all(set(ids(o.train)) != set(ids(first.train)) for o in others)


def test_protocol_is_the_reference_shuffle(pool):
    # the reference code: random.seed(s); random.shuffle(data); data[:k], data[k:2k]
    data = [e.question_id for e in pool.examples]
    random.seed(87)
    random.shuffle(data)
    split = sample_low_resource(pool, 100, seed=87)
    assert ids(split.train) == data[:100] and ids(split.dev) == data[100:200]


def test_manifest_round_trip(pool, tmp_path):
    split = sample_low_resource(pool, 32, seed=21)
    path = write_manifest(split, tmp_path / "easy-vqa-k32-s21.json")
    manifest = json.loads(path.read_text())
    assert (manifest["dataset"], manifest["k"], manifest["seed"]) == ("easy-vqa", 32, 21)
    restored = read_manifest(path, pool)
    assert ids(restored.train) == ids(split.train) and ids(restored.dev) == ids(split.dev)


def test_k_larger_than_the_pool_says_how_large_the_pool_is(pool):
    small = pool.subset(ids(pool)[:50], "train")
    with pytest.raises(DataError, match=r"k=32 needs 64 questions .* pool has only 50"):
        sample_low_resource(small, 32, seed=13)
    with pytest.raises(DataError, match="k must be a positive number"):
        sample_low_resource(pool, 0, seed=13)


def test_bad_manifests_are_reported(pool, tmp_path):
    split = sample_low_resource(pool, 16, seed=13)
    path = write_manifest(split, tmp_path / "m.json")
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "dev": manifest["train"]}))
    with pytest.raises(DataError, match="16 disjoint question ids each"):
        read_manifest(path, pool)
    path.write_text(json.dumps({**manifest, "train": ["nope", *manifest["train"][1:]]}))
    with pytest.raises(DataError, match=r"1 question ids not in the dataset, e.g. 'nope'"):
        read_manifest(path, pool)
    path.write_text(json.dumps({**manifest, "dataset": "gqa"}))
    with pytest.raises(DataError, match="manifest is for 'gqa', not 'easy-vqa'"):
        read_manifest(path, pool)
