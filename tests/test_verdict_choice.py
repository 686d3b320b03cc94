"""``benchmarks/bench_verdict_choice.py --ensemble`` (issue 30's twentieth pass): two memlab-copy networks' rows side
by side, so the cosine the index scores is the mean of the two networks' cosines. Checked with two small random
copynets saved and loaded as memlab-copy weights."""
import numpy as np
from PIL import Image

from benchmarks.bench_verdict_choice import with_ensemble


def _weights(folder, seed):
    import torch

    from memlab.copynet import CopyNet, CopyNetConfig

    torch.manual_seed(seed)
    CopyNet(CopyNetConfig(widths=[4, 6, 8, 8, 8], dim=8)).eval().save_pretrained(folder)
    return str(folder)


def test_the_ensemble_scores_the_mean_of_the_two_networks_cosines(tmp_path):
    from memlab.descriptors import create_descriptor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(5)]
    a, b = _weights(tmp_path / "a", 0), _weights(tmp_path / "b", 1)
    va, vb = (create_descriptor("memlab-copy", weights=w).embed(images) for w in (a, b))
    both = with_ensemble(create_descriptor("memlab-copy", weights=a), [create_descriptor("memlab-copy", weights=b)])
    v = both.embed(images)
    assert v.shape == (5, va.shape[1] + vb.shape[1]) == (5, both.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)  # unit rows: the inner product is a cosine
    assert np.allclose(v @ v.T, (va @ va.T + vb @ vb.T) / 2, atol=1e-5)
    assert not np.allclose(va @ va.T, vb @ vb.T, atol=1e-3)  # two networks that differ, so the mean is not either
    assert "ensemble" in both.preset and both.secondary_scores(v[0], v) == {}  # the score names its source


def test_the_whitened_descriptor_scores_each_image_in_the_whitened_space_it_learned(tmp_path):
    """``bench_verdict_choice --whiten`` (issue 30's twenty-first pass): every row, the fit images' and any other's, is
    the network's vector centred, projected on the fit images' strongest directions and made unit length again."""
    from benchmarks.bench_verdict_choice import with_whitening
    from memlab.descriptors import create_descriptor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(12)]
    a = _weights(tmp_path / "a", 0)
    raw = create_descriptor("memlab-copy", weights=a).embed(images).astype(np.float64)
    w = with_whitening(create_descriptor("memlab-copy", weights=a), images[:8], dims=3, shrinkage=0.0)
    v = w.embed(images)
    assert v.shape == (12, 3) == (12, w.dim) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    fit = raw[:8] - raw[:8].mean(0)
    top = np.linalg.svd(fit, full_matrices=False)[2][:3]  # the fit images' three strongest directions
    want = (raw - raw[:8].mean(0)) @ top.T
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(v @ v.T, want @ want.T, atol=1e-4)  # the held-out four rows too (signs of directions aside)
    assert "whitened-3" in w.preset
