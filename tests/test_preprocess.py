"""The SSCD presets' exact tensor pipelines, against hand-built references (PIL + numpy)."""
import numpy as np
import pytest
from PIL import Image

from memlab.preprocess import IMAGENET_MEAN, IMAGENET_STD, PRESETS, get_preset
from memlab.errors import MemlabError


def _img(w=400, h=300, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def _norm(a, mean, std):
    a = np.asarray(a, np.float32) / 255.0
    return ((a - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)


def _close(t, ref):
    assert tuple(t.shape) == ref.shape
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-5)


def test_official_320_is_square_resize_imagenet_norm():
    im = _img()
    ref = _norm(im.resize((320, 320), Image.BILINEAR), IMAGENET_MEAN, IMAGENET_STD)
    _close(get_preset("official-320").transform()(im), ref)


def test_official_288_keeps_aspect_short_edge_288():
    im = _img(400, 300)
    t = get_preset("official-288").transform()(im)
    assert tuple(t.shape) == (3, 288, 384)
    _close(t, _norm(im.resize((384, 288), Image.BILINEAR), IMAGENET_MEAN, IMAGENET_STD))


def test_dcr_resize256_centercrop224_half_norm():
    im = _img(400, 300)
    r = im.resize((341, 256), Image.BILINEAR)  # short edge 256, long int(256 * 400 / 300) = 341
    left, top = int(round((341 - 224) / 2.0)), int(round((256 - 224) / 2.0))
    ref = _norm(r.crop((left, top, left + 224, top + 224)), (0.5,) * 3, (0.5,) * 3)
    _close(get_preset("dcr").transform()(im), ref)


def test_membench_288_square_imagenet_norm():
    im = _img(300, 500)
    _close(get_preset("membench").transform()(im),
           _norm(im.resize((288, 288), Image.BILINEAR), IMAGENET_MEAN, IMAGENET_STD))


def test_presets_table_and_unknown():
    assert set(PRESETS) == {"official-320", "official-288", "dcr", "membench"}
    assert PRESETS["dcr"].fixed_size and not PRESETS["official-288"].fixed_size
    with pytest.raises(MemlabError, match="unknown preprocessing preset"):
        get_preset("imagenet")
