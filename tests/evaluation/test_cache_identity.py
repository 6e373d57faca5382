"""The evaluation embedding cache and index reuse are keyed by the model's fingerprint, not
its name: a retrained model (same name, other weights) never reads the old vectors."""

from __future__ import annotations

import numpy as np
import pytest

import clipsift
from clipsift.errors import ModelMismatch
from clipsift.evaluation.datasets import EmbeddingCache, embed_dataset, load_dataset
from tests.evaluation.test_evaluate import _small_copy, extract_cifar
from tests.support.tinymodels import save_named_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("named")
    return (clipsift.load(str(save_named_folder(base / "a" / "mymodel", 1))),
            clipsift.load(str(save_named_folder(base / "b" / "mymodel", 2))))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cifar = extract_cifar(tmp_path_factory.mktemp("cifar") / "c", per_class=3, classes=2)
    return load_dataset(_small_copy(cifar, tmp_path_factory.mktemp("ds") / "ds",
                                    sorted(p.name for p in cifar.iterdir()), 3))


def test_cache_is_keyed_by_fingerprint_not_name(models, dataset, tmp_path):
    a, b = models
    assert a.name == b.name
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first = embed_dataset(a, dataset, cache=cache, workers=0)
        second = embed_dataset(b, dataset, cache=cache, workers=0)
        again = embed_dataset(a, dataset, cache=cache, workers=0)
    assert (first.encoded, second.from_cache, second.encoded) == (6, 0, 6)
    assert not np.allclose(first.vectors, second.vectors, atol=1e-3)
    np.testing.assert_allclose(second.vectors, embed_dataset(b, dataset, workers=0).vectors,
                               atol=1e-6)
    assert (again.from_cache, again.encoded) == (6, 0)
    assert a.fingerprint != b.fingerprint


def test_index_reuse_needs_the_same_fingerprint(models, dataset, tmp_path):
    from clipsift.index.index import Index

    a, b = models
    with Index(tmp_path / "i.db", a) as idx:
        idx.add([dataset.root], workers=0)
    assert embed_dataset(a, dataset, index=tmp_path / "i.db", workers=0).from_index == 6
    with pytest.raises(ModelMismatch, match="mymodel"):
        embed_dataset(b, dataset, index=tmp_path / "i.db", workers=0)
