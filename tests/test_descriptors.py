"""Descriptors: the interface, the registry, SSCD loading (scripted stand-in), CLIP (tiny config),
pixels and the split-product definition."""
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_sscd, synthetic_images
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
    assert float(va @ vb) > 0.85 and s["tile_min"][0] < 0.0


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
    p = make_tiny_sscd(tmp_path / "w" / "sscd_disc_large.torchscript.pt")
    d2 = create_descriptor("sscd-large", weights=str(p.parent), preset="official-288", device="cpu")
    assert d2.embed([Image.new("RGB", (80, 50)), Image.new("RGB", (50, 90))]).shape[0] == 2


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
    # by hand: normalize the flattened features, cut per token, max of chunk dot products
    an = a[1].ravel() / np.linalg.norm(a[1].ravel())
    bn = b[2].ravel() / np.linalg.norm(b[2].ravel())
    ref = max(float(an[3 * t:3 * t + 3] @ bn[3 * t:3 * t + 3]) for t in range(4))
    assert s[1, 2] == pytest.approx(ref, abs=1e-6)
    # an object copied in one token: the global cosine is low, the split product sees the copy
    x = np.zeros((1, 4, 3)); x[0, 0] = [1, 0, 0]; x[0, 1:] = rng.normal(size=(3, 3)) * 3
    y = np.zeros((1, 4, 3)); y[0, 0] = [1, 0, 0]; y[0, 1:] = rng.normal(size=(3, 3)) * 3
    assert split_product_similarity(x, x)[0, 0] > 0
    with pytest.raises(MemlabError):
        split_product_similarity(a, rng.normal(size=(1, 5, 3)))
