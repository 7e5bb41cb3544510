"""eval.py's metrics against scipy and closed forms. Run: python -m pytest -q tests/test_eval.py"""
import json
import os
import re

import numpy as np
import pytest
import scipy.stats

import eval as evaluation
import figures
from eval import mcq_accuracy, mcq_rank, pairwise_accuracy, pearson, ranks, spearman


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.5]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    # the released code's rule (--ties correct): r_chosen >= r_rejected, and argmax over [correct, wrong...]
    assert pairwise_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.5], ties="correct") == pytest.approx(3 / 4)
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(300, 5)).astype(float)  # many ties for the top
    assert mcq_accuracy(scores[:, 0], scores[:, 1:], ties="correct") == pytest.approx(np.mean(scores.argmax(1) == 0))
    assert pairwise_accuracy([np.nan, 1.0], [0.0, 1.0], ties="correct") == 0.5  # a non-finite reward never wins


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


def write_summary(folder, task, method, seed, metric, test, rows=None):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"task": task, "method": method, "seed": seed, "metric": metric,
                                                     "test": test, **({"rows": rows} if rows else {})}))


def test_table_shows_every_metric_of_a_task(tmp_path, capsys):
    rng = np.random.default_rng(0)
    essays = {m: [{"pearson": float(p), "spearman": float(s)} for p, s in rng.uniform(-1, 1, (3, 2))]
              for m in ("src-pref", "dial")}
    for m, runs in essays.items():
        for seed, test in enumerate(runs):
            write_summary(tmp_path / "essays" / m / f"seed{seed}", "essays-short2long", m, seed, "pearson", test)
    write_summary(tmp_path / "rated" / "dial", "sentiment-movies-tweets", "dial", 0, "acc",
                  {"acc": 0.6, "pearson": 0.3, "spearman": 0.25, "non_finite": 0})
    lines = evaluation.table(str(tmp_path)).splitlines()
    assert lines[0] == "| task | metric | src-pref | dial |"
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    assert list(rows) == [("essays-short2long", "pearson"), ("essays-short2long", "spearman"),
                          ("sentiment-movies-tweets", "acc"), ("sentiment-movies-tweets", "pearson"),
                          ("sentiment-movies-tweets", "spearman")]  # the main metric first, never non_finite
    x = [r["spearman"] for r in essays["dial"]]
    assert f"{np.mean(x):.3f} +- {scipy.stats.sem(x):.3f} (3)" in rows[("essays-short2long", "spearman")]
    assert rows[("sentiment-movies-tweets", "spearman")].endswith("|  | 0.250 (1) |")


def test_sweep_plots_the_mix_and_the_amount_of_target_data(tmp_path):
    runs = {("dial", 100, 0): [0.5, 0.6], ("dial", 60, 40): [0.7, 0.8], ("dial", 20, 80): [0.55],
            ("dial", 60, 10): [0.6], ("src-tgt-pref", 60, 10): [0.9], ("src-tgt-pref", 60, 40): [0.95, 0.85],
            ("src-pref", 60, 0): [0.4]}  # src-pref: not in Fig. 4
    for (m, n_s, n_t), accs in runs.items():
        for seed, acc in enumerate(accs):
            write_summary(tmp_path / f"{m}-{n_s}-{n_t}" / f"seed{seed}", "t", m, seed, "acc", {"acc": acc},
                          {"source": n_s, "target": n_t})
    points = figures.sweep(str(tmp_path), str(tmp_path / "fig4.png"))
    assert (tmp_path / "fig4.png").stat().st_size > 1000
    mix = {round(f, 3): (m, n) for f, m, _, n in points["mix"][100]}
    assert mix == {0.0: (pytest.approx(0.55), 2), 0.4: (pytest.approx(0.75), 2), 0.8: (pytest.approx(0.55), 1)}
    assert [(n, round(m, 3)) for n, m, _, _ in points["scale"][("src-tgt-pref", 60)]] == [(10, 0.9), (40, 0.9)]
    assert [n for n, *_ in points["scale"][("dial", 60)]] == [10, 40]
    assert ("src-pref", 60) not in points["scale"]
    write_summary(tmp_path / "old", "t", "dial", 0, "acc", {"acc": 0.5})
    with pytest.raises(ValueError, match="does not say how many source and target rows the run used"):
        figures.sweep(str(tmp_path), str(tmp_path / "x.png"))


def test_table_puts_the_papers_table8_beside_odd_one_out(tmp_path):
    for seed, acc in enumerate([0.2, 0.3]):
        write_summary(tmp_path / "o" / f"seed{seed}", "oddoneout-desserts-sauces", "dial", seed, "acc", {"acc": acc})
    write_summary(tmp_path / "s", "sentiment-en-zh", "dial", 0, "acc", {"acc": 0.7})
    lines = evaluation.table(str(tmp_path)).splitlines()
    assert lines[0] == "| task | metric | dial | paper src-pref (Gemma-2b) | paper dial (Gemma-2b) |"
    assert lines[2] == "| oddoneout-desserts-sauces | acc | 0.250 +- 0.050 (2) | 0.400 +- 0.107 (3) | 0.743 +- 0.028 (3) |"
    assert lines[3] == "| sentiment-en-zh | acc | 0.700 (1) |  |  |"


def test_table8_is_the_papers():
    """Our transcription of Table 8 against the paper's text in ../shared (skips where the paper is not beside us)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "paper", "dial_arxiv_2501.00911.txt")
    if not os.path.exists(path):
        pytest.skip("the paper's text (../shared/paper) is not here")
    text = open(path, encoding="utf-8").read()
    body = text[text.index("Table 8:"):text.index("Average", text.index("Table 8:"))]
    pm = r"([\d.]+) \\pm ([\d.]+)"
    found = {(a.lower(), b.lower()): ((float(m1), float(s1)), (float(m2), float(s2)))
             for a, b, m1, s1, m2, s2 in re.findall(r"^(\w+)\t(\w+)\t" + pm + r"\t" + pm, body, re.M)}
    assert len(found) == 20 and found == evaluation.TABLE8
