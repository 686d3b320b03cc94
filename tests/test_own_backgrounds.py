"""The shared-background test of ``benchmarks/bench_own_backgrounds.py`` (issue 30): which distinct scenes lie on
the same background outside their objects. Checked on hand-made 64 x 64 images."""
import numpy as np

from benchmarks.bench_own_backgrounds import background_kind, background_phrase, object_boxes, shared_backgrounds


def _gradient(c1, c2):
    a = np.linspace(0, 1, 64)[:, None, None]
    return np.broadcast_to((1 - a) * np.array(c1) + a * np.array(c2), (64, 64, 3)).astype(np.uint8).copy()


def _with_box(img, box, colour):
    x0, y0, x1, y1 = box
    out = img.copy()
    out[y0:y1, x0:x1] = colour
    return out


def test_scenes_on_one_background_are_found_whatever_their_objects():
    bg, other = _gradient((20, 20, 20), (140, 60, 190)), _gradient((140, 60, 190), (20, 20, 20))  # the same, upside down
    a, b = (4, 4, 30, 30), (34, 30, 60, 56)
    pixels = np.stack([_with_box(bg, a, (50, 170, 60)),  # a green square top left
                       _with_box(bg, b, (130, 80, 40)),  # a brown one bottom right, same background
                       _with_box(other, a, (50, 170, 60)),  # the first scene's object on the other gradient
                       _with_box(bg, (0, 0, 60, 60), (50, 170, 60)),  # an object hiding nearly all of it
                       bg.copy()])  # a photo of it: no object boxes, so no background to compare
    boxes = [[a], [b], [a], [(0, 0, 60, 60)], []]
    same = shared_backgrounds(pixels, boxes, tol=8.0)
    assert same[0] == {1} and same[1] == {0}  # different objects, one background
    assert same[2] == set()  # the same object on another background is not
    assert same[3] == set()  # too little background left to say
    assert same[4] == set() and all(4 not in s for s in same)  # a photo is never on a scene's background
    noisy = pixels.copy()
    noisy[1] = np.clip(noisy[1].astype(int) + np.random.default_rng(0).normal(0, 12, noisy[1].shape), 0, 255)
    assert 1 in shared_backgrounds(noisy, boxes, tol=8.0)[0]  # a style's noise averages out at 16 x 16


def test_boxes_and_background_kinds_read_from_the_worlds_columns():
    assert object_boxes("obj:10,26,39,55;obj:28,15,64,51") == [(10, 26, 39, 55), (28, 15, 64, 51)]
    assert object_boxes("window:8,8,56,56") == [] and object_boxes("") == []
    assert background_kind("a red square and a teal ring on a purple dotted background") == "dotted"
    assert background_kind("a pink cross on a brown gradient background, by Osterby") == "gradient"
    assert background_kind("a teal square and a pink diamond on a red background") == "plain"
    assert background_phrase("a red ring and a blue star on an orange checkered background, by Velmora") == \
        "orange checkered background"  # "on an", and the artist after the background
    assert background_phrase("a red ring, a green circle on a black background") == "black background"
    assert background_kind("a photo of a tabby cat") is None
    assert background_kind("seascape with a lighthouse on a cloudy day") is None
