"""``benchmarks/bench_whitening.py`` (issue 30's twenty-first pass): PCA whitening with shrinkage, checked on hand-made
vectors against its definition."""
import numpy as np

from benchmarks.bench_whitening import learn_whitening, whiten


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.array([10.0, 3.0, 1.0, 0.3])  # one loud direction (a shared background), three quieter ones
    rot, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    return (rng.normal(size=(n, 4)) * scales) @ rot.T + 5.0


def test_full_whitening_gives_the_fit_data_unit_covariance():
    x = _data()
    m, p = learn_whitening(x, shrinkage=1.0, eps=0.0)
    assert np.allclose(np.cov((x - m) @ p, rowvar=False), np.eye(4), atol=1e-6)


def test_no_shrinkage_keeps_the_centred_cosines_and_half_shrinkage_quiets_the_loud_direction():
    x = _data()
    m, p0 = learn_whitening(x, shrinkage=0.0, eps=0.0)
    c = (x[:50] - m) / np.linalg.norm(x[:50] - m, axis=1, keepdims=True)
    w0 = whiten(x[:50], m, p0)
    assert np.allclose(w0 @ w0.T, c @ c.T, atol=1e-9)  # a rotation: every centred cosine as it was
    _, p1 = learn_whitening(x, shrinkage=0.5, eps=0.0)
    var = np.sort(np.var((x - m) @ p1, axis=0))  # each principal direction's variance after the scaling
    assert np.allclose(var, [0.3, 1.0, 3.0, 10.0], rtol=0.1)  # lambda ** (1 - 1/2): the planted standard deviations
    m, p2 = learn_whitening(x, shrinkage=0.0, eps=0.0, dims=2)  # the two strongest directions kept
    assert p2.shape == (4, 2) and np.allclose(np.sort(np.var((x - m) @ p2, axis=0)), [9.0, 100.0], rtol=0.1)
