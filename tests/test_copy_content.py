"""The object judge of ``benchmarks/bench_copy_content.py`` (issue 30): does a model's copy still show the
training item's drawn objects? Checked on hand-made images drawn the world's way."""
import numpy as np
from PIL import Image, ImageDraw

from benchmarks.bench_copy_content import contrast_kept, derangement, object_masks
from memlab.worldgen import _draw_shape

GREY, RED, BLUE = (128, 128, 128), (220, 30, 30), (30, 30, 220)


def _scene(objects):
    """A 64 x 64 grey image with ``objects`` [(shape, colour, (x0, y0, x1, y1) at 64 px)] drawn at 4x as the world
    draws them, and its regions / objects columns."""
    im = Image.new("RGB", (256, 256), GREY)
    d = ImageDraw.Draw(im)
    for shape, colour, (x0, y0, x1, y1) in objects:
        _draw_shape(d, shape, 2 * (x0 + x1), 2 * (y0 + y1), 2 * (x1 - x0), colour, outline=(0, 0, 0), width=3)
    regions = ";".join("obj:" + ",".join(map(str, b)) for _, _, b in objects)
    return (np.asarray(im.resize((64, 64), Image.LANCZOS), np.float64), regions,
            ",".join(s for s, _, _ in objects))


def test_masks_follow_the_drawn_shapes_and_the_later_object_on_top():
    img, regions, objects = _scene([("square", RED, (10, 10, 34, 34)), ("circle", BLUE, (24, 24, 48, 48))])
    (sq_in, sq_around), (ci_in, ci_around) = object_masks(regions, objects)
    def share(mask, colour):  # of the mask's pixels in that colour (the black outline and its antialiasing aside)
        return (np.abs(img[mask] - np.array(colour)).max(1) < 40).mean()
    assert share(sq_in, RED) > 0.8 and share(sq_in, BLUE) == 0  # the square's own pixels, not the circle over it
    assert share(ci_in, BLUE) > 0.8 and share(ci_in, RED) == 0
    assert not (sq_in & ci_in).any() and not (sq_in & sq_around).any() and not (ci_in & sq_around).any()
    assert share(sq_around, GREY) > 0.9  # the background around it
    assert object_masks("", "") == [] and object_masks(regions, "square") == []  # no objects, or a mismatch


def test_contrast_kept_one_for_the_original_gain_for_a_darkened_copy_zero_when_gone():
    img, regions, objects = _scene([("diamond", RED, (12, 14, 40, 42))])
    (inside, around), = object_masks(regions, objects)
    assert abs(contrast_kept(img, img, inside, around) - 1.0) < 1e-9
    assert abs(contrast_kept(0.6 * img, img, inside, around) - 0.6) < 1e-9     # a darkened copy keeps 60%
    gone = np.broadcast_to(np.array(GREY, np.float64), img.shape).copy()      # the object painted over
    assert abs(contrast_kept(gone, img, inside, around)) < 1e-9
    other, _, _ = _scene([("diamond", BLUE, (12, 14, 40, 42))])
    assert contrast_kept(other, img, inside, around) < 0.5  # another colour in its place keeps little of it
    flat = np.full_like(img, 128.0)
    assert contrast_kept(img, flat, inside, around) is None  # nothing to keep: not judged


def test_derangement_moves_every_item():
    for n in (2, 3, 17):
        p = derangement(n)
        assert sorted(p) == list(range(n)) and (p != np.arange(n)).all()


def test_the_drawn_pixels_are_the_shapes_not_their_boxes():
    from benchmarks.bench_bright_ending import drawn_pixels

    img, regions, objects = _scene([("ring", RED, (8, 8, 40, 40))])
    mask = drawn_pixels(regions, objects)
    assert mask.shape == (64, 64) and mask[8, 24] and not mask[24, 24]  # the ring, not its hole
    assert not mask[:, 44:].any() and drawn_pixels("", "") is None


def test_kept_objects_tells_a_copy_from_one_whose_object_has_gone():
    import pandas as pd

    from benchmarks.bench_copy_content import kept_objects

    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 200, 20), (200, 40, 200), (20, 200, 200)]
    scenes = [_scene([("square", c, (6 + 4 * i, 8, 30 + 4 * i, 32)), ("circle", colours[-1 - i], (34, 34, 58, 58))])
              for i, c in enumerate(colours)]
    items = pd.DataFrame({"regions": [r for _, r, _ in scenes], "objects": [o for _, _, o in scenes]})
    originals = [Image.fromarray(img.astype(np.uint8)) for img, _, _ in scenes]
    copies = list(originals)
    copies[2] = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))  # both objects gone
    scene, keep, own, bar = kept_objects(copies, originals, items)
    assert scene.all() and keep.tolist() == [True, True, False, True, True, True]
    assert all(abs(c - 1) < 1e-9 for i, cs in enumerate(own) if i != 2 for c in cs) and bar < 1
    mirrored = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in originals]  # a mirrored copy is mirrored back
    assert kept_objects(mirrored, originals, items, mirrored=True)[1].all()


def test_the_edits_misses_are_told_apart_from_the_redraws(capsys):
    """Item by item, a tinted copy's misses against the unedited strength-0.3 copy it was made from."""
    from benchmarks.bench_copy_content import edit_overlap

    edit_overlap({"model:img2img@0.3": {1: True, 2: False, 3: False, 4: True},
                  "model:tint@0.3": {1: False, 2: False, 3: True, 4: True},
                  "model:vae": {1: True}})
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["model:tint@0.3: 2 of 4 missed; 1 of them missed unedited too, 1 missed only edited; 1 recalled "
                   "only edited (img2img@0.3 missed 2)"]


def test_each_verdict_level_is_counted_with_its_own_image_at_top1(capsys):
    """What a user reads of each copy: the share of copies at each verdict level and how many of those have the
    copy's own image at top-1 (hand-made verdicts: 2 replicated, both own; 1 possible, not own; 1 novel, own)."""
    from benchmarks.bench_copy_content import print_verdicts

    print_verdicts({"model:img2img@0.5": [("replicated", True), ("possible copy", False), ("replicated", True),
                                          ("novel", True)]},
                   0.25, {"value": 0.18, "source": "5% of distinct images"})
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[:2] == ["model:img2img@0.5", "4"]
    assert " ".join(row[2:]) == "50.0% (2 of 2) 0 25.0% (0 of 1) 25.0% (1 of 1)"


def test_the_threshold_for_a_recall_is_the_highest_that_reaches_it():
    """Ten copies' scores: 90% recall needs 9 above the threshold, so it sits just under the 9th best; one copy
    whose own image was not among its best matches (-inf) never counts; 100% of these is out of reach."""
    from benchmarks.bench_copy_content import recall_threshold

    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, -np.inf])
    t = recall_threshold(s, 0.9)
    assert (s > t).sum() == 9 and t < 0.1 and t > 0.0999
    assert (s > recall_threshold(s, 0.5)).sum() == 5
    assert recall_threshold(s, 1.0) == -np.inf
