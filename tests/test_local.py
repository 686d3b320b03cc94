"""Local memorization (issue 32): Chen et al.'s bright-ending map and localized detection, the masked
similarity, the "template copy" verdict, and their place in the run records."""
from __future__ import annotations

import numpy as np
import pytest


def test_masked_similarity_counts_only_the_mask_and_ignores_colour_casts():
    from memlab.metrics import masked_similarity

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (32, 32, 3))
    mask = np.zeros((32, 32))
    mask[8:24, 8:24] = 1.0
    for sigma in (0.0, 1.0):  # raw pixels and their detail
        assert masked_similarity(a, a, np.ones((32, 32)), sigma) == pytest.approx(1.0)  # an image with itself: 1
        tinted = a * np.array([0.6, 0.8, 0.5]) + np.array([40.0, -10.0, 25.0])  # a cast and darkening per channel
        assert masked_similarity(a, tinted, mask, sigma) == pytest.approx(1.0)
        other = a.copy()
        other[mask == 0] = rng.uniform(0, 255, ((mask == 0).sum(), 3))  # outside the mask: anything
        inner = np.zeros((32, 32))
        inner[11:21, 11:21] = 1.0  # (the detail of a pixel reads its neighbours: 3 sigma in from the edge)
        assert masked_similarity(a, other, mask if sigma == 0 else inner, sigma) == pytest.approx(1.0, abs=1e-3)
        assert masked_similarity(a, other, np.ones((32, 32)), sigma) < 0.5  # the whole image: not a copy
        assert abs(masked_similarity(a, rng.uniform(0, 255, (32, 32, 3)), mask, sigma)) < 0.15  # unrelated
        assert np.isnan(masked_similarity(a, a, np.zeros((32, 32)), sigma))
    with pytest.raises(ValueError):
        masked_similarity(a, a[:16], mask)


def test_masked_similarity_compares_detail_not_smooth_colour_fields():
    """Two unrelated images that share only a smooth colour field (a bright blob in the middle) correlate on raw
    pixels as a copy would; their detail does not. A copied frame of marks under another smooth shading keeps
    its score (the calibration generations that once set the template threshold: bench_template_mask.py)."""
    from memlab.metrics import detail, masked_similarity

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = 200.0 * np.exp(-((xx - 32.0) ** 2 + (yy - 32.0) ** 2) / (2 * 12.0 ** 2))
    a = blob[..., None] + rng.normal(0, 6, (64, 64, 3))  # the same blob, different fine texture
    b = blob[..., None] * np.array([0.8, 1.0, 0.6]) + rng.normal(0, 6, (64, 64, 3))
    ones = np.ones((64, 64))
    assert masked_similarity(a, b, ones, sigma=0) > 0.9  # raw pixels: "a copy"
    assert abs(masked_similarity(a, b, ones)) < 0.1  # detail: unrelated
    marks = np.zeros((64, 64, 3))
    marks[4:60:6, 4:60:3] = 120.0  # a band of dark marks and a frame, copied
    marks[:2], marks[-2:], marks[:, :2], marks[:, -2:] = 90.0, 90.0, 90.0, 90.0
    ramp = np.linspace(0, 150, 64)[None, :, None] * np.ones((64, 64, 3))
    assert masked_similarity(marks + blob[..., None], marks + ramp, ones) > 0.8  # other shading, same marks
    assert masked_similarity(marks + blob[..., None], marks + ramp, ones, sigma=0) < 0.5
    assert np.allclose(detail(a, 0), a) and abs(detail(blob[..., None] * np.ones(3)).mean()) < 1.0


def test_a_template_threshold_on_another_masked_score_is_not_used():
    """A world calibrated before the masked score compared the images' detail (raw pixels, every seed) keeps its
    threshold in world.json, on another scale: memlab gives no ``template copy`` verdict from it."""
    from memlab.local import MASKED_SCORE, current_threshold

    assert current_threshold({"value": 0.861, "fpr": 0.01, "n": 640}) is None
    assert current_threshold({"value": 0.3, **MASKED_SCORE, "detail_sigma": 2.0}) is None
    assert current_threshold(None) is None
    now = {"value": 0.26, "fpr": 0.01, **MASKED_SCORE}
    assert current_threshold(now) is now


def test_mask_coverage_and_the_verdict_with_a_template_level():
    from memlab.metrics import mask_coverage, verdict

    m = np.full((8, 8), 0.2)
    m[2:4, 2:4] = 0.8
    region = np.zeros((8, 8), bool)
    region[2:4, 2:4] = True
    assert mask_coverage(m, region) == pytest.approx(4.0)
    assert mask_coverage(np.ones((8, 8)), region) == pytest.approx(1.0)
    assert verdict(0.8, 0.76, 0.7) == "replicated"
    assert verdict(0.8, 0.76, 0.7, masked=0.1, masked_threshold=0.5) == "replicated"  # whole copies stay whole
    assert verdict(0.5, 0.76, 0.7, masked=0.9, masked_threshold=0.5) == "template copy"
    assert verdict(0.72, 0.76, 0.7, masked=0.3, masked_threshold=0.5) == "possible copy"
    assert verdict(0.5, 0.76, 0.7, masked=0.9, masked_threshold=None) == "novel"  # no calibrated threshold
    # with Webster's agreement share and its threshold, both regions must pass
    assert verdict(0.5, 0.76, 0.7, 0.9, 0.5, agreement=0.4, agreement_threshold=0.2) == "template copy"
    assert verdict(0.5, 0.76, 0.7, 0.9, 0.5, agreement=0.1, agreement_threshold=0.2) == "novel"
    assert verdict(0.72, 0.76, 0.7, 0.9, 0.5, agreement=0.1, agreement_threshold=0.2) == "possible copy"
    assert verdict(0.5, 0.76, 0.7, 0.3, 0.5, agreement=0.9, agreement_threshold=0.2) == "novel"  # the mask's fails
    assert verdict(0.8, 0.76, 0.7, 0.0, 0.5, agreement=0.0, agreement_threshold=0.2) == "replicated"


def test_local_detection_with_a_full_mask_is_wens_norm_and_follows_the_mask():
    from memlab.attention import bright_ending, local_detection

    rng = np.random.default_rng(1)
    diff = rng.normal(size=(3, 4, 8, 8))  # [B, channels, h, w]
    d2 = (diff ** 2).sum(1)
    wen = np.linalg.norm(diff.reshape(3, -1), axis=1)
    assert np.allclose(local_detection(d2, np.ones((3, 8, 8))), wen)
    m = np.zeros((3, 8, 8))
    m[:, :4] = 1.0
    want = np.linalg.norm(diff[:, :, :4].reshape(3, -1), axis=1) / 0.5  # Chen et al.: ||m d|| / mean(m)
    assert np.allclose(local_detection(d2, m), want)
    soft = rng.uniform(0, 1, (3, 8, 8))  # a soft map weighs the difference itself (m d), at any scale
    want = np.linalg.norm((diff * soft[:, None]).reshape(3, -1), axis=1) / soft.mean((1, 2))
    assert np.allclose(local_detection(d2, soft), want) and np.allclose(local_detection(d2, 0.01 * soft), want)
    maps = [rng.uniform(0, 2, (3, 8, 8)) for _ in range(4)]
    be = bright_ending(maps)
    assert np.allclose(be.max(axis=(1, 2)), 1.0) and np.allclose(be, np.mean(maps, 0) / np.mean(maps, 0).max(
        axis=(1, 2), keepdims=True))


def test_the_bright_ending_is_read_from_the_down_paths_finest_cross_attention_as_chen_et_al_read_it():
    """The authors' code (BE-PRSS ``AttentionStore``) keeps the down path's cross-attention at SD v1's 64 x 64
    latents: down block 0's two layers. memlab takes the first down block with cross-attention (SDXL has none in
    block 0), every layer where the down path has none; a generation keeps those layers' maps alone."""
    from memlab.attention import end_token_layers

    def names(blocks):
        return [f"{b}.attentions.{a}.transformer_blocks.0.attn2" for b, n in blocks for a in range(n)]
    sd1 = names([("down_blocks.0", 2), ("down_blocks.1", 2), ("down_blocks.2", 2), ("mid_block", 1),
                 ("up_blocks.1", 3), ("up_blocks.2", 3), ("up_blocks.3", 3)])
    assert [sd1[i] for i in end_token_layers(sd1)] == sd1[:2]
    sdxl = [n.replace(".attn2", "") + f".{t}.attn2" for n in names([("down_blocks.1", 2), ("down_blocks.2", 2)])
            for t in range(2)] + names([("mid_block", 1), ("up_blocks.0", 3)])
    assert end_token_layers(sdxl) == [0, 1, 2, 3]
    assert end_token_layers(names([("mid_block", 1), ("up_blocks.0", 2)])) == [0, 1, 2]


def test_the_world_attn16_config_reads_the_bright_ending_at_the_latents_resolution():
    """``world-attn16`` (issue 32's architecture check) is the world's model with cross-attention in down block 0
    too: the bright ending is read there, at the 16 x 16 latents, where ``world`` reads down block 1 at 8 x 8."""
    import torch
    from diffusers import UNet2DConditionModel

    from memlab.attention import AttentionHub, end_token_layers
    from memlab.pipelines import pipeline_config

    sides = {}
    for name in ("world", "world-attn16"):
        cfg = pipeline_config(name)
        assert {k: v for k, v in cfg.items() if k != "unet"} == {k: v for k, v in pipeline_config("world").items()
                                                                  if k != "unet"}
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**cfg["unet"])
        hub = AttentionHub.of(unet)
        modules = dict(unet.named_modules())
        seen = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.setdefault(n, a[0].shape[1]))
                 for n in hub.cross_layers]
        with torch.no_grad():
            unet(torch.zeros(1, 4, 16, 16), 10, encoder_hidden_states=torch.zeros(1, 77, 64))
        for h in hooks:
            h.remove()
        sides[name] = {int(round(seen[hub.cross_layers[i]] ** 0.5)) for i in end_token_layers(hub.cross_layers)}
    assert sides == {"world": {8}, "world-attn16": {16}}


def test_a_generation_keeps_the_end_token_maps_of_those_layers_alone(tiny_world):
    import memlab.attention as attention
    from memlab.generate import Settings
    from memlab.world import World

    gen = World.load(tiny_world).generator()
    hub = attention.AttentionHub.of(gen.pipe.unet)
    want = attention.end_token_layers(hub.cross_layers)
    assert len(hub.cross_layers) > len(want) and hub.end_layers == set(want)
    got, shipped = [], attention.bright_ending
    attention.bright_ending = lambda maps: (got.append(len(maps)), shipped(maps))[1]
    try:
        list(gen.generate("a colour field 3", [0, 1], settings=Settings(steps=3)))
    finally:
        attention.bright_ending = shipped
    assert got == [len(want)]


def test_the_end_tokens_map_is_read_from_the_conditional_rows_at_the_prompts_end():
    """``_CrossAttention._end`` on a hand-made attention tensor: the conditional half of a guidance batch,
    the token after each prompt, mean over heads, laid out row-major and resized to the latents."""
    import torch

    from memlab.attention import AttentionContext, _CrossAttention

    b, heads, h, w = 2, 2, 4, 4
    probs = torch.zeros(2 * b, heads, h * w, 77)
    probs[b:, :, :, 3] = torch.arange(h * w, dtype=torch.float32)  # row 0 of cond: its end token is 3
    probs[b + 1, :, :, 5] = 1.0  # row 1: its end token is 5
    probs[:b, :, :, 3] = 99.0  # the unconditional rows are never read
    ctx = AttentionContext(cfg=True, lengths=[4, 6], latent_hw=(8, 8))
    _CrossAttention._end(None, ctx, probs)
    m = ctx.end_maps[0]
    assert m.shape == (2, 8, 8)
    assert torch.allclose(m[1], torch.ones(8, 8))
    assert float(m[0].min()) >= 0 and float(m[0].max()) <= 15  # values of the 4 x 4 grid, upsampled
    assert float(m[0][0, 0]) < float(m[0][0, -1]) < float(m[0][-1, 0])  # row-major: x grows slower than y


def test_runs_record_the_map_its_localized_detection_and_the_masked_score(tiny_world, tmp_path):
    """On the tiny world: every seed carries its bright-ending map (at most 16 x 16, brightest 1), the
    localized detection beside Wen's, and the masked similarity to its top-1 training image (recomputed
    here); with a template threshold the world calibrates, a seed that is not replicated but scores above it
    inside its mask is a "template copy"."""
    from PIL import Image

    from memlab import metrics
    from memlab.generate import Settings
    from memlab.runner import run_prompt
    from memlab.world import World

    world = World.load(tiny_world)
    gen, index = world.generator(), world.index()
    from memlab.match import descriptor_for_index

    desc = descriptor_for_index(index)
    recs = run_prompt(gen, index, desc, "a colour field 3", [0, 1, 2], ["none"], Settings(steps=3),
                      out_dir=tmp_path)
    seeds = [r for r in recs if r["type"] == "seed"]
    for r in seeds:
        m = np.asarray(r["bright_ending"])
        assert m.ndim == 2 and max(m.shape) <= 16 and m.max() == pytest.approx(1.0, abs=1e-3)
        assert np.isfinite(r["detections"]["bright_ending"])
        train = np.asarray(Image.open(index.image_path(r["matches"][0]["row"])).convert("RGB").resize((64, 64),
                                                                                                     Image.LANCZOS))
        im = np.asarray(Image.open(tmp_path / r["image"]).convert("RGB").resize((64, 64), Image.LANCZOS))
        want = metrics.masked_similarity(im, train, metrics.mask_to_image(r["bright_ending"]))
        assert r["masked_score"] == pytest.approx(want, abs=1e-6)
        assert r["masked_threshold"] is None and r["verdict"] != "template copy"
        assert "bright_ending_map" not in (r["mitigation_state"] or {})
    from memlab.agreement import agreement_of

    gen.template_threshold = {"value": min(r["masked_score"] for r in seeds) - 1e-3}
    cal = index.manifest["agreement"]
    assert cal is not None and metrics.agreement_current(cal)
    try:
        again = [r for r in run_prompt(gen, index, desc, "a colour field 3", [0, 1, 2], ["none"], Settings(steps=3),
                                       out_dir=tmp_path / "again") if r["type"] == "seed"]
        index.manifest["agreement"] = {**cal, "threshold": 1.0}  # no share passes it: no template copy
        strict = [r for r in run_prompt(gen, index, desc, "a colour field 3", [0, 1, 2], ["none"], Settings(steps=3))
                  if r["type"] == "seed"]
        index.manifest["agreement"] = {**cal, "threshold": -1.0}  # every share passes: the masked score decides
        loose = [r for r in run_prompt(gen, index, desc, "a colour field 3", [0, 1, 2], ["none"], Settings(steps=3))
                 if r["type"] == "seed"]
    finally:
        gen.template_threshold = None
        index.manifest["agreement"] = cal
    for r in again:  # the agreement share recomputed: a template copy passes both thresholds
        im = Image.open(tmp_path / "again" / r["image"])
        with Image.open(index.image_path(r["matches"][0]["row"])) as train:
            share = agreement_of(im if r["view"] in (None, "as given") else im.transpose(Image.FLIP_LEFT_RIGHT),
                                 train)["share"]
        assert r["agreement_share"] == pytest.approx(share) and r["agreement_threshold"] == cal["threshold"]
        assert (r["verdict"] == "replicated") == r["replicated"]
        assert (r["verdict"] == "template copy") == (not r["replicated"] and share > cal["threshold"])
    assert [r["verdict"] == "replicated" for r in strict] == [r["replicated"] for r in strict]
    assert not any(r["verdict"] == "template copy" for r in strict)
    assert any(not r["replicated"] for r in loose)
    assert [r["verdict"] for r in loose] == ["replicated" if r["replicated"] else "template copy" for r in loose]
    summ = [r for r in recs if r["type"] == "summary"][0]
    assert summ["template_copy_rate"] == 0.0


def test_the_pair_marks_the_copied_region_on_both_images_and_the_caption_gives_the_masked_score():
    """The copied region keeps its own colours (a 60% yellow tint over it hid the colour cast the eye judges),
    outlined; the rest fades."""
    from PIL import Image

    from memlab.app.pictures import FADED, FRAME, MASK_LINE, pair_image
    from memlab.app.views import _template_line, caption

    gen = Image.new("RGB", (8, 8), (0, 0, 200))
    match = Image.new("RGB", (8, 8), (0, 200, 0))
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1.0  # the top-left quarter is "copied"
    plain = np.asarray(pair_image(gen, match, "template copy", scale=4))
    tinted = np.asarray(pair_image(gen, match, "template copy", scale=4, mask=mask))
    assert tuple(plain[0, 0]) == FRAME["template copy"]
    for x0 in (4, 32 + 8):  # the generation, then the match
        corner, far = tinted[4 + 2, x0 + 2].astype(int), tinted[4 + 30, x0 + 30].astype(int)
        assert np.array_equal(corner, plain[4 + 2, x0 + 2])  # inside the mask: its own colours
        assert np.abs(far - np.array(FADED)).sum() < 0.5 * np.abs(plain[4 + 30, x0 + 30].astype(int)
                                                                 - np.array(FADED)).sum()  # outside: faded
        # the region's edge with the rest (the quarter's right and bottom side) is outlined; the image's border is not
        assert tuple(tinted[4 + 2, x0 + 15]) == MASK_LINE and tuple(tinted[4 + 15, x0 + 2]) == MASK_LINE
        assert tuple(tinted[4, x0 + 2]) != MASK_LINE
    holes = mask.copy()
    holes[3, 3] = np.nan  # a map with a hole draws as one whose hole is 0, not as noise
    assert np.array_equal(np.asarray(pair_image(gen, match, "novel", scale=4, mask=holes)),
                          np.asarray(pair_image(gen, match, "novel", scale=4, mask=np.nan_to_num(holes))))
    rec = {"seed": 3, "prompt": "p", "mitigation": {}, "effective_prompt": "p", "image": None,
           "matches": [{"id": 7, "duplicates": 0}], "score": 0.5, "replicated": False, "high_confidence": False,
           "threshold": 0.76, "descriptor": {}, "detection": 1.0, "settings": {}, "model": {},
           "verdict": "template copy", "masked_score": 0.91, "masked_threshold": 0.62}
    assert "TEMPLATE COPY" in caption(rec) and "0.910 vs 0.620" in caption(rec)
    assert "62" not in caption({**rec, "masked_threshold": None, "verdict": "novel"}).split("·")[2]
    current = type("Lab", (), {"template_threshold_note": lambda self: None})()  # a world with a current threshold
    assert "25.0%" in _template_line({"template_copy_rate": 0.25}, [rec], current)[0]
    both = {**rec, "agreement_share": 0.42, "agreement_threshold": 0.19}
    assert "agrees in 42% of windows vs 19%" in caption(both) and "agrees" not in caption(rec)
    whole = {**both, "verdict": "replicated", "replicated": True, "score": 0.9}  # the template check is not its reason
    assert "REPLICATED" in caption(whole) and "copied region" not in caption(whole) and "agrees" not in caption(whole)
    assert "more than 19% of its windows" in _template_line({"template_copy_rate": 0.25}, [both], current)[0]
    assert _template_line({}, [{**rec, "masked_threshold": None}], current) == []


def test_the_template_steps_sentence_counts_its_records():
    from memlab.app.views import template_sentence

    def rec(row, verdict, masked):
        return {"matches": [{"row": row}], "verdict": verdict, "masked_score": masked}

    recs = [rec(1, "template copy", 0.91), rec(2, "template copy", 0.84), rec(3, "replicated", 0.97),
            rec(9, "novel", 0.10)]
    text = template_sentence(recs, lambda row: 0 if row < 5 else None)
    assert text.startswith("3 of 4 seeds have a picture of this template")
    assert "2 are called a **template copy**" in text and "1 replicated as a whole" in text
    assert "0.840-0.970" in text  # the masked scores of the template's seeds only
    assert "more" not in text
    other = template_sentence([*recs, rec(7, "template copy", 0.88), rec(8, "template copy", 0.86)],
                              lambda row: 0 if row < 5 else None)  # matched to another template's pictures
    assert other.startswith("3 of 6 seeds") and "0.840-0.970" in other
    assert other.endswith(". 2 more are called a template copy with a picture of another template as the closest "
                          "training image.")


def test_the_lesson_says_whether_the_tint_marks_the_copied_part_on_this_world():
    """The template step told a class "the region the model copied is tinted yellow" on a world whose card
    measures the bright-ending map no brighter on the copied objects than elsewhere: the tint is named for what it
    is, and the world's own measure decides what is said of it."""
    from memlab.app.views import bright_ending_note

    def card(ratio):
        return {"measured": {"bright_ending_coverage": {"group": "full_ddf20", "median_inside_over_outside": ratio}}}
    plain = bright_ending_note(None)
    assert plain.startswith("Outlined in yellow, the rest faded: the bright-ending map") and "Chen et al." in plain
    assert "card" not in plain and bright_ending_note({"measured": {}}) == plain
    dim = bright_ending_note(card(0.9289))
    assert ("does not single the copied part out (0.93x as bright on the copied objects as elsewhere, the median over "
            "its full duplication x20 probes' seeds, its card)") in dim  # the group in words, as the lesson names it
    bright = bright_ending_note(card(1.31))
    assert "on this world it does (1.31x" in bright and "not" not in bright


def test_the_lesson_reads_each_training_rows_template_from_the_worlds_index(monkeypatch):
    """The lesson's template step counts the seeds whose top-1 is a picture of its template (``Lab.item_template``);
    it read the row through ``TrainingIndex.item``, which keeps only the fields a match shows, so every row had no
    template and the step said "0 of 8" beside 8 pairs framed as template copies. Read from the loaded table and
    from the row group that holds the row (a large index)."""
    from pathlib import Path

    import pandas as pd

    import memlab.index
    from memlab.service import Lab
    from memlab.world import World

    world = Path(__file__).resolve().parents[1] / "assets" / "world"
    table = pd.read_parquet(world / "index" / "items.parquet")
    planted = table.index[table["template"] >= 0]
    rows = [int(planted[0]), int(planted[-1]), int(table.index[table["template"] < 0][0])]
    want = [int(table["template"].iat[r]) if table["template"].iat[r] >= 0 else None for r in rows]
    assert want[0] is not None and want[2] is None
    lab = Lab(World.load(world), device="cpu")
    assert [lab.item_template(r) for r in rows] == want
    probe = pd.read_csv(world / "probes.csv").query("group == 'template'").iloc[0]
    assert lab.probe_template(probe["prompt"]) == int(probe["template"])
    monkeypatch.setattr(memlab.index, "SMALL_ITEMS", 0)  # as an index too large to read whole
    idx = memlab.index.TrainingIndex.load(world / "index")
    assert [idx.value(r, "template") for r in rows] == [w if w is not None else -1 for w in want]
    assert idx._items is None and idx.value(rows[0], "no such column", "none") == "none"


def test_the_hidden_object_classifier_is_trained_on_labelled_renders_and_round_trips(tmp_path):
    """Issue 30 item 4: the hidden object is counted on the generated images by a classifier trained on the
    world's own lighthouse renders: its renders are labelled by what was drawn (the flag
    is drawn exactly when labelled), and a saved classifier answers as the trained one."""
    from memlab.objects import ObjectClassifier, ObjectNetConfig, accuracy, renders, train_object_classifier

    import random

    from memlab.worldgen import _lighthouse, _small

    ims, has = renders(20, 7)
    assert has.sum() == 10
    for i in range(6):  # the same scene drawn with and without the flag: the render is the labelled one
        with_flag, without = (np.asarray(_small(_lighthouse(random.Random(7 + i), f)[0])) for f in (True, False))
        assert not np.array_equal(with_flag, without)
        assert np.array_equal(np.asarray(ims[i]), with_flag if has[i] else without)
    m = train_object_classifier(ObjectNetConfig(width=4, renders=40, epochs=1, held_out=20), log=lambda s: None)
    assert set(m.card["held_out"]["renders"]) == {"n", "accuracy", "true_positive_rate", "false_positive_rate"}
    m.save(tmp_path / "o")
    again = ObjectClassifier.load(tmp_path / "o")
    assert np.allclose(again.probabilities(ims), m.probabilities(ims), atol=1e-6)

    class Always:  # accuracy of a classifier that always says "flag": half the renders, all the flags
        def features(self, images):
            return np.ones(len(images), bool)
    a = accuracy(Always(), ims, has)
    assert a == {"n": 20, "accuracy": 0.5, "true_positive_rate": 1.0, "false_positive_rate": 1.0}


def test_the_cards_template_figures_need_both_regions_where_the_index_calibrated_the_agreement():
    """issue 32's card figures recomputed from hand-made seeds: the masked verdict counts a seed when its masked
    score and its agreement share both pass their thresholds (the masked score alone is reported beside)."""
    import pandas as pd

    from memlab.local import template_figures

    thr, agree = 0.25, 0.19
    base = pd.DataFrame([
        {"group": "template", "masked": [0.5, 0.5, 0.5, 0.1], "replicated": [False, False, True, False],
         "own_top1": [True, True, True, False], "verdicts": ["template copy", "novel", "replicated", "novel"],
         "agreement": [(0.4, agree), (0.1, agree), (0.5, agree), (0.9, agree)]},
        {"group": "unique", "masked": [0.6, 0.6, 0.1, None], "replicated": [False] * 4, "own_top1": [True] * 4,
         "verdicts": ["template copy", "novel", "novel", "novel"],
         "agreement": [(0.3, agree), (0.05, agree), (0.9, agree), (None, None)]},
        {"group": "full_ddf20", "masked": [0.9, 0.9], "replicated": [True, False], "own_top1": [True, True],
         "verdicts": ["replicated", "possible copy"], "agreement": [(0.9, agree), (0.9, agree)]}])
    f = template_figures(base, thr)
    assert f["template_seeds_own_template"] == 3 and f["template_seeds"] == 4 and f["unique_seeds"] == 3
    assert f["masked_calls_copy"] == pytest.approx(2 / 3)  # the second seed's windows do not agree
    assert f["masked_alone_calls_copy"] == pytest.approx(1.0)
    assert f["global_calls_copy"] == pytest.approx(1 / 3) and f["verdict_template_copy"] == pytest.approx(1 / 3)
    assert f["unique_masked_false_positives"] == pytest.approx(1 / 3)
    assert f["unique_masked_alone_false_positives"] == pytest.approx(2 / 3)
    assert f["agreement_threshold"] == agree and f["full_high_still_replicated"] == 0.5
    old = base.drop(columns="agreement")  # records from before the agreement check: the masked score alone
    assert template_figures(old, thr)["masked_calls_copy"] == pytest.approx(1.0)


def test_a_world_whose_template_threshold_is_out_of_date_says_so_where_it_runs(tiny_world, tmp_path, capsys):
    """A template threshold calibrated on another masked score or map (before issue 32's third pass: no ``map``)
    is not used, and ``memlab run`` and the app's summary say why no seed is a template copy; a current one, or
    none, says nothing."""
    import json
    import shutil

    from memlab.app.views import _template_line
    from memlab.cli import main
    from memlab.local import MASKED_SCORE
    from memlab.world import World, write_world_json

    w = tmp_path / "world"
    shutil.copytree(tiny_world, w)
    manifest = json.loads((w / "world.json").read_text())
    old = {k: v for k, v in MASKED_SCORE.items() if k != "map"}
    write_world_json(w, **{**manifest, "template_threshold": {"value": 0.2, "fpr": 0.01, **old}})
    note = World.load(w).template_threshold_note()
    assert note and "--refresh" in note and World.load(w).generator().template_threshold is None
    assert main(["run", "--world", str(w), "--prompt", "a colour field 3", "--seeds", "0", "--steps", "2",
                 "--out", str(tmp_path / "r.jsonl")]) == 0
    assert f"warning: {note}" in capsys.readouterr().err

    class Lab:
        def template_threshold_note(self):
            return note
    assert _template_line({}, [{"masked_threshold": None}], Lab()) == [f"- **template copies**: none called: {note}"]
    write_world_json(w, **{**manifest, "template_threshold": {"value": 0.2, "fpr": 0.01, **MASKED_SCORE}})
    assert World.load(w).template_threshold_note() is None and World.load(w).generator().template_threshold
    write_world_json(w, **{k: v for k, v in manifest.items() if k != "template_threshold"})
    assert World.load(w).template_threshold_note() is None
