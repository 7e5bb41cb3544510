"""
Evaluation: the paper's metrics in numpy (numpy arrays in, floats out).

Where we differ from the authors' code: a tie between chosen and rejected rewards counts half, not as correct (their
argmax picks the first of equal scores, so identical truncated pairs, which always tie in bf16, counted as wins).
"""
import numpy as np


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs where the chosen response gets the higher reward; ties count half."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    return float(np.mean((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected)))


def mcq_accuracy(r_correct, r_wrong):
    """r_correct (N,), r_wrong (N, K): fraction of questions whose correct answer gets the strictly highest reward;
    a tie for the top among m answers counts 1/m (the expected score of breaking ties at random)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    above = (r_wrong > r_correct[:, None]).sum(1)
    tied = (r_wrong == r_correct[:, None]).sum(1)
    return float(np.mean((above == 0) / (1 + tied)))


def mcq_rank(r_correct, r_wrong):
    """Mean rank of the correct answer among K + 1 (0 = best; ties take the average of the ranks they span)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    return float(np.mean((r_wrong > r_correct[:, None]).sum(1) + 0.5 * (r_wrong == r_correct[:, None]).sum(1)))


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def ranks(x):
    """1-based ranks, ties sharing the average of the ranks they span (as scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # each run of equal values [start, end) gets rank (start + end + 1) / 2
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    r = np.empty(len(x))
    r[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return r


def spearman(x, y):
    return pearson(ranks(x), ranks(y))
