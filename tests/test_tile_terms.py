"""The crop-by-crop comparison of ``benchmarks/bench_verify_features.py --tiles`` (issue 30's seventeenth pass):
the descriptor's vectors of an image's four corner crops, compared crop by crop. Checked on hand-made images with
a stand-in descriptor (each crop's pixels at 8 x 8, centred, as a unit vector); and ``--objects`` (the eighteenth
pass), the objects a scene classifier sees in two images compared, with a stand-in classifier; and ``--dense`` (the
nineteenth), the descriptor's finer stage maps, with a small random copynet."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks.bench_verify_features import corner_crops, tile_terms, tile_vectors


class _Pixels:
    dim = 8 * 8 * 3

    def embed(self, images):
        x = np.stack([np.asarray(im.convert("RGB").resize((8, 8), Image.NEAREST), np.float64).ravel() for im in images])
        x -= x.mean(1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


def _scene(boxes):
    rng = np.random.default_rng(0)
    x = np.repeat(np.linspace(20, 200, 64)[None, :, None], 64, 0).repeat(3, 2)  # one gradient background
    x = x + rng.normal(0, 20, (64, 64, 3))  # with a texture, so every crop has structure
    for (x0, y0, x1, y1), colour in boxes:
        x[y0:y1, x0:x1] = colour
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def test_corner_crops_are_the_four_corners():
    im = Image.fromarray(np.arange(100 * 80 * 3, dtype=np.uint32).reshape(80, 100, 3).astype(np.uint8))
    crops = corner_crops(im, 0.6)
    assert [c.size for c in crops] == [(60, 48)] * 4
    a = np.asarray(im)
    for c, (y, x) in zip(crops, [(0, 0), (0, 40), (32, 0), (32, 40)]):  # top left, top right, bottom left, right
        assert np.array_equal(np.asarray(c), a[y:y + 48, x:x + 60])


def test_the_worst_crop_tells_two_scenes_on_one_background_from_a_copy():
    d = _Pixels()
    a = _scene([((4, 4, 24, 24), (200, 40, 40))])  # a red square top left
    b = _scene([((40, 40, 60, 60), (40, 40, 200))])  # a blue one bottom right, on the same background
    darker = Image.fromarray((np.asarray(a, np.float64) * 0.7).astype(np.uint8))  # a darkened copy of a

    def terms(query, train):
        q = np.stack([tile_vectors(d, [query], 0.6)[0], tile_vectors(d, [ImageOps.mirror(query)], 0.6)[0]])
        return tile_terms(q, tile_vectors(d, [train], 0.6)[0], 0.6)
    same = terms(a, a)
    assert abs(same["tiles0.6 min"] - 1) < 1e-6 and abs(same["tiles0.6 mean"] - 1) < 1e-6
    mirrored = terms(ImageOps.mirror(a), a)  # compared as its mirror image: a copy
    assert abs(mirrored["tiles0.6 min"] - 1) < 1e-6
    copy, other = terms(darker, a), terms(b, a)
    assert copy["tiles0.6 min"] > 0.95  # a gain leaves every crop's centred vector nearly as it was
    # the two scenes agree in the crops without an object and differ where one is: the worst crop says so
    assert other["tiles0.6 min"] < other["tiles0.6 mean"] - 0.1 and other["tiles0.6 min"] < copy["tiles0.6 min"] - 0.3


def test_object_terms_agree_on_the_same_objects_and_not_on_others():
    """``--objects``: the classifier's shape and colour probabilities of two images, compared; a stand-in scene
    classifier whose probabilities are given per image."""
    from benchmarks.bench_verify_features import object_terms, object_vectors

    shapes, colours = ["circle", "cross", "square"], ["red", "blue"]
    seen = {"a": ([0.9, 0.1, 0.8], [0.9, 0.7]), "a smeared": ([0.6, 0.2, 0.5], [0.7, 0.5]),
            "b": ([0.1, 0.9, 0.2], [0.1, 0.8])}

    class _Scene:
        def probabilities(self, images):
            return [{"shapes": dict(zip(shapes, seen[i][0])), "colours": dict(zip(colours, seen[i][1]))} for i in images]
    v = object_vectors(_Scene(), ["a", "a smeared", "b"], batch=2)  # two batches
    assert v.shape == (3, 5) and np.allclose(v[2], [0.1, 0.9, 0.2, 0.1, 0.8])
    same, smeared, other = object_terms(v[0], v[0]), object_terms(v[1], v[0]), object_terms(v[2], v[0])
    assert same["objects"] == pytest.approx(1.0) and same["objects l1"] == 1.0
    assert smeared["objects"] > 0.9 > 0 > other["objects"]
    # by hand: |0.6-0.9| + |0.2-0.1| + |0.5-0.8| + |0.7-0.9| + |0.5-0.7| = 1.1 over 5 values
    assert smeared["objects l1"] == pytest.approx(1 - 1.1 / 5) and other["objects l1"] < smeared["objects l1"]


def test_dense_terms_match_an_image_and_its_mirror_image_and_tell_another():
    """``--dense``: the descriptor's 8 x 8 and 16 x 16 stage maps (a small random memlab-copynet), compared
    position by position (``denseS``) and as a whole (``mapS``), the better of the query and its mirror image."""
    import torch

    from benchmarks.bench_verify_features import dense_maps, dense_terms
    from memlab.copynet import CopyNet, CopyNetConfig

    torch.manual_seed(0)

    class _Descriptor:
        net, blur = CopyNet(CopyNetConfig(widths=[4, 6, 8, 8, 8], dim=8)).eval(), 1.0
    a = _scene([((4, 4, 24, 24), (200, 40, 40))])
    b = _scene([((40, 40, 60, 60), (40, 40, 200))])
    maps = dense_maps(_Descriptor(), [a, ImageOps.mirror(a), b], batch=2)  # two batches
    assert maps["8"].shape == (3, 2, 64, 8) and maps["16"].shape == (3, 2, 256, 8)
    assert np.allclose(maps["8"][1, 0], maps["8"][0, 1], atol=1e-5)  # a mirrored image's maps are its mirror's

    def terms(i, j):
        return dense_terms({k: m[i] for k, m in maps.items()}, {k: m[j, 0] for k, m in maps.items()})
    for i in (0, 1):  # the image itself, and its mirror image
        assert all(x == pytest.approx(1.0, abs=1e-5) for x in terms(i, 0).values())
    other = terms(2, 0)
    assert set(other) == {"dense8", "map8", "dense16", "map16"} and all(x < 0.999 for x in other.values())
    assert other["dense16"] != pytest.approx(other["map16"])  # a mean of local cosines, not the whole map's
