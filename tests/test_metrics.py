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


def _wilson(k, n, z):
    """Wilson's (1927) score interval, written from its closed form (the reference the library's is checked by)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_the_replication_interval_is_wilsons_and_never_collapses_at_zero_or_all():
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    for k, n in [(0, 10), (3, 8), (6, 8), (8, 8), (1, 3), (17, 240), (0, 1)]:
        iv = metrics.rate_interval([True] * k + [False] * (n - k))
        lo, hi = _wilson(k, n, z)
        assert (iv["low"], iv["high"]) == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-9)
        assert iv["low"] <= k / n <= iv["high"] and (iv["k"], iv["n"]) == (k, n)
    # 0 of 10 fits a true rate up to z^2 / (n + z^2) = 0.278 (Brown, Cai and DasGupta 2001): the normal
    # interval p +- z sqrt(p (1 - p) / n) would say [0, 0]
    assert metrics.rate_interval([False] * 10)["high"] == pytest.approx(z * z / (10 + z * z))
    assert metrics.rate_interval([True] * 8)["low"] == pytest.approx(8 / (8 + z * z))
    assert metrics.interval_text(metrics.rate_interval([True] * 6 + [False] * 2)) == "95% CI 41-93%"
    # at 90% it is narrower
    assert metrics.rate_interval([True] * 3 + [False] * 5, 0.9)["high"] < metrics.rate_interval([True] * 3 + [False] * 5)["high"]


def test_the_paired_change_counts_seed_by_seed_and_takes_mcnemars_exact_p():
    from math import comb

    def exact(b, c):  # two-sided: twice the smaller tail of Binomial(b + c, 1/2), at most 1
        n = b + c
        return min(1.0, 2 * sum(comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n) if n else 1.0

    base = {s: s < 6 for s in range(8)}  # seeds 0-5 copy without the mitigation
    with_m = {s: s in (0, 6) for s in range(8)}  # it stops 1-5 and makes 6 copy
    pc = metrics.paired_change(base, with_m)
    assert (pc["fewer"], pc["more"], pc["paired"]) == (5, 1, 8)
    assert pc["p_value"] == pytest.approx(exact(5, 1)) == pytest.approx(0.21875)
    # the rates alone (6/8 -> 2/8) hide that seed 6 went the other way: the test sees it
    assert metrics.paired_change(base, {s: s in (0,) for s in range(8)})["p_value"] == pytest.approx(exact(5, 0))
    assert metrics.paired_change({s: True for s in range(8)}, {s: s >= 4 for s in range(8)})["p_value"] == 0.125
    for b, c in [(0, 0), (3, 3), (10, 2), (0, 7), (20, 1)]:
        seeds = range(b + c + 4)
        base = {s: s < b for s in seeds}
        mit = {s: b <= s < b + c for s in seeds}
        got = metrics.paired_change(base, mit)
        assert (got["fewer"], got["more"]) == (b, c) and got["p_value"] == pytest.approx(exact(b, c))
    # only the seeds both sides ran are compared
    assert metrics.paired_change({0: True, 1: True, 2: True}, {1: False, 2: False, 9: True})["paired"] == 2
    assert metrics.paired_text(metrics.paired_change({0: True}, {0: False})) == (
        "1 seed fewer, 0 more, exact McNemar p = 1")


def test_the_change_over_prompts_resamples_prompts():
    assert metrics.prompt_bootstrap([0.5], [0.25]) is None  # one prompt: nothing to resample
    same = metrics.prompt_bootstrap([0.5, 0.75, 1.0], [0.25, 0.5, 0.75])
    assert same["change"] == pytest.approx(-0.25) and (same["low"], same["high"]) == pytest.approx((-0.25, -0.25))
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 1.0, 200)
    d = rng.normal(-0.2, 0.1, 200)
    iv = metrics.prompt_bootstrap(base, base + d)
    assert iv["change"] == pytest.approx(d.mean()) and iv["low"] < d.mean() < iv["high"]
    # over many prompts the percentile interval is the normal one, mean +- 1.96 standard errors, within 15%
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert (iv["high"] - iv["low"]) / 2 == pytest.approx(half, rel=0.15)
    # it resamples each prompt's pair together: the change's spread, not the two rates' (those vary more here)
    unpaired = 1.96 * np.sqrt(base.var(ddof=1) / 200 + (base + d).var(ddof=1) / 200)
    assert (iv["high"] - iv["low"]) / 2 < unpaired / 2


def test_the_interval_over_few_prompts_covers_as_often_as_it_says():
    """Hesterberg (2015): the plain percentile bootstrap of a mean is too narrow for small samples; read at the
    expanded level it covers about as a t interval does. 600 samples of 6 prompts' values (normal, known mean):
    the expanded interval holds the true mean in at least 90% of them (nominal 95%; 600 samples: a standard
    error of about 1 point), the plain one (here about 84%) in clearly fewer: an interval that reads as the plain
    one fails."""
    from scipy.stats import bootstrap, norm, t

    n, trials = 6, 600
    assert metrics.expanded_level(n) == pytest.approx(2 * norm.cdf(np.sqrt(n / (n - 1)) * t.ppf(0.975, n - 1)) - 1)
    assert metrics.expanded_level(10_000) == pytest.approx(0.95, abs=1e-3)  # large samples: as nominal
    rng = np.random.default_rng(7)
    hit_expanded = hit_plain = 0
    for i in range(trials):
        v = rng.normal(0.5, 0.2, n)
        iv = metrics.bootstrap_mean(v, resamples=999, seed=i)
        hit_expanded += iv["low"] <= 0.5 <= iv["high"]
        plain = bootstrap((v,), np.mean, method="percentile", n_resamples=999, confidence_level=0.95,
                          rng=np.random.default_rng(i)).confidence_interval
        hit_plain += plain.low <= 0.5 <= plain.high
    assert hit_expanded / trials >= 0.90 and hit_plain / trials <= hit_expanded / trials - 0.04


def test_the_auc_interval_resamples_positives_and_negatives_apart():
    iv = metrics.auc_interval([3.0, 4.0, 5.0], [0.0, 1.0])
    assert iv["auc"] == 1.0 and (iv["low"], iv["high"]) == (1.0, 1.0)  # every resample keeps a positive above
    two = metrics.auc_interval([1.0, 1.5], [0.0, 2.0])  # each resample keeps two of each (stratified): never NaN
    assert two["auc"] == 0.5 and (two["low"], two["high"]) == (0.0, 1.0)
    assert metrics.auc_interval([1.0], [0.0, 2.0]) is None and metrics.auc_interval([], [1.0]) is None
    rng = np.random.default_rng(0)
    p, n = rng.normal(1.0, 1.0, 150), rng.normal(0.0, 1.0, 250)
    iv = metrics.auc_interval(p, n)
    a = metrics.roc_auc(p, n)
    # Hanley and McNeil's (1982) standard error of an AUC: the bootstrap's half-width is 1.96 of them, within 15%
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (p.size - 1) * (q1 - a * a) + (n.size - 1) * (q2 - a * a)) / (p.size * n.size))
    assert iv["auc"] == a and iv["low"] < a < iv["high"]
    assert (iv["high"] - iv["low"]) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_two_detectors_auc_difference_is_paired_on_the_same_probes():
    rng = np.random.default_rng(0)
    pos = np.r_[np.ones(40, bool), np.zeros(80, bool)]
    x = rng.normal(0, 1, 120) + 1.0 * pos  # what both detectors see of each probe
    a, b = x + rng.normal(0, 0.3, 120), x + rng.normal(0, 0.3, 120)
    d = metrics.auc_difference(a, b, pos)
    assert d["difference"] == pytest.approx(metrics.roc_auc(a[pos], a[~pos]) - metrics.roc_auc(b[pos], b[~pos]))
    assert d["low"] < d["difference"] < d["high"] and d["low"] < 0 < d["high"]  # the same detector twice, near enough
    # paired: far narrower than the two AUCs' own intervals combined as if independent
    ia, ib = metrics.auc_interval(a[pos], a[~pos]), metrics.auc_interval(b[pos], b[~pos])
    apart = np.hypot(ia["high"] - ia["low"], ib["high"] - ib["low"])
    assert (d["high"] - d["low"]) < 0.5 * apart
    same = metrics.auc_difference(a, a, pos)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    # a detector that sees the probes and one that sees noise: the difference is clear of 0
    clear = metrics.auc_difference(a, rng.normal(0, 1, 120), pos)
    assert clear["low"] > 0.1
    assert metrics.auc_difference(a[:3], b[:3], [True, False, False]) is None


def test_the_resampled_auc_by_ranks_is_roc_auc_ties_included():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 3, (40, 7)).astype(float), rng.integers(0, 3, (40, 9)).astype(float)  # many ties
    assert metrics._ranked_auc(x, y) == pytest.approx([metrics.roc_auc(a, b) for a, b in zip(x, y)])
    assert metrics._batch(500) * 500 <= 2_000_000 and metrics._batch(10 ** 9) == 1
