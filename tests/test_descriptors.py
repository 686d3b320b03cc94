"""Descriptors: the interface, the registry, SSCD loading (scripted stand-in), CLIP (tiny config),
pixels and the split-product definition."""
import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_tiny_sscd, synthetic_images, trust
from memlab.descriptors import (DESCRIPTORS, create_descriptor, register_descriptor,
                                split_product_similarity)
from memlab.distort import brightness
from memlab.errors import MemlabError, ModelFileMissing


def test_pixel_unit_norm_and_brightness_invariant():
    d = create_descriptor("pixel")
    ims = synthetic_images(3)
    v = d.embed(ims)
    assert v.shape == (3, 768) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    vb = d.embed([brightness(ims[0], 1.05)])
    assert float(vb[0] @ v[0]) > 0.99
    assert float(v[1] @ v[0]) < 0.9
    assert d.info()["model"] == "pixels-16x16" and "mean-centred" in d.info()["preset"]


def test_pixel_flat_tiles_and_tile_min():
    d = create_descriptor("pixel-tiled")
    flat = Image.new("RGB", (64, 64), (100, 100, 100))
    v = d.embed([flat, flat.copy(), synthetic_images(1)[0]])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)
    # one tile changed: the mean score stays high, the worst tile exposes the difference
    a = np.array(synthetic_images(1, seed=3)[0])
    b = a.copy()
    b[:16, :16] = 255 - b[:16, :16]
    va, vb = d.embed([Image.fromarray(a), Image.fromarray(b)])
    s = d.secondary_scores(va, vb[None])
    assert float(va @ vb) > 0.85 and d.verdict_scores(va, vb[None])[0] < 0.0
    assert s["tile_mean"][0] == pytest.approx(float(va @ vb), abs=1e-5)


def test_pixel_tiled_verdict_and_calibration_use_the_worst_tile(tmp_path):
    """A generation that copies a training image's background but not its object: the mean tile cosine
    calls it a copy, the tiled verdict (Carlini et al.) does not; calibration is on the same score."""
    import pandas as pd

    from memlab.index import TrainingIndex, build_index
    from memlab.match import descriptor_for_index, match_images

    ims = synthetic_images(40, seed=5)
    items = pd.DataFrame({"id": range(40), "caption": ["c"] * 40, "file": [f"{i}.png" for i in range(40)]})
    build_index(tmp_path / "t", items, lambda i: ims[i], [create_descriptor("pixel-tiled")], calib_n=40)
    idx = TrainingIndex.load(tmp_path / "t")
    d = descriptor_for_index(idx)
    thr = idx.threshold()
    assert idx.descriptor_info()["verdict"] == "tile_min"
    a = np.array(ims[7])
    b = a.copy()
    b[:16, :16] = 255 - b[:16, :16]  # the object in one tile differs
    res = match_images(idx, d, [Image.fromarray(b), ims[7]], k=3)
    other, same = res["queries"]
    q = d.embed([Image.fromarray(b)])[0]
    orig = np.asarray(idx.vectors())[7][None]
    assert float((orig @ q)[0]) > thr["value"]  # by the mean tile cosine it would be a copy of item 7
    assert d.verdict_scores(q, orig)[0] < 0.0 < thr["value"]  # its worst tile says otherwise
    assert not other["replicated"] and other["score"] < thr["value"]  # and the verdict follows the worst tile
    assert same["replicated"] and same["score"] == pytest.approx(1.0, abs=1e-5)
    # the calibration background is on the worst tile too: below the mean tile cosine of the same pairs
    bg = idx.background(distinct=True)
    v = idx.vectors()
    mean_bg = np.sort(np.asarray(v) @ np.asarray(v).T, axis=1)[:, -2]
    assert np.all(bg <= mean_bg + 1e-5) and np.mean(bg) < np.mean(mean_bg) - 0.05


def test_registry_and_options():
    assert {"sscd", "sscd-large", "sscd-dcr", "sscd-membench", "clip", "pixel"} <= set(DESCRIPTORS)
    assert DESCRIPTORS["sscd-dcr"] == {"kind": "sscd", "model": "sscd_disc_large", "preset": "dcr"}
    with pytest.raises(MemlabError, match="unknown descriptor"):
        create_descriptor("nope")
    with pytest.raises(MemlabError, match="takes no option"):
        create_descriptor("pixel", weights="x")
    register_descriptor("pixel-8", {"kind": "pixel", "size": 8})
    assert create_descriptor("pixel-8").dim == 8 * 8 * 3
    with pytest.raises(MemlabError):
        register_descriptor("bad", {"kind": "nope"})


def test_sscd_from_cache_and_explicit_path(sscd_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMLAB_CACHE", str(sscd_cache))
    d = create_descriptor("sscd", device="cpu")
    assert (d.model, d.preset, d.dim) == ("sscd_disc_mixup", "official-320", 24)
    ims = synthetic_images(5)
    v = d.embed(ims)
    assert v.shape == (5, d.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # batching does not change the result
    np.testing.assert_allclose(np.concatenate([d.embed(ims[:2]), d.embed(ims[2:])]), v, atol=1e-5)
    assert d.info()["published_threshold"] == 0.5 and d.info()["published_high"] == 0.75
    # explicit file, variable-size preset (one image at a time)
    p = trust(make_tiny_sscd(tmp_path / "w" / "sscd_disc_large.torchscript.pt"))
    d2 = create_descriptor("sscd-large", weights=str(p.parent), preset="official-288", device="cpu")
    assert d2.embed([Image.new("RGB", (80, 50)), Image.new("RGB", (50, 90))]).shape[0] == 2
    # 0.5 / 0.75 belong to disc_mixup at official-320: anywhere else they are marked as carried over
    assert not d.threshold_carried_over and d.threshold_source.startswith("published")
    for name in ("sscd-large", "sscd-dcr", "sscd-membench"):
        dd = create_descriptor(name, weights=str(p.parent), device="cpu")
        assert dd.threshold_carried_over and dd.threshold_source.startswith("carried over")
    from memlab.index import TrainingIndex, build_index
    import pandas as pd

    items = pd.DataFrame({"id": range(5), "caption": ["c"] * 5, "file": [f"{i}.png" for i in range(5)]})
    build_index(tmp_path / "idx", items, lambda i: ims[i], [create_descriptor("sscd-dcr", weights=str(p.parent),
                                                                             device="cpu"), d], calib_n=5)
    idx = TrainingIndex.load(tmp_path / "idx")
    assert idx.threshold("sscd-dcr")["source"] == "carried-over" and idx.threshold("sscd")["source"] == "published"


def test_sscd_missing_offline_names_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("MEMLAB_OFFLINE", "1")
    with pytest.raises(ModelFileMissing) as e:
        create_descriptor("sscd-large")
    msg = str(e.value)
    assert "sscd_disc_large.torchscript.pt" in msg and str(tmp_path) in msg
    assert "dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_large.torchscript.pt" in msg
    with pytest.raises(ModelFileMissing, match="not found"):
        create_descriptor("sscd", weights=str(tmp_path / "absent.pt"))


def test_clip_tiny_config_normalized(tiny_clip_name):
    d = create_descriptor("clip", model=tiny_clip_name, pretrained=None, device="cpu")
    v = d.embed(synthetic_images(3))
    t = d.embed_text(["a red square", "a photo of an astronaut"])
    assert v.shape == (3, 32) and t.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert d.info()["config"] == {"model": tiny_clip_name, "pretrained": None}


def test_clip_openai_forces_quickgelu(monkeypatch):
    import open_clip

    seen = {}

    def fake(model, pretrained=None, force_quick_gelu=False, **kw):
        seen.update(model=model, force_quick_gelu=force_quick_gelu)
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    with pytest.raises(ModelFileMissing):
        create_descriptor("clip", model="ViT-L-14", pretrained="openai")
    assert seen == {"model": "ViT-L-14", "force_quick_gelu": True}
    with pytest.raises(ModelFileMissing):
        create_descriptor("clip-b32")
    assert seen["force_quick_gelu"] is False


def test_split_product_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4, 3)), rng.normal(size=(3, 4, 3))
    s = split_product_similarity(a, b)
    assert s.shape == (2, 3)
    # by hand: per token, the cosine of the two images' chunks; the max over tokens
    ref = max(float(a[1, t] @ b[2, t] / np.linalg.norm(a[1, t]) / np.linalg.norm(b[2, t])) for t in range(4))
    assert s[1, 2] == pytest.approx(ref, abs=1e-5)
    # an image with itself: exactly 1 (issue 30: the definition's own fixed point)
    x = rng.normal(size=(2, 16, 32))
    assert np.allclose(np.diag(split_product_similarity(x, x)), 1.0, atol=1e-5)
    # an object copied into one token of another image, every other token different: the global cosine
    # of the two images is low, the split product sees the copy; unrelated images score low
    obj = rng.normal(size=32)
    imgs = rng.normal(size=(3, 16, 32))
    imgs[0, 5], imgs[1, 5] = obj, obj
    sp = split_product_similarity(imgs, imgs)
    flat = imgs.reshape(3, -1) / np.linalg.norm(imgs.reshape(3, -1), axis=1, keepdims=True)
    assert float(flat[0] @ flat[1]) < 0.2
    assert sp[0, 1] > 0.7 and sp[0, 2] < 0.5 and sp[1, 2] < 0.5
    with pytest.raises(MemlabError):
        split_product_similarity(a, rng.normal(size=(1, 5, 3)))


def test_prepared_batches_keep_order_and_values_and_run_ahead():
    """The thread pool prepares images one batch ahead of the consumer, and yields what a plain loop
    would: the same order, the same values, the same batch sizes."""
    import threading

    import torch

    from memlab.preprocess import prepared_batches

    started = []

    def prepare(v):
        started.append(v)
        return torch.full((2,), float(v))

    items = list(range(11))
    plain = [torch.stack([prepare(v) for v in items[i:i + 4]]) for i in range(0, 11, 4)]
    started.clear()
    gen = prepared_batches(items, prepare, 4, workers=3)
    first = next(gen)
    for _ in range(100):  # the second batch is under way before the first is consumed
        if len(started) == 8:
            break
        threading.Event().wait(0.01)
    assert sorted(started) == list(range(8))
    got = [first, *gen]
    assert [b.shape[0] for b in got] == [4, 4, 3]
    assert all(torch.equal(a, b) for a, b in zip(got, plain))
    assert [b.shape[0] for b in prepared_batches(items, prepare, 4, workers=1)] == [4, 4, 3]
    assert list(prepared_batches([], prepare, 4, workers=3)) == []
