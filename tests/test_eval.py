"""eval.py's metrics against scipy and closed forms. Run: python -m pytest -q tests/test_eval.py"""
import numpy as np
import pytest
import scipy.stats

from eval import mcq_accuracy, mcq_rank, pairwise_accuracy, pearson, ranks, spearman


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.5]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_mcq_accuracy_and_rank():
    correct = np.array([5.0, 1.0, 2.0, 3.0])
    wrong = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
    assert mcq_accuracy(correct, wrong) == pytest.approx((1 + 0 + 1 / 3 + 1 / 2) / 4)
    assert mcq_rank(correct, wrong) == pytest.approx((0 + 1 + 1 + 0.5) / 4)
    # rank with ties = the average of scipy's descending ranks over the K + 1 answers, minus 1
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 5)).astype(float)  # many ties
    expected = np.mean([scipy.stats.rankdata(-row)[0] - 1 for row in scores])
    assert mcq_rank(scores[:, 0], scores[:, 1:]) == pytest.approx(expected)
    # two answers: multiple-choice accuracy is pairwise accuracy
    assert mcq_accuracy(scores[:, 0], scores[:, 1:2]) == pytest.approx(pairwise_accuracy(scores[:, 0], scores[:, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 7, size=300)  # essay scores 1..6: heavy ties
    rewards = labels + rng.normal(size=300)
    rewards[:50] = np.round(rewards[:50])  # ties on the reward side too
    assert pearson(rewards, labels) == pytest.approx(scipy.stats.pearsonr(rewards, labels)[0], abs=1e-12)
    assert spearman(rewards, labels) == pytest.approx(scipy.stats.spearmanr(rewards, labels)[0], abs=1e-12)
    assert np.array_equal(ranks(labels), scipy.stats.rankdata(labels))
