"""Metrics on hand-made arrays: each number checked against its definition."""
import numpy as np
import pytest

from memlab import metrics


def test_top1_and_flags():
    sim = np.array([[0.1, 0.7, 0.3], [0.2, 0.4, 0.45]])
    np.testing.assert_allclose(metrics.top1(sim), [0.7, 0.45])
    flags, high = metrics.replication_flags([0.7, 0.45, 0.8], 0.5, 0.75)
    assert flags.tolist() == [True, False, True] and high.tolist() == [False, False, True]
    assert metrics.replication_rate(flags) == pytest.approx(2 / 3)
    assert metrics.replication_rate([]) == 0.0


def test_dataset_similarity_is_95th_percentile():
    s = np.arange(101) / 100.0  # 0.00 .. 1.00
    ds = metrics.dataset_similarity(s, 0.5)
    assert ds["p95"] == pytest.approx(0.95)
    assert ds["p75"] == pytest.approx(0.75) and ds["p90"] == pytest.approx(0.90)
    assert ds["mean"] == pytest.approx(0.5) and ds["frac_above"] == pytest.approx(50 / 101)
    assert metrics.dataset_similarity([], 0.5)["p95"] is None


def test_background_is_nearest_other_item():
    v = np.eye(3, dtype=np.float32)
    v = np.vstack([v, [[0.6, 0.8, 0.0]]])
    bg = metrics.background(v)
    # item 0's nearest other is item 3 (0.6); item 1 -> item 3 (0.8); item 2 -> 0; item 3 -> item 1 (0.8)
    np.testing.assert_allclose(bg, [0.6, 0.8, 0.0, 0.8], atol=1e-6)
    # with groups, members of the same group are skipped
    bg2 = metrics.background(v, groups=[0, 1, 2, 1])
    np.testing.assert_allclose(bg2, [0.6, 0.0, 0.0, 0.6], atol=1e-6)


def test_near_duplicate_groups_are_connected_components():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.99, 0.141, 0.0])  # ~0.99 to a
    c = np.array([0.96, 0.28, 0.0])  # ~0.99 to b, 0.96 to a: joins through b (chaining)
    d = np.array([0.0, 0.0, 1.0])
    v = np.stack([a, b, c, d]).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    group, dups = metrics.near_duplicate_groups(v, 0.98)
    assert group[0] == group[1] == group[2] != group[3]
    assert dups.tolist() == [2, 2, 2, 0]


def test_calibrate_threshold_keeps_fpr_and_reports_recall():
    bg = np.linspace(0, 0.9, 100)
    copies = np.array([0.95, 0.99, 0.5, 0.92])
    cal = metrics.calibrate_threshold(bg, copies, fpr=0.05)
    assert cal["fpr"] <= 0.05
    assert (bg > cal["value"]).mean() == cal["fpr"]
    assert cal["recall"] == pytest.approx(0.75)
    assert cal["copy_percentiles"]["p50"] == pytest.approx(np.percentile(copies, 50))


def test_conformal_threshold_is_the_k_th_largest():
    # k-th largest of n, k = floor(fpr (n + 1)): 99 scores at 1% -> the largest, 199 -> the second largest
    assert metrics.conformal_threshold(np.arange(1, 100), 0.01) == 99
    assert metrics.conformal_threshold(np.arange(1, 200), 0.01) == 198
    assert metrics.conformal_threshold(np.arange(1, 6), 0.01) == 5  # too few scores for 1%: the largest
    assert metrics.conformal_threshold(np.r_[np.arange(1, 21)[::-1], np.nan], 0.05) == 20  # order, NaN ignored
    # a new exchangeable score exceeds the k-th largest of n with probability k / (n + 1): at most fpr for every
    # n with n + 1 >= 1 / fpr
    for fpr in (0.01, 0.05):
        for n in range(int(1 / fpr) - 1, 1200):
            t = metrics.conformal_threshold(np.arange(n, dtype=float), fpr)
            assert ((np.arange(n) > t).sum() + 1) / (n + 1) <= fpr + 1e-12, (fpr, n)
    # ... measured: the new score of 40,000 exchangeable draws of 134 (133 to calibrate on, 1 new); the plain
    # quantile (what calibrate_threshold keeps: the 2nd largest of 133) is exceeded about 2 / 134 of the time
    x = np.random.default_rng(0).random((40_000, 134))
    t = np.array([metrics.conformal_threshold(r[:133], 0.01) for r in x])
    assert (x[:, 133] > t).mean() <= 0.01
    plain = np.array([metrics.calibrate_threshold(r[:133], [], 0.01)["value"] for r in x[:10_000]])
    assert (x[:10_000, 133] > plain).mean() > 0.0125


def test_roc_auc_mann_whitney():
    assert metrics.roc_auc([3, 4], [1, 2]) == 1.0
    assert metrics.roc_auc([1, 2], [3, 4]) == 0.0
    assert metrics.roc_auc([1, 3], [2, 2]) == pytest.approx(0.5)
    assert metrics.roc_auc([2], [2]) == 0.5
    with pytest.raises(ValueError):
        metrics.roc_auc([], [1])


def test_merge_groups_joins_rows_of_one_origin():
    from memlab.metrics import group_representatives, merge_groups

    group = np.array([0, 0, 1, 2, 3, 4, 5])
    origin = ["", "", "photoA", "photoA", "photoB", None, "photoA"]
    merged = merge_groups(group, origin)
    # rows 2, 3 and 6 are crops of one photo: one distinct image; empty origins change nothing
    assert merged.tolist() == [0, 0, 1, 1, 2, 3, 1]
    assert group_representatives(merged).tolist() == [0, 2, 4, 5]
    # an origin shared across near-duplicate groups joins them transitively
    assert merge_groups(np.array([0, 1, 2]), ["a", "b", "a"]).tolist() == [0, 1, 0]


def test_the_distinct_background_is_against_the_nearest_row_of_another_group():
    """Issue 30 item 5: a group's representative is compared with every row of the other groups (a
    non-representative row closer than its group's representative counts), never with its own group."""
    from memlab.calibration import verdict_background

    v = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.6, 0.8, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    groups = np.array([0, 0, 1, 1, 2])  # rows 0-1 one image, 2-3 another (row 3 not its representative)
    reps = np.array([0, 2, 4])
    bg = metrics.background(v, groups=groups)[reps]
    assert bg[0] == pytest.approx(float(v[0] @ v[3]))  # row 3, not the representative row 2
    assert bg[0] > float(v[0] @ v[2])
    assert bg[1] == pytest.approx(float(v[2] @ v[1]))  # never its own group's row 3

    class Cosine:  # a verdict score equal to the cosine: the verdict path must agree with the cosine one
        def verdict_scores(self, q, rows):
            return rows @ q

    got = verdict_background(Cosine(), v, candidates=2, rows=reps, groups=groups)
    assert np.allclose(got, bg)


def test_spearman_on_hand_made_ranks():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4)
    r = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert metrics.spearman([0, 5, 5, 9], [1, 2, 3, 100]) == pytest.approx(r)
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_largest_clique_counts_mutually_near_items_not_a_chain():
    """Carlini et al.'s clique: every pair of its items must reach the cut. A chain 0-1-2 (0 and 2 apart) is one
    connected component of 3 but no clique of 3; items 3, 4, 5 are all pairwise near; ``cut`` itself counts."""
    s = np.eye(6)
    for i, j in [(0, 1), (1, 2), (3, 4), (3, 5), (4, 5)]:
        s[i, j] = s[j, i] = 0.95
    s[0, 2] = s[2, 0] = 0.94
    assert metrics.largest_clique(s, 0.95) == 3
    s[3, 5] = s[5, 3] = 0.9  # the triangle broken: the best is a pair
    assert metrics.largest_clique(s, 0.95) == 2
    s[0, 2] = s[2, 0] = 0.95  # the chain closed into a triangle
    assert metrics.largest_clique(s, 0.95) == 3
    assert metrics.largest_clique(np.eye(4), 0.95) == 1  # no pair near: each generation alone
    assert metrics.largest_clique(np.ones((5, 5)), 0.95) == 5
    assert metrics.largest_clique(np.zeros((0, 0)), 0.95) == 0
