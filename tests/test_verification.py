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


# ---- known answers ----------------------------------------------------------------------------------
def pair_embeddings(distant: np.ndarray) -> np.ndarray:
    """Rows 2i, 2i+1 identical (squared distance 0) or orthogonal (distance 2) where ``distant[i]``."""
    first = np.tile([1.0, 0.0], (len(distant), 1))
    second = np.where(distant[:, None], [0.0, 1.0], [1.0, 0.0])
    return np.stack([first, second], 1).reshape(-1, 2)


def test_perfectly_separable_roc_figures():
    issame = np.array([True, False] * 1000)  # 1000 negative pairs resolve FAR 1e-3, not 1e-4
    result = evaluate(pair_embeddings(~issame), issame)
    assert result["accuracy"] == 1.0 and result["std"] == 0.0
    assert result["tar_at_far"] == {"1e-3": 1.0, "1e-4": None}
    assert result["auc"] == 1.0 and result["eer"] == 0.0


def test_inverted_pairs():
    """Genuine pairs far apart, impostors identical: the best rule is 'all different' (threshold 0, the
    smallest of the tied 'all different'/'all same'), right on the half of each fold that is negative."""
    issame = np.array([True, False] * 1000)
    result = evaluate(pair_embeddings(issame), issame)
    assert result["accuracy"] == 0.5 and result["std"] == 0.0 and result["best_threshold"] == 0.0
    assert result["tar_at_far"] == {"1e-3": 0.0, "1e-4": None}
    assert result["auc"] == 0.0 and result["eer"] == 1.0


def test_tied_distances():
    """Every pair at distance 0: thresholds from 0.01 up tie at 'all same', the smallest (0.01) is taken
    because each 9-fold train part is mostly genuine, and fold accuracy is the fold's genuine share."""
    genuine = [5, 6, 7, 8, 9, 10, 7, 7, 7, 7]
    issame = np.concatenate([[True] * g + [False] * (10 - g) for g in genuine])
    result = evaluate(np.ones((200, 4)), issame)
    shares = np.array(genuine) / 10
    assert result["accuracy"] == pytest.approx(shares.mean()) and result["std"] == pytest.approx(shares.std())
    assert result["best_threshold"] == pytest.approx(0.01)
    assert result["auc"] == 0.5 and result["eer"] == 0.5
    assert result["tar_at_far"] == {"1e-3": None, "1e-4": None}  # 27 negative pairs resolve neither


def test_folds_on_the_official_lfw_order():
    """LFW: 10 sets of 300 genuine then 300 impostor pairs, each set one fold. Errors on the first and
    last pair of the fourth set stay in that fold; folds shifted by one pair would split them."""
    issame = np.tile(np.repeat([True, False], 300), 10)
    folds = contiguous_folds(6000, 10)
    for k, fold in enumerate(folds):
        assert np.array_equal(fold, np.arange(600 * k, 600 * (k + 1)))
        assert issame[fold[:300]].all() and not issame[fold[300:]].any()
    distant = ~issame
    distant[[1800, 2399]] = ~distant[[1800, 2399]]
    result = evaluate(pair_embeddings(distant), issame)
    fold_accuracy = np.array([1.0] * 3 + [598 / 600] + [1.0] * 6)
    assert result["accuracy"] == pytest.approx(fold_accuracy.mean()) and result["std"] == pytest.approx(fold_accuracy.std())
    assert result["best_threshold"] == pytest.approx(0.01)


# ---- ROC figures against insightface's rule ---------------------------------------------------------
def insightface_tar(labels, scores, far):
    """ijb_11.py, restated: ROC flipped, then the first point of least |fpr - far|."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[index]


def brute_force_eer(labels, scores):
    """The false-accept rate where it meets the false-reject rate, by sweeping every threshold."""
    thresholds = np.unique(scores)
    far = np.array([(scores[~labels] >= t).mean() for t in thresholds])
    frr = np.array([(scores[labels] < t).mean() for t in thresholds])
    i = int(np.argmin(np.abs(far - frr)))
    return far[i], frr[i]


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_figures_match_insightface_and_definitions(seed):
    from sklearn.metrics import roc_auc_score

    from facetrain.eval.roc import far_key, roc, roc_metrics

    rng = np.random.default_rng(seed)
    labels = rng.random(30000) < 0.3
    scores = np.round(rng.normal(labels * 1.5, 1.0), 2)  # rounding makes ties
    fars = (1e-4, 1e-3, 1e-2, 1e-1)
    metrics = roc_metrics(roc(scores, labels), fars)
    for far in fars:
        assert metrics["tar_at_far"][far_key(far)] == insightface_tar(labels, scores, far)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))
    far, frr = brute_force_eer(labels, scores)
    assert min(far, frr) - 1e-3 <= metrics["eer"] <= max(far, frr) + 1e-3


def test_far_is_reported_only_where_the_negatives_resolve_it():
    from facetrain.eval.roc import roc, tar_at_far

    labels = np.array([True] * 10 + [False] * 999)
    scores = np.arange(len(labels), dtype=float)
    assert tar_at_far(roc(scores, labels), 1e-3) is None
    assert tar_at_far(roc(np.append(scores, -1.0), np.append(labels, False)), 1e-3) == 0.0
