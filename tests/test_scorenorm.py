"""Score normalization (SSCD's, ``memlab.scorenorm``) on hand-made arrays, and through an index built with it."""
import numpy as np
import pandas as pd
import pytest
from PIL import ImageEnhance, ImageOps

from memlab import scorenorm
from memlab.descriptors import create_descriptor
from memlab.errors import MemlabError
from memlab.index import TrainingIndex, build_index
from memlab.match import match_images
from tests.helpers import synthetic_images

SPEC = {"k": 2, "beta": 1.0, "mirror": False}


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_rule_in_words_names_each_view_as_records_name_it():
    """The words list the query's views as a result's ``view`` names them, one by one: "brightness x1.5, mirrored"
    is one view (the words once ran it into the list: "as given and mirrored, brightness x1.5, brightness x1.5,
    mirrored")."""
    import re

    spec = {**SPEC, "mirror": True, "gains": [1.5], "contrast": [2.0]}
    views = re.search(r"the best of the query's views \((.*?)\)(;|$)", scorenorm.words(spec)).group(1).split(" / ")
    assert views == ["as given"] + scorenorm.view_names(spec) == ["as given", "mirrored", "brightness x1.5",
                                                                 "brightness x1.5, mirrored", "contrast x2",
                                                                 "contrast x2, mirrored"]
    assert "views" not in scorenorm.words(SPEC)  # no other view: none named


def test_normalizer_is_the_mean_of_the_k_best_other_images():
    best = np.array([0.9, 0.5, 0.7, 0.1])
    assert scorenorm.normalizer(best, [0], 2) == pytest.approx((0.7 + 0.5) / 2)
    assert scorenorm.normalizer(best, [0, 2], 2) == pytest.approx((0.5 + 0.1) / 2)
    assert scorenorm.normalizer(best, [0, 1, 2], 2) == pytest.approx(0.1)  # fewer than k: those there are
    assert scorenorm.normalizer(best, [0, 1, 2, 3], 2) == 0.0


def test_candidates_are_normalized_by_the_other_images_not_their_own_duplicates():
    # two rows of image 0 (a duplicate), then images 1, 2, 3
    s = scorenorm.normalize_candidates([0.9, 0.85, 0.5, 0.4, 0.1], [0, 0, 1, 2, 3], k=2, beta=1.0)
    assert s[0] == pytest.approx(0.9 - (0.5 + 0.4) / 2)  # its duplicate 0.85 is not "another image"
    assert s[1] == pytest.approx(0.85 - (0.5 + 0.4) / 2)
    assert s[2] == pytest.approx(0.5 - (0.9 + 0.4) / 2)
    half = scorenorm.normalize_candidates([0.9, 0.5, 0.4], [0, 1, 2], k=2, beta=0.5)
    assert half[0] == pytest.approx(0.9 - 0.5 * 0.45)


def test_background_and_copies_recomputed_by_brute_force():
    rng = np.random.default_rng(0)
    v = unit(rng.standard_normal((12, 8)))
    v[5] = v[4]  # rows 4 and 5: one image
    groups = np.array([0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10])
    reps = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])
    got = scorenorm.background(v, groups, reps, SPEC)
    for j, r in enumerate(reps):
        sim = v @ v[r]
        per = {g: sim[groups == g].max() for g in set(groups) if g != groups[r]}
        ranked = sorted(per.values(), reverse=True)
        assert got[j] == pytest.approx(ranked[0] - np.mean(ranked[1:3]), abs=1e-5)
    q = unit(v[[4, 7]] + 0.1 * rng.standard_normal((2, 8)))
    copy = scorenorm.against(v, groups, q, [5, 7], SPEC)
    for j, (t, qv) in enumerate(zip([5, 7], q)):
        sim = v @ qv
        others = sorted((sim[groups == g].max() for g in set(groups) if g != groups[t]), reverse=True)
        assert copy[j] == pytest.approx(float(qv @ v[t]) - np.mean(others[:2]), abs=1e-5)


def test_two_sided_normalization_recomputed_by_brute_force():
    """CSLS's second side: a match is also normalized by the matched image's own k nearest other images; in the
    background, those leave out the query's own image (it is not a generation's neighbour)."""
    rng = np.random.default_rng(2)
    v = unit(rng.standard_normal((10, 8)))
    v[3] = v[2]  # rows 2 and 3: one image
    groups = np.array([0, 1, 2, 2, 3, 4, 5, 6, 7, 8])
    reps = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9])
    spec = {**SPEC, "train_side": 0.5}

    def others(x, exclude=()):  # image x's representative against every other image's best row
        sim = v @ v[reps[x]]
        return sorted(((sim[groups == g].max(), g) for g in set(groups) if g != x and g not in exclude), reverse=True)
    cos, ids = scorenorm.neighbours(v, groups, reps, 2)
    for x in range(9):
        want = others(x)[:3]
        assert list(ids[x]) == [g for _, g in want] and cos[x] == pytest.approx([c for c, _ in want], abs=1e-6)
    got = scorenorm.background(v, groups, reps, spec, nb=(cos, ids))
    for j, r in enumerate(reps):
        ranked = others(groups[r])
        c, x = ranked[0]
        own = np.mean([cc for cc, _ in others(x, exclude=(groups[r],))[:2]])
        assert got[j] == pytest.approx(c - 0.5 * np.mean([cc for cc, _ in ranked[1:3]]) - 0.5 * own, abs=1e-5)
    q = unit(v[[2, 7]] + 0.1 * rng.standard_normal((2, 8)))
    copy = scorenorm.against(v, groups, q, [3, 7], spec, nb=(cos, ids))
    for j, (t, qv) in enumerate(zip([3, 7], q)):
        sim = v @ qv
        near = sorted((sim[groups == g].max() for g in set(groups) if g != groups[t]), reverse=True)
        own = np.mean([cc for cc, _ in others(groups[t])[:2]])
        assert copy[j] == pytest.approx(float(qv @ v[t]) - 0.5 * np.mean(near[:2]) - 0.5 * own, abs=1e-5)
    with pytest.raises(ValueError, match="neighbours"):
        scorenorm.background(v, groups, reps, spec)


def test_a_hub_needs_a_closer_match_two_sided():
    """A training image that resembles many others (a shared texture) loses more of a match than one unlike the
    rest: with the query's side alone both matches score alike."""
    hub, lone = unit([1, 0, 0, 0]), unit([0, 0, 0, 1])
    v = np.stack([hub, lone, unit([1, 0.3, 0, 0]), unit([1, -0.3, 0, 0]), unit([1, 0, 0.3, 0])])
    groups, reps = np.arange(5), np.arange(5)
    nb = scorenorm.neighbours(v, groups, reps, 2)
    q = np.stack([unit([1, 0, 0, 0.9]), unit([0.9, 0, 0, 1])])  # as close to the hub as to the lone image
    one = scorenorm.against(v, groups, q, [0, 1], SPEC)
    two = scorenorm.against(v, groups, q, [0, 1], {**SPEC, "train_side": 0.5}, nb=nb)
    assert two[0] < two[1] and abs(one[0] - one[1]) < abs(two[0] - two[1])
    cand = scorenorm.normalize_candidates([0.7, 0.7], [0, 1], 2, 1.0, scorenorm.train_term(nb, [0, 1], None, 2), 0.5)
    assert cand[0] < cand[1]


def test_the_better_orientation_is_kept():
    rng = np.random.default_rng(1)
    v = unit(rng.standard_normal((6, 8)))
    groups = np.arange(6)
    far, near = unit(rng.standard_normal((1, 8))), v[[2]]
    plain = scorenorm.against(v, groups, far, [2], SPEC)
    both = scorenorm.against(v, groups, far, [2], SPEC, views=[near])
    assert both[0] > plain[0] and both[0] == pytest.approx(
        1.0 - np.mean(sorted(np.delete(v @ v[2], 2), reverse=True)[:2]), abs=1e-5)


def test_a_rule_is_checked():
    assert scorenorm.check(None) is None
    assert scorenorm.check({"k": 3}) == {"k": 3, "beta": 1.0, "mirror": True, "gains": [], "contrast": [],
                                         "verify": None, "train_side": 0.0}  # a rule written before it: one-sided
    assert scorenorm.view_names(scorenorm.DEFAULT) == ["mirrored", "brightness x1.5", "brightness x1.5, mirrored"]
    assert scorenorm.view_names(scorenorm.check({"mirror": False, "gains": [1.5], "contrast": [2]})) == [
        "brightness x1.5", "contrast x2"]
    assert scorenorm.check({**scorenorm.DEFAULT, "words": "as an index writes it"}) == scorenorm.DEFAULT
    for bad in ({"k": 0}, {"beta": -1}, {"kk": 2}, {"gains": [0]}, {"gains": "1.5"}, {"k": "x"}, {"k": None},
                {"k": 1.5}, {"mirror": "yes"}, {"beta": float("nan")}, {"gains": [None]}, {"contrast": [0]},
                {"contrast": "2"}, {"train_side": 1.5}, {"train_side": -0.1}, {"train_side": "half"}):
        with pytest.raises(MemlabError):
            scorenorm.check(bad)


def test_an_index_calls_mirrored_and_darkened_copies_and_names_its_score(tmp_path):
    ims = synthetic_images(60, seed=3)
    items = pd.DataFrame({"id": range(60), "caption": [f"field {i}" for i in range(60)],
                          "file": [f"{i}.png" for i in range(60)]})
    d = create_descriptor("memlab-copy")
    assert d.score_norm == scorenorm.DEFAULT
    build_index(tmp_path / "i", items, lambda i: ims[i], [d], calib_n=30)
    idx = TrainingIndex.load(tmp_path / "i")
    info = idx.descriptor_info("memlab-copy")
    assert info["score_norm"]["k"] == 2 and "score normalization" in info["score_norm"]["words"]
    # the threshold is the 99% point of the normalized background, recomputed here from the stored vectors
    v = np.asarray(idx.vectors("memlab-copy"), np.float32)
    reps = np.flatnonzero(idx.items["representative"].to_numpy())
    views = scorenorm.view_vectors(d, [ims[r] for r in reps], d.score_norm)
    bg = scorenorm.background(v, idx.items["distinct"].to_numpy(), reps, d.score_norm, views)
    assert info["threshold"]["value"] == pytest.approx(float(np.quantile(bg, 0.99, method="higher")), abs=1e-6)
    assert idx.neighbours("memlab-copy") is None and "CSLS" not in info["score_norm"]["words"]  # one-sided
    queries = [ImageOps.mirror(ims[7]), ImageEnhance.Brightness(ims[11]).enhance(0.6), ims[20]]
    res = match_images(idx, d, queries, ["mirror", "dark", "same"], k=3)
    (m, dark, same) = res["queries"]
    assert m["matches"][0]["id"] == 7 and scorenorm.is_mirrored(m["view"]) and m["verdict"] == "replicated"
    assert dark["matches"][0]["id"] == 11 and dark["verdict"] == "replicated"
    assert same["view"] == "as given" and same["matches"][0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    # the score is the cosine less the mean of the next two images' cosines
    top = same["matches"]
    assert top[0]["score"] == pytest.approx(top[0]["cosine"] - (top[1]["cosine"] + top[2]["cosine"]) / 2, abs=1e-5)
    assert "score normalization" in res["descriptor"]["score"]
    # without the rule, the same index built again scores plain cosines
    build_index(tmp_path / "p", items, lambda i: ims[i], [create_descriptor("memlab-copy", score_norm=None)],
                calib_n=30)
    plain = match_images(TrainingIndex.load(tmp_path / "p"), d, [ims[20]], ["same"], k=3)["queries"][0]
    assert "view" not in plain and plain["score"] == pytest.approx(1.0, abs=1e-4)


def test_an_index_built_two_sided_keeps_the_neighbours_and_scores_with_them(tmp_path):
    ims = synthetic_images(40, seed=4)
    items = pd.DataFrame({"id": range(40), "caption": [""] * 40, "file": [f"{i}.png" for i in range(40)]})
    d = create_descriptor("memlab-copy", score_norm={**scorenorm.DEFAULT, "train_side": 0.5})
    build_index(tmp_path / "i", items, lambda i: ims[i], [d], calib_n=20)
    idx = TrainingIndex.load(tmp_path / "i")
    info = idx.descriptor_info("memlab-copy")
    assert info["score_norm"]["train_side"] == 0.5 and "two-sided as CSLS" in info["score_norm"]["words"]
    v = np.asarray(idx.vectors("memlab-copy"), np.float32)
    distinct = idx.items["distinct"].to_numpy()
    reps = np.flatnonzero(idx.items["representative"].to_numpy())
    nb = scorenorm.neighbours(v, distinct, reps, 2)
    assert all(np.array_equal(a, b) for a, b in zip(nb, idx.neighbours("memlab-copy")))
    views = scorenorm.view_vectors(d, [ims[r] for r in reps], d.score_norm)
    bg = scorenorm.background(v, distinct, reps, d.score_norm, views, nb=nb)
    assert info["threshold"]["value"] == pytest.approx(float(np.quantile(bg, 0.99, method="higher")), abs=1e-6)
    # a query's score: the cosine less half the mean of its two nearest other images and half the matched image's
    # own two nearest others (the query is not in the training set: nothing left out)
    top = match_images(idx, d, [ims[20]], ["same"], k=3)["queries"][0]["matches"][0]
    x = distinct[top["row"]]
    sim = v @ d.embed([ims[20]])[0]
    near = sorted((sim[distinct == g].max() for g in set(distinct) if g != x), reverse=True)[:2]
    own = scorenorm.train_term(nb, [x], None, 2)[0]
    assert top["id"] == 20 and top["score"] == pytest.approx(top["cosine"] - 0.5 * np.mean(near) - 0.5 * own, abs=1e-5)
    # neighbours that do not fit the index (an id past its images, a wrong shape) are refused, not indexed with
    cos, ids = nb
    for bad in ((cos, np.where(ids == ids.max(), len(cos) + 5, ids)), (cos[:, :2], ids[:, :2]), (cos[:-1], ids[:-1])):
        with pytest.raises(MemlabError, match="neighbours"):
            scorenorm.check_neighbours(bad, len(cos), 2)
    kept = scorenorm.check_neighbours(nb, len(cos), 2)
    assert np.array_equal(kept[0], cos) and np.array_equal(kept[1], ids)


def test_a_manifest_with_a_bad_rule_is_refused(tmp_path):
    import json

    ims = synthetic_images(12, seed=4)
    items = pd.DataFrame({"id": range(12), "caption": [""] * 12, "file": [f"{i}.png" for i in range(12)]})
    build_index(tmp_path / "i", items, lambda i: ims[i], [create_descriptor("memlab-copy")], calib_n=6)
    path = tmp_path / "i" / "manifest.json"
    m = json.loads(path.read_text())
    m["descriptors"]["memlab-copy"]["score_norm"]["k"] = 0
    path.write_text(json.dumps(m))
    with pytest.raises(MemlabError, match="score_norm"):
        TrainingIndex.load(tmp_path / "i")


def test_a_mirrored_match_is_compared_locally_as_it_matched(tmp_path):
    """A generation whose mirror image matched: its masked score and its agreement with the training image are
    measured on the mirror image (and its mask mirrored), where they agree; as given they do not."""
    from PIL import Image

    from memlab.match import masked_score, partial_copy

    rng = np.random.default_rng(7)
    ims = [Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)) for _ in range(10)]
    root = tmp_path / "images"
    root.mkdir()
    for i, im in enumerate(ims):
        im.save(root / f"{i}.png")
    items = pd.DataFrame({"id": range(10), "caption": [""] * 10, "file": [f"{i}.png" for i in range(10)]})
    build_index(tmp_path / "i", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=5,
                image_root=str(root))
    idx = TrainingIndex.load(tmp_path / "i")
    gen = ImageOps.mirror(ims[3])
    mask = np.zeros((16, 16))
    mask[:, :6] = 1.0  # the left of the generation: the right of the training image
    assert masked_score(idx, 3, gen, mask, mirrored=True) == pytest.approx(1.0, abs=1e-6)
    assert masked_score(idx, 3, gen, mask) < 0.5
    base = {"matches": [{"row": 3}], "verdict": "novel"}
    mirrored = partial_copy(idx, {**base, "view": "mirrored"}, gen)["agreement"]["share"]
    as_given = partial_copy(idx, dict(base), gen)["agreement"]["share"]
    assert mirrored == 1.0 and as_given < 0.5
