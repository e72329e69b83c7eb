"""The 10-fold verification protocol against a literal re-statement of insightface's loop."""
from __future__ import annotations

import numpy as np
import pytest

from facetrain.eval.verification import contiguous_folds, evaluate


def reference_accuracy(embeddings, issame, nrof_folds=10):
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    sizes = [n // nrof_folds + (1 if k < n % nrof_folds else 0) for k in range(nrof_folds)]
    starts = np.cumsum([0] + sizes)
    accs = []
    for k in range(nrof_folds):
        test = np.arange(starts[k], starts[k + 1])
        train = np.array([i for i in range(n) if i not in set(test)])
        best_acc, best_t = -1, None
        for t in thresholds:
            acc = np.mean((dist[train] < t) == issame[train])
            if acc > best_acc:
                best_acc, best_t = acc, t
        accs.append(np.mean((dist[test] < best_t) == issame[test]))
    return np.mean(accs), np.std(accs)


def test_matches_reference_on_random_embeddings():
    rng = np.random.default_rng(0)
    issame = rng.random(303) < 0.5
    base = rng.normal(size=(303, 16))
    other = np.where(issame[:, None], base + 0.8 * rng.normal(size=base.shape), rng.normal(size=base.shape))
    emb = np.stack([base, other], 1).reshape(-1, 16)
    result = evaluate(emb, issame)
    acc, std = reference_accuracy(emb, issame)
    assert result["accuracy"] == pytest.approx(acc) and result["std"] == pytest.approx(std)
    assert 0.6 < result["accuracy"] < 1.0


def test_perfectly_separable_pairs_score_one():
    issame = np.array([True, False] * 50)
    emb = []
    for same in issame:
        emb += [[1.0, 0.0], [1.0, 0.0] if same else [0.0, 1.0]]
    result = evaluate(np.array(emb), issame)
    assert result["accuracy"] == 1.0 and result["std"] == 0.0
    # distances are 0 (same) and 2 (different): the smallest separating threshold is 0.01
    assert result["best_threshold"] == pytest.approx(0.01)


def test_folds_are_contiguous_like_kfold():
    folds = contiguous_folds(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate(folds), np.arange(23))


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="two per pair"):
        evaluate(np.zeros((5, 4)), np.zeros(3, dtype=bool))
