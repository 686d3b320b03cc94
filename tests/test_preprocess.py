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


# ------------------------------------------------- the GPU's path: 8-bit pixels resized on the network's device
def _photos():
    import skimage.data as sd

    rng = np.random.default_rng(1)
    astro = Image.fromarray(sd.astronaut())
    return {"astronaut 512": astro, "chelsea 451x300": Image.fromarray(sd.chelsea()),
            "coffee 600x400": Image.fromarray(sd.coffee()), "small 200x150": astro.resize((200, 150)),
            "large 1600x1200": Image.fromarray(sd.camera()).convert("RGB").resize((1600, 1200)),
            "grey 333x517": Image.fromarray(rng.integers(0, 256, (517, 333), np.uint8)),  # mode L
            "rgba 300x300": Image.fromarray(sd.astronaut()).resize((300, 300)).convert("RGBA")}


def _noise():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8))


def _levels(transform, a, b):
    """|a - b| in 8-bit grey levels (undoing Normalize's std)."""
    std = np.array(transform.transforms[-1].std, np.float32)[:, None, None]
    return np.abs(a.numpy() - b.numpy()) * std * 255


def _transforms(tiny_clip_name):
    import open_clip

    tf = {name: p.transform() for name, p in PRESETS.items()}
    tf["open_clip ViT-B-32"] = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[2]
    tf["open_clip tiny"] = open_clip.create_model_and_transforms(tiny_clip_name, pretrained=None)[2]
    return tf


def test_device_transform_is_the_pil_transform_within_two_grey_levels(tiny_clip_name):
    """Issue 34: on a GPU the presets and open_clip's transforms run on 8-bit pixels on the device; the network
    must see the same numbers. PIL resamples in two passes, each stored as 8 bits in fixed point; the tensor
    path applies the same filter pass by pass in float and rounds as PIL does, so a value may differ by the
    fixed-point rounding: at most a level per pass."""
    from memlab.preprocess import device_transform, pixels, to_rgb

    photos = _photos()
    for name, tf in _transforms(tiny_clip_name).items():
        f = device_transform(tf)
        assert f is not None, name
        for what, im in [*photos.items(), ("noise 256", _noise())]:
            ref, got = tf(to_rgb(im)), f(pixels([im]))[0]
            assert tuple(got.shape) == tuple(ref.shape), (name, what)
            d = _levels(tf, ref, got)
            assert d.max() <= 2 + 1e-3, (name, what, d.max())


def test_device_transform_needs_its_per_pass_rounding_and_refuses_unknown_steps():
    """What the two-level bound above rules out: one float pass without PIL's 8-bit storage between its two
    passes (bicubic overshoot that PIL clamps after the first pass), and a wrong filter."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    from memlab.preprocess import device_transform, pixels

    im = _noise()
    tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(HALF3, HALF3)])
    ref = tf(im)
    x = pixels([im])[..., :3].permute(0, 3, 1, 2).float()
    one_pass = F.resize(x, [224, 224], T.InterpolationMode.BICUBIC, antialias=True).clamp(0, 255).round()
    assert _levels(tf, ref, (one_pass[0] / 255 - 0.5) / 0.5).max() > 2
    wrong = device_transform(T.Compose([T.Resize(224), T.ToTensor(), T.Normalize(HALF3, HALF3)]))  # bilinear
    assert _levels(tf, ref, wrong(pixels([im]))[0]).max() > 2
    assert device_transform(T.Compose([T.Resize(224), T.ColorJitter(0.5), T.ToTensor()])) is None


def test_pixels_are_the_images_rgb_values_whichever_way_pillow_gives_them():
    """``pixels`` reads Pillow's memory through Arrow where it can (RGBX, four bytes a pixel) and copies
    otherwise (a large image Pillow keeps in several blocks): either way the first three channels are
    ``np.asarray(to_rgb(image))``, batched when the sizes agree."""
    from memlab.preprocess import pixels, to_rgb

    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 256, (2200, 2100, 3), np.uint8))  # 18 MB as RGBX: several blocks
    ims = [*_photos().values(), big, Image.fromarray(rng.integers(0, 256, (40, 30, 4), np.uint8), "RGBA").convert("P")]
    for im in ims:
        got = pixels([im, im])
        assert got.shape[0] == 2 and got.shape[3] in (3, 4)
        assert np.array_equal(got[1, ..., :3].numpy(), np.asarray(to_rgb(im)))
    import torch

    # pinned memory asked for (a GPU's path) where none can be had (no CUDA here): pageable, the same pixels
    assert torch.equal(pixels([ims[0]] * 2, pin=True), pixels([ims[0]] * 2))
    mixed = pixels(ims[:3])
    assert isinstance(mixed, list) and [tuple(t.shape) for t in mixed] == [(512, 512, 3), (300, 451, 3), (400, 600, 3)]


HALF3 = (0.5, 0.5, 0.5)


@pytest.mark.parametrize("kind", ["sscd", "clip"])
def test_the_tensor_path_feeds_the_network_the_same_batches(kind, monkeypatch, sscd_cache, tiny_clip_name):
    """``network_batches`` on the tensor path (a GPU's, forced here on the CPU) against PIL's: the same batches in
    the same order, mixed sizes and modes included, and the descriptor's vectors the same."""
    import memlab.preprocess as pre
    from memlab.descriptors import create_descriptor

    monkeypatch.setenv("MEMLAB_CACHE", str(sscd_cache))
    kw = {"model": tiny_clip_name, "pretrained": None} if kind == "clip" else {}
    d = create_descriptor(kind, device="cpu", batch_size=3, **kw)
    tf = d._tf if kind == "clip" else d._preset.transform()
    images = [*_photos().values(), _noise(), *_photos().values()]
    runs = {}
    for where in ("cpu", "device"):
        monkeypatch.setattr(pre, "PREPARE_ON", where)
        runs[where] = (list(pre.network_batches(images, tf, 3, "cpu", workers=2)), d.embed(images))
    (cpu_batches, cpu_vec), (dev_batches, dev_vec) = runs["cpu"], runs["device"]
    assert [b.shape for b in dev_batches] == [b.shape for b in cpu_batches]
    assert [b.shape[0] for b in dev_batches] == [3, 3, 3, 3, 3]
    for a, b in zip(cpu_batches, dev_batches):
        assert _levels(tf, a, b).max() <= 2 + 1e-3
    assert dev_vec.shape == cpu_vec.shape == (15, d.dim)
    assert np.min(np.sum(dev_vec * cpu_vec, axis=1)) > 0.999
