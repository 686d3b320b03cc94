"""The world card's group table (memlab.evaluate), on hand-made probe runs."""
import pandas as pd
import pytest

from memlab.evaluate import _group_table


def test_group_table_splits_replication_into_own_and_other_items():
    # two probes of one group, 4 seeds each: probe 7 copies itself twice and item 3 once; probe 9 copies
    # item 5 once and has item 9 (its own) at top-1 once without being replicated
    runs = pd.DataFrame([
        {"prompt": "a", "group": "partial_ddf20", "item": 7, "strategy": "none",
         "replicated": [True, True, True, False], "own_top1": [True, True, False, False],
         "top_items": [7, 7, 3, 4], "replication_rate": 0.75, "original_recall": 0.5, "detection": 1.0,
         "scores": [0.9, 0.9, 0.8, 0.1]},
        {"prompt": "b", "group": "partial_ddf20", "item": 9, "strategy": "none",
         "replicated": [False, True, False, False], "own_top1": [True, False, False, False],
         "top_items": [9, 5, 4, 4], "replication_rate": 0.25, "original_recall": 0.25, "detection": 1.0,
         "scores": [0.5, 0.85, 0.1, 0.1]},
    ])
    row = _group_table(runs, 0.7, {3: "unique", 5: "full_ddf20"})["partial_ddf20"]["none"]
    assert row["replication_rate"] == pytest.approx(0.5)
    assert row["replicated_own"] == pytest.approx(2 / 8) and row["replicated_other"] == pytest.approx(2 / 8)
    assert row["replicated_own"] + row["replicated_other"] == pytest.approx(row["replication_rate"])
    assert row["replicated_other_by_group"] == {"full_ddf20": 1, "unique": 1}
    assert row["original_recall"] == pytest.approx(0.375)
    # of the 3 seeds whose top-1 is their own item, 2 are replicated (probe 9's own top-1 is not)
    assert row["replicated_given_own_top1"] == pytest.approx(2 / 3)


def _measured(given_own=0.95, unique=0.03, flagged=0.02, lesson=7, views=0.97, worst=0.91, cut=1 / 3,
              attribution=(7, 8, 20, 24), masked=0.8, coverage=1.01):
    """A card's ``measured`` figures, made by hand, each near one bound of issues 30 and 32."""
    return {
        "mitigations_on": "full_ddf20",
        "groups": {"full_ddf20": {"replication_rate": 0.9, "replicated_given_own_top1": given_own},
                   "partial_ddf20": {"replication_rate": 0.45}, "unique": {"replication_rate": unique}},
        "lesson_first_probe": {"prompt": "p", "seeds": 8, "replicated": lesson},
        "non_copies": {"n": 100, "flagged": flagged, "nominal_fpr": 0.01},
        "model_copies": {"model:all": {"n": 4, "recall": 0.93}, "model:img2img@0.5": {"n": 2, "recall": worst},
                         "model:vae": {"n": 2, "recall": 1.0}, "model:all-not-photo": {"n": 1, "recall": 0.5},
                         "model:mirror@0.3": {"n": 2, "recall": 0.6}, "views:all": {"n": 4, "recall": views},
                         "views:img2img@0.5": {"n": 2, "recall": 0.5}},
        "token_attribution": dict(zip(("distinctive_above_template", "probes", "control_distinctive_above_template",
                                       "control_unique_probes"), attribution)),
        "mitigations": {"rna": {"relative_cut": cut, "alignment_ratio": 0.5},
                        "ren": {"relative_cut": 0.5, "alignment_ratio": 0.9}},
        "template": {"masked_calls_copy": masked, "global_calls_copy": 0.3, "unique_masked_false_positives": 0.03,
                     "template_seeds_own_template": 10, "unique_seeds": 100},
        "bright_ending_coverage": {"median_inside_over_outside": coverage, "seeds": 10},
    }


def test_checks_hold_issue_30s_bounds_each_on_its_own_figure():
    """The card's checks (issues 30 and 32), recomputed from a card's figures alone: replicated among own-top-1
    seeds >= 95%, the lesson's first probe >= 7 of 8, unique <= 3%, non-copies <= 2%, every kind of model copy >=
    90% (the views model's kinds and the pooled rows not among them), the held-out model within 5 points, partial
    at most half of full, attribution above its unique control, a mitigation's cut of a third, the template
    checks and the bright ending above 1x; a figure just past each bound fails its check, and each check names
    the figure it was decided on."""
    from memlab.cardchecks import card_checks, checks_dict

    ok = checks_dict(_measured())
    assert ok["replicated_at_least_95pct_of_own_top1_seeds"] and ok["lesson_first_probe_at_least_7_of_8"]
    assert ok["unique_at_most_3pct"] and ok["non_copies_flagged_at_most_2pct"]
    assert ok["model_copy_recall_worst_kind_at_least_90pct (model:img2img@0.5)"]  # views:* is not the world's
    assert ok["held_out_model_within_5_points_of_views_model"] and ok["partial_at_most_half_full"]
    assert not ok["tinted_darkened_mirrored_copies_at_least_90pct (model:mirror@0.3)"]  # checked on its own
    assert ok["attribution_distinctive_above_template_7_of_8"] and ok["attribution_above_its_unique_control"]
    assert ok["rna_cuts_a_third"] and ok["ren_nemo_or_jain_cuts_a_third_keeping_90pct_alignment"]
    assert ok["template_masked_calls_at_least_80pct"] and ok["template_global_calls_fewer"]
    assert ok["unique_masked_false_positives_at_most_3pct"] and ok["bright_ending_lights_the_copied_objects"]
    bad = checks_dict(_measured(given_own=0.94, unique=0.031, flagged=0.021, lesson=6, views=0.99, worst=0.89,
                                cut=0.33, attribution=(6, 8, 18, 24), masked=0.79, coverage=1.0))
    assert [k for k, v in bad.items() if v] == ["full_high_at_least_50pct", "model_copy_recall_at_least_90pct",
                                                "partial_at_most_half_full", "ren_cuts_a_third",
                                                "ren_nemo_or_jain_cuts_a_third_keeping_90pct_alignment",
                                                "template_global_calls_fewer",
                                                "unique_masked_false_positives_at_most_3pct"]
    shown = {c.key: c for c in card_checks(_measured(worst=0.89))}
    worst = shown["model_copy_recall_worst_kind_at_least_90pct (model:img2img@0.5)"]
    assert not worst.met and "img2img@0.5 89.0% of 2" in worst.figure and "90%" in worst.bound


def test_photometric_copies_are_what_they_name():
    """``modelcopies.photometric``: a tint is a gain per channel in 0.7-1.3, darkening one gain in 0.5-0.7, the
    mirror image flipped left to right; the same seed gives the same images."""
    import numpy as np
    from PIL import Image

    from memlab.modelcopies import photometric

    a = np.random.default_rng(0).integers(60, 180, (8, 8, 3)).astype(np.uint8)
    im = Image.fromarray(a)
    out = photometric([im, im], seed=3)
    t, d, m = (np.asarray(out[k][0], np.float64) for k in ("tint", "dark", "mirror"))
    gains = (t / a).reshape(-1, 3)
    assert np.all(gains.std(axis=0) < 0.02) and np.all((gains.mean(axis=0) > 0.69) & (gains.mean(axis=0) < 1.31))
    ratio = d / a
    assert ratio.std() < 0.02 and 0.49 < ratio.mean() < 0.71
    assert np.array_equal(m, a[:, ::-1])
    again = photometric([im], seed=3)
    assert np.array_equal(np.asarray(again["tint"][0]), np.asarray(out["tint"][0]))


def test_the_built_in_world_card_splits_replication_and_prints_it():
    import json
    from pathlib import Path

    from memlab.cardreport import format_report

    m = json.loads((Path(__file__).resolve().parents[1] / "assets" / "world" / "card.json").read_text())["measured"]
    for g, r in m["groups"].items():
        assert r["replicated_own"] + r["replicated_other"] == pytest.approx(r["replication_rate"]), g
        assert sum(r["replicated_other_by_group"].values()) == round(r["replicated_other"] * r["probes"]
                                                                      * m["seeds_per_probe"]), g
    report = format_report(m)
    assert "= own" in report and "+ other" in report and "seeds by that item's group" in report
    # each group's rate carries a 95% interval that resamples its probes (the card's per-probe rates), each
    # model-copy kind's recall a Wilson interval over its items; both recomputed here from the card
    from statistics import NormalDist

    import numpy as np

    from memlab import metrics

    per = {}
    for row in m["per_probe"]:
        per.setdefault(row["group"], []).append(row["replication_rate"])
    lines = {g: next(ln for ln in report.splitlines() if ln.startswith(g.ljust(16))) for g in per}  # the table's rows
    for g, rates in per.items():
        iv = metrics.bootstrap_mean(rates, unit="probes")
        assert np.mean(rates) == pytest.approx(m["groups"][g]["replication_rate"])  # the probes make the rate
        assert lines[g].endswith(f"  {iv['low']:.1%}-{iv['high']:.1%}") and iv["low"] <= np.mean(rates) <= iv["high"]
    z = NormalDist().inv_cdf(0.975)
    k, n = round(m["model_copies"]["model:img2img@0.5"]["recall"] * 96), 96
    p_ = k / n
    half = z / (1 + z * z / n) * np.sqrt(p_ * (1 - p_) / n + z * z / (4 * n * n))
    centre = (p_ + z * z / (2 * n)) / (1 + z * z / n)
    assert f"img2img@0.5 {p_:.1%} ({centre - half:.1%}-{centre + half:.1%}, n=96)" in report
    pooled = m["model_copies"]["model:all"]["recall"]  # the pooled rows repeat items across kinds: no interval
    assert f" all {pooled:.1%}, " in report
    # each detector's AUC by outcome, recomputed from the probes, with its interval over them
    base = [r for r in m["per_probe"] if r["strategy"] == "none"]
    for name, f in m["detectors"]["figures"].items():
        pos = [r["detections"][name] for r in base if r["replication_rate"] >= 0.5]
        neg = [r["detections"][name] for r in base if r["replication_rate"] == 0]
        iv = metrics.auc_interval(pos, neg)
        assert iv["auc"] == pytest.approx(f["auc_by_outcome"]) and [len(pos), len(neg)] == f["outcome_probes"]
        said = f"AUC by outcome {f['auc_by_outcome']:.3f} (95% interval {iv['low']:.2f}-{iv['high']:.2f}"
        if name == "wen":
            assert said + ")" in report
            continue
        counted = [r for r in base if r["replication_rate"] == 0 or r["replication_rate"] >= 0.5]
        d = metrics.auc_difference([r["detections"][name] for r in counted], [r["detections"]["wen"] for r in counted],
                                   [r["replication_rate"] >= 0.5 for r in counted])
        assert d["difference"] == pytest.approx(f["auc_by_outcome"] - m["detectors"]["figures"]["wen"]["auc_by_outcome"])
        assert (said + f"; minus Wen's {d['difference']:+.3f}, paired 95% interval {d['low']:+.2f} to "
                f"{d['high']:+.2f})") in report


def test_model_copy_truth_names_its_model_and_splits_what_the_descriptor_never_saw(tiny_pipeline_dir, tmp_path):
    """``buildworld.model_copy_truth`` (the card's model copies): each kind under the given prefix (``views``
    for the model memlab-copy took its views from); ``all-not-photo`` holds exactly the items cut from no
    scikit-image photo; the strength-0.3 copies tinted, darkened and mirrored beside them, not in ``all``."""
    import numpy as np
    from PIL import Image, ImageOps

    from memlab.buildworld import model_copy_truth

    rows = pd.DataFrame({"item": [0, 1, 2, 3], "caption": ["a red square", "a blue disc", "a cat", "coffee"],
                         "source": ["procedural", "procedural", "scikit-image data.chelsea() (public domain)",
                                    "scikit-image data.coffee() (public domain)"]})
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(4)]
    truth, n = model_copy_truth(rows, lambda i: ims[i], tiny_pipeline_dir, 4, seed=0, prefix="views",
                                cache=tmp_path / "copies")
    assert n == 4 and all(k.startswith("views:") for k in truth)
    kinds = {k.split(":", 1)[1] for k in truth}
    assert {"img2img@0.2", "img2img@0.5", "vae", "all", "all-not-photo", "tint@0.3", "dark@0.3", "mirror@0.3"} <= kinds
    assert sorted(set(truth["views:all-not-photo"][0])) == [0, 1] and len(truth["views:all-not-photo"][1]) == 2 * 5
    assert len(truth["views:all"][0]) == 4 * 5  # four strengths and the VAE round trip, no edited copies
    rows03, ims03 = truth["views:img2img@0.3"]
    assert list(truth["views:mirror@0.3"][0]) == list(rows03)
    assert np.array_equal(np.asarray(truth["views:mirror@0.3"][1][0]), np.asarray(ImageOps.mirror(ims03[0])))
    # a repeated build reads the copies back from its cache, image for image, without the model
    again, _ = model_copy_truth(rows, lambda i: ims[i], tiny_pipeline_dir, 4, seed=0, prefix="views",
                                cache=tmp_path / "copies")
    assert list(again) == list(truth)
    for k in truth:
        assert list(again[k][0]) == list(truth[k][0])
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again[k][1], truth[k][1]))


def test_the_alignment_classifiers_held_out_accuracy_reads_as_a_sentence():
    """The card's alignment line states each held-out split's accuracies (it once printed raw JSON); anything
    of another shape still prints, as JSON."""
    from memlab.cardreport import _held_out_text

    split = {"n": 10, "shapes": {"exact_set": 0.1, "per_label": 0.7974, "mean_auc": 0.7407},
             "colours": {"exact_set": 0.3, "per_label": 0.9307, "mean_auc": 0.9346}, "bg_colour": 0.744, "bg_kind": 0.985}
    text = _held_out_text({"renders": split, "renders_through_vae": {**split, "n": 12}})
    assert text == ("renders (n=10): shapes 79.7% (AUC 0.741), object colours 93.1% (AUC 0.935), background colour "
                    "74.4%, background kind 98.5%; renders through vae (n=12): shapes 79.7% (AUC 0.741), object "
                    "colours 93.1% (AUC 0.935), background colour 74.4%, background kind 98.5%")
    assert _held_out_text({"auc": 0.9}) == '{"auc": 0.9}' and _held_out_text(None) == "null"


def test_the_decoded_images_are_the_vaes_round_trip_and_come_back_from_their_cache(tiny_pipeline_dir, tmp_path):
    """``buildworld.decoded_images`` (what the built-in world's index embeds): each image as the pipeline's VAE
    returns it (``modelcopies.vae_round_trip``, the ``vae`` model copies too), at the pipeline's resolution, named
    by the VAE's checksum; a second call reads them back from the cache, and other images are decoded anew."""
    import numpy as np
    from PIL import Image

    from memlab.buildworld import decoded_images
    from memlab.generate import Generator
    from memlab.modelcopies import model_copies, vae_round_trip

    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(3)]
    pipe = Generator.from_pretrained(tiny_pipeline_dir, device="cpu").pipe
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out, words = decoded_images(tiny_pipeline_dir, ims, tmp_path / "dec")
    assert len(out) == 3 and all(im.size == (side, side) for im in out) and "vae sha256" in words
    direct = vae_round_trip(pipe, ims)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, direct))
    assert not np.array_equal(np.asarray(out[0]), np.asarray(ims[0].resize((side, side))))  # the decoder changed it
    vae = [im for _, k, im in model_copies(pipe, ims, ["a"] * 3, strengths=(), steps=2) if k == "vae"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(vae, direct))
    (tmp_path / "dec" / "00000.png").unlink()
    Image.new("RGB", (side, side), "red").save(tmp_path / "dec" / "00000.png")  # what the cache holds is read back
    again, _ = decoded_images(tiny_pipeline_dir, ims, tmp_path / "dec")
    assert np.asarray(again[0]).tolist() == np.asarray(Image.new("RGB", (side, side), "red")).tolist()
    other, _ = decoded_images(tiny_pipeline_dir, ims[::-1], tmp_path / "dec")  # other images: decoded anew
    assert np.array_equal(np.asarray(other[0]), np.asarray(direct[2]))


def test_build_worlds_decoded_index_embeds_the_vaes_renderings_and_says_so(tiny_pipeline_dir, tmp_path):
    """``build-world --decoded-index`` (issue 30, tried): the index's vectors are those of each training image as
    the world's VAE returns it, its threshold at ``DECODED_FPR`` of that background, the entry naming the VAE; the
    default index embeds the images as they are, at 1%."""
    import shutil

    import numpy as np

    from memlab.buildworld import DECODED_FPR, _check_resumed_index, _index, _Stages, build_world, decoded_images
    from memlab.errors import MemlabError
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex
    from memlab.worldgen import WorldSpec
    from tests.helpers import synthetic_images

    ims = synthetic_images(12, size=32)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for i, im in enumerate(ims):
        im.save(data / "images" / f"{i:04d}.png")
    files = [f"images/{i:04d}.png" for i in range(12)] + ["images/0003.png"]  # a planted duplicate of item 3
    rows = pd.DataFrame({"id": range(13), "item": list(range(12)) + [3], "caption": ["a red square"] * 13,
                         "file": files, "source": ["procedural"] * 13, "template": [-1] * 13})
    for decoded in (True, False):
        out = tmp_path / ("dec" if decoded else "plain")
        shutil.copytree(tiny_pipeline_dir, out / "model")
        _index(out, rows.copy(), data, WorldSpec(), ["pixel"], 0, _Stages(out / "build", lambda m: None), None,
               decoded=decoded)
        idx = TrainingIndex.load(out / "index")
        info = idx.descriptor_info("pixel")
        assert info["threshold"]["fpr_target"] == (DECODED_FPR if decoded else 0.01)
        if decoded:
            rendered, words = decoded_images(out / "model", ims)
            assert info["indexed"] == words and "vae sha256" in words
            assert np.allclose(idx.vectors("pixel"), create_descriptor("pixel").embed(rendered + [rendered[3]]),
                               atol=1e-6)
            assert len(list((out / "build" / "decoded").glob("*.png"))) == 12  # each file decoded once
        else:
            assert "indexed" not in info
            assert np.allclose(idx.vectors("pixel"), create_descriptor("pixel").embed(ims + [ims[3]]), atol=1e-6)
        # a resumed build keeps its index only when asked for the same kind
        _check_resumed_index(out / "index", "pixel", decoded)
        with pytest.raises(MemlabError, match="--decoded-index"):
            _check_resumed_index(out / "index", "pixel", not decoded)
    with pytest.raises(MemlabError, match="--reuse-model"):  # a refresh keeps the index: it cannot decode it
        build_world(tmp_path / "dec", refresh=True, decoded_index=True)


def test_a_mitigations_cut_is_counted_seed_by_seed_and_over_probes():
    """``paired_by_probe``: on hand-made runs of three probes, the seeds a mitigation stopped and made copying,
    summed over probes, and the change's interval over probes; the card's report prints both where a card has them."""
    import json
    from pathlib import Path

    import numpy as np

    from memlab import metrics
    from memlab.cardreport import format_report
    from memlab.evaluate import paired_by_probe

    none = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    rna = [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]
    rows = [{"prompt": f"p{i}", "strategy": s, "replicated": [bool(x) for x in r], "replication_rate": float(np.mean(r))}
            for s, runs in (("none", none), ("rna", rna)) for i, r in enumerate(runs)]
    rows.append({"prompt": "p9", "strategy": "rna", "replicated": [True] * 4, "replication_rate": 1.0})  # no none
    got = paired_by_probe(pd.DataFrame(rows), "rna")
    # p0: 3 stopped; p1: seed 1 started, seed 2 stopped; p2: seed 3 started
    assert got["paired"] == {"fewer": 4, "more": 2, "probes": 3}
    changes = [np.mean(b) - np.mean(a) for a, b in zip(none, rna)]
    assert got["change_interval"]["mean"] == pytest.approx(np.mean(changes))
    assert got["change_interval"] == metrics.bootstrap_mean(changes, unit="probes")
    m = json.loads((Path(__file__).resolve().parents[1] / "assets" / "world" / "card.json").read_text())["measured"]
    m["mitigations"]["rna"].update(got)
    line = next(ln for ln in format_report(m).splitlines() if ln.strip().startswith("rna "))
    ci = got["change_interval"]
    assert f"95% interval over probes {100 * ci['low']:+.1f} to {100 * ci['high']:+.1f} pts; seeds 4 fewer, 2 more" in line


def test_a_card_with_too_many_probe_rows_is_reported_without_resampling_them():
    """The About tab is built at the app's start: a card from elsewhere holding more per-probe rows than the report
    resamples (``INTERVAL_MAX_PROBES``) is shown whole, its intervals over probes left out and said so."""
    import json
    from pathlib import Path

    from memlab.cardreport import INTERVAL_MAX_PROBES, format_report

    m = json.loads((Path(__file__).resolve().parents[1] / "assets" / "world" / "card.json").read_text())["measured"]
    shipped = format_report(m)
    m["per_probe"] = m["per_probe"] * (INTERVAL_MAX_PROBES // len(m["per_probe"]) + 1)
    big = format_report(m)
    assert f"no intervals over probes: the card holds {len(m['per_probe'])} per-probe rows" in big
    assert "95% interval 0." in shipped and "95% interval 0." not in big  # the detectors' AUC intervals
    assert "% (79.4%-92.7%, n=96)" in big  # a recall's Wilson interval needs no probe rows


@pytest.mark.slow
def test_a_small_worlds_card_is_what_its_runs_give(tmp_path):
    """``build-world`` with its evaluation (``evaluate.evaluate_world``, otherwise run only by a full rebuild) on a
    small world: the card's group figures are its per-probe rows' (recomputed here), its checks are its figures'
    (each bound from issue 30), the report prints it, and a probe's row is what ``memlab run`` gives a user
    on the same seeds (the same model settings, descriptor and detectors)."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from memlab.cardreport import format_report
    from memlab.index import TrainingIndex

    env = {**os.environ, "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "memlab", "build-world", "--small", "--steps", "6", "--vae-steps", "4",
           "--batch-size", "4", "--ground-truth-items", "4", "--eval-seeds", "1", "--sample-steps", "8",
           "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "card.json").read_text())["measured"]
    said = r.stderr.splitlines()  # the build ends on its checks, each met or not as the card stores it
    assert f"({sum(m['checks'].values())} of {len(m['checks'])} met):" in said[-len(m["checks"]) - 1]
    assert [ln.split(": ", 1)[0].split(None, 1) for ln in said[-len(m["checks"]):]] == [
        ["yes" if v else "NO", k] for k, v in m["checks"].items()]
    rows = pd.DataFrame(m["per_probe"])
    assert set(rows["strategy"]) == {"none"} and m["seeds_per_probe"] == 1
    for g, fig in m["groups"].items():  # each group's figures from its probes' rows
        mine = rows[rows["group"] == g]
        assert fig["probes"] == len(mine), g
        assert fig["replication_rate"] == pytest.approx(mine["replication_rate"].mean()), g
        assert fig["detection_mean"] == pytest.approx(mine["detection"].mean()), g
        for name, value in fig["detections_mean"].items():
            assert value == pytest.approx(np.mean([d[name] for d in mine["detections"]])), (g, name)
    high = m["mitigations_on"]
    assert high == max((g for g in m["groups"] if g.startswith("full_ddf")), key=lambda g: int(g[8:]))
    assert set(m["mitigations"]) >= {"rna", "rt", "cwr", "gni", "wen", "ren", "nemo", "jain", "sail"}
    for name, mit in m["mitigations"].items():
        assert mit["change_vs_none"] == pytest.approx(mit["replication_rate"] - m["groups"][high]["replication_rate"])
    c, groups = m["checks"], m["groups"]
    assert c["unique_at_most_3pct"] == (groups["unique"]["replication_rate"] <= 0.03)
    assert c["full_high_at_least_50pct"] == (groups[high]["replication_rate"] >= 0.5)
    assert c["partial_at_most_half_full"] == (groups[f"partial_{high[5:]}"]["replication_rate"]
                                              <= 0.5 * groups[high]["replication_rate"])
    assert c["lesson_first_probe_at_least_7_of_8"] == (m["lesson_first_probe"]["replicated"] >= 7)
    assert m["lesson_first_probe"]["prompt"] == rows[rows["group"] == high]["prompt"].iloc[0]
    truth = m["model_copies"]
    assert {k for k in truth if k.startswith("model:")} >= {"model:img2img@0.5", "model:vae", "model:tint@0.3"}
    assert all(truth[k]["n"] == 4 for k in truth if k.startswith("model:img2img"))
    kinds = {k: v["recall"] for k, v in truth.items() if k.startswith(("model:img2img", "model:vae"))}
    worst = min(kinds, key=kinds.get)
    assert c[f"model_copy_recall_worst_kind_at_least_90pct ({worst})"] == (kinds[worst] >= 0.9)
    report = format_report(m)
    assert all(f"\n{g} " in report for g in m["groups"]) and "checks, each on its own figure" in report
    assert all(f"  {'yes' if v else 'NO '}  {k}: " in report for k, v in c.items())  # recomputed as stored
    # a probe of the highest duplication and a unique one, run as a user runs them: the card's rows
    picked = pd.concat([rows[rows["group"] == high].head(1), rows[rows["group"] == "unique"].head(1)])
    run = [sys.executable, "-m", "memlab", "run", "--world", str(out), "--seeds", "0", "--out",
           str(tmp_path / "run.jsonl")] + [a for p in picked["prompt"] for a in ("--prompt", p)]
    r = subprocess.run(run, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(ln) for ln in (tmp_path / "run.jsonl").read_text().splitlines()]
    with TrainingIndex.load(out / "index") as idx:
        item_of = idx.items["item"].to_numpy()
    for p in picked.itertuples():
        seed = next(x for x in recs if x["type"] == "seed" and x["prompt"] == p.prompt)
        assert seed["settings"]["steps"] == m["settings"]["steps"] == 8
        assert seed["descriptor"]["name"] == m["descriptor"]["name"]
        assert seed["threshold"] == pytest.approx(m["descriptor"]["threshold"])
        assert float(seed["replicated"]) == p.replication_rate
        assert seed["detection"] == pytest.approx(p.detection, rel=1e-4)
        assert seed["alignment"] == pytest.approx(p.alignment, rel=1e-4)
        assert [int(item_of[seed["matches"][0]["row"]])] == list(p.top_items)
