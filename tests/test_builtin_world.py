"""The shipped built-in world: its files against its manifests, its size, and that it is the default."""
import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from tests.helpers import ROOT
from memlab.index import TrainingIndex
from memlab.world import ASSETS_WORLD, World, default_world_path

pytestmark = pytest.mark.skipif(not (ASSETS_WORLD / "world.json").is_file(), reason="built-in world not built")


def test_world_files_match_manifest_and_size():
    w = World.load(ASSETS_WORLD)
    idx = TrainingIndex.load(w.index_path)  # verifies every checksum and row count
    assert idx.default_descriptor == "memlab-copy" and "pixel" in idx.descriptor_names
    assert all(idx.threshold(n)["source"] == "calibrated" for n in idx.descriptor_names)
    assert (ASSETS_WORLD / "model" / "model_index.json").is_file()
    assert list((ASSETS_WORLD / "model").rglob("*.safetensors"))
    assert not list(ASSETS_WORLD.rglob("*.bin")) and not list(ASSETS_WORLD.rglob("*.pt"))
    size = sum(p.stat().st_size for p in ASSETS_WORLD.rglob("*") if p.is_file() and "build" not in p.parts)
    # the model (23 MB) and the index (about 24 MB: a memlab-copy row holds its two layout maps, 128 x 4 x 4
    # and 192 x 4 x 4, beside the global descriptor, 5,248 floats; an exact index stores its vectors once)
    assert size < 64 * 2**20
    probes = pd.read_csv(w.file("probes"))
    assert {"prompt", "group", "item"} <= set(probes.columns)
    assert {"unique", "keyword"} <= set(probes["group"]) and any(probes["group"].str.startswith("partial"))
    assert set(probes["item"]) <= set(idx.items["item"])
    # every image the index names is shipped
    assert all(idx.image_path(r).is_file() for r in range(0, len(idx.items), 37))
    card = json.loads(w.file("card").read_text())
    assert card["built_with"].startswith("python -m memlab build-world")
    assert (ASSETS_WORLD / "keywords" / "lighthouse.json").is_file()


def strict_loads(text: str):
    """JSON as RFC 8259 has it (jq, a browser's JSON.parse): a bare NaN or Infinity, which Python's json writes and
    reads, is refused."""
    def refuse(c):
        raise ValueError(f"{c} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_every_json_file_the_world_ships_and_what_the_cli_writes_is_strict_json(tmp_path, capsys):
    """The card held 25 bare NaNs (a probe's alignment: pandas' mean over no value), so ``jq`` and a browser could
    not read it; cards, run records, comparisons and ``match --json`` are written with NaN as null."""
    from PIL import Image

    from memlab.cli import main
    from memlab.records import strict_json

    for f in ASSETS_WORLD.rglob("*.json"):
        if "build" not in f.relative_to(ASSETS_WORLD).parts:
            strict_loads(f.read_text())
    got = strict_json({"a": float("nan"), "b": [np.float32("inf"), np.float64(0.5), (1, np.int64(2))],
                       "c": np.array([np.nan, 1.0]), "d": "NaN"})
    assert got == {"a": None, "b": [None, 0.5, [1, 2]], "c": [None, 1.0], "d": "NaN"}
    assert type(got["b"][1]) is float and type(got["b"][2][1]) is int
    im = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(im)
    assert main(["match", "--index", str(ASSETS_WORLD / "index"), "--images", str(im), "--k", "2", "--json"]) == 0
    strict_loads(capsys.readouterr().out)


def test_builtin_world_is_the_default(monkeypatch):
    monkeypatch.delenv("MEMLAB_WORLD", raising=False)
    assert default_world_path() == ASSETS_WORLD
    assert World.load().name == World.load(ASSETS_WORLD).name


def test_memlab_run_defaults_to_the_builtin_world(tmp_path, monkeypatch):
    from memlab.cli import main

    monkeypatch.delenv("MEMLAB_WORLD", raising=False)
    out = tmp_path / "r.jsonl"
    assert main(["run", "--prompt", "a lighthouse on the coast at sunset", "--seeds", "0-1", "--steps", "4",
                 "--out", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs[0]["model"]["model"].endswith("model") and recs[0]["descriptor"]["name"] == "memlab-copy"


def test_ships_no_shared_data():
    shared = ROOT.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("../shared/data absent")
    import hashlib

    ours = {hashlib.sha1(p.read_bytes()).hexdigest() for p in ASSETS_WORLD.rglob("*") if p.is_file()}
    theirs = {hashlib.sha1(p.read_bytes()).hexdigest() for p in shared.rglob("*") if p.is_file()}
    assert not ours & theirs


def test_verdict_is_calibrated_on_distinct_items_and_recalls_the_models_copies():
    """Issue 10 on the shipped world: one calibration row per distinct image, a distinct-image background
    whose 95th percentile sits below the threshold, recall on the model's own copies at least 90%."""
    idx = TrainingIndex.load(ASSETS_WORLD / "index")
    items = idx.items
    reps = items[items["representative"]]
    # one row per distinct image: near-duplicate groups, with the crops of one scikit-image photo as one
    photos = items[items["origin"] != ""]
    assert reps["group"].is_unique
    # a near-duplicate group holds one training item, or overlapping crops of one photo, never two scenes
    for _, grp in items.groupby("group"):
        assert grp["item"].nunique() == 1 or (grp["origin"].nunique() == 1 and grp["origin"].iloc[0] != "")
    assert len(reps) == items["item"].nunique() - photos["item"].nunique() + photos["origin"].nunique()
    for name in idx.descriptor_names:
        thr = idx.threshold(name)
        assert thr["n_groups"] == len(reps) and thr["n_background"] == len(reps)
    thr = idx.threshold("memlab-copy")
    bg = idx.background("memlab-copy", distinct=True)
    assert len(bg) == len(reps) and np.percentile(bg, 95) < thr["value"]
    gt = thr["ground_truth"]
    assert gt["model:vae"]["recall"] >= 0.95
    # memlab-copy (layout and low-pass) recalls the model's own copies far better than the global cosine or pixels
    for other in ("memlab-copy-global", "pixel"):
        assert gt["model:all"]["recall"] >= idx.threshold(other)["ground_truth"]["model:all"]["recall"] + 0.1
    # the world's model gave memlab-copy no training views (issue 30): the copies of the model that did are
    # scored beside its own, on the same items; issue 30's 90% bound per kind is a card check, reported as is
    assert idx.manifest["ground_truth"]["views_model"] and "views:all" in gt
    assert set(gt["views:all"]) == set(gt["model:all"]) and gt["views:all"]["n"] == gt["model:all"]["n"]
    card = json.loads((ASSETS_WORLD / "card.json").read_text())["measured"]
    assert card["descriptor"]["name"] == "memlab-copy"
    kinds = {k: v["recall"] for k, v in gt.items() if k.startswith(("model:img2img", "model:vae"))}
    worst = min(kinds, key=kinds.get)
    assert card["checks"][f"model_copy_recall_worst_kind_at_least_90pct ({worst})"] == (kinds[worst] >= 0.9)
    assert card["checks"]["unique_at_most_3pct"] == (card["groups"]["unique"]["replication_rate"] <= 0.03)
    assert card["checks"]["non_copies_flagged_at_most_2pct"] == (card["non_copies"]["flagged"] <= 0.02)


def test_the_shipped_cards_checks_are_its_figures_checks():
    """Every check the shipped card stores (written when it was measured) is what ``card_checks`` makes of the
    card's figures today, in the same order: the checks shown beside their figures are the ones measured."""
    from memlab.cardchecks import card_checks

    card = json.loads((ASSETS_WORLD / "card.json").read_text())["measured"]
    assert [(c.key, c.met) for c in card_checks(card)] == list(card["checks"].items())


def test_about_charts_the_recall_on_each_kind_of_copy_with_its_interval():
    """About this world's chart: one bar per kind of copy and per model that made it, at the index's recall for
    that kind, whiskers at its 95% Wilson interval over the n items (recomputed here by its formula), the pooled
    rows left out, 90% drawn, and the score's source in the title."""
    from memlab.app.charts import copy_recall_chart
    from memlab.service import Lab

    lab = Lab(World.load(ASSETS_WORLD))
    gt = lab.threshold()["ground_truth"]
    fig = copy_recall_chart(lab)
    assert [t.name for t in fig.data] == ["the world's model", "the model memlab-copy took training views from"]
    z = 1.959963984540054
    for maker, trace in zip(("model", "views"), fig.data):
        kinds = {k.split(":", 1)[1] for k in gt if k.startswith(maker + ":") and ":all" not in k}
        assert set(trace.x) == kinds and len(kinds) == 8
        for kind, y, up, down in zip(trace.x, trace.y, trace.error_y.array, trace.error_y.arrayminus):
            v = gt[f"{maker}:{kind}"]
            assert y == v["recall"]
            p, n = round(v["recall"] * v["n"]) / v["n"], v["n"]
            mid = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            assert y + up == pytest.approx(mid + half, abs=1e-6) and y - down == pytest.approx(mid - half, abs=1e-6)
    assert [s.y0 for s in fig.layout.shapes] == [0.9]
    title = fig.layout.title.text.replace("<sup>", "").replace("</sup>", "").replace("<br>", " ")
    assert lab.descriptor.name in title and f"threshold {lab.threshold()['value']:.3f}" in title


def test_app_histogram_draws_the_distinct_background():
    from memlab.service import Lab
    from memlab.app.charts import histogram

    lab = Lab(World.load(ASSETS_WORLD))
    fig = histogram(lab, [])
    bg_trace = fig.data[0]
    assert "distinct training images" in bg_trace.name
    assert len(bg_trace.x) == int(lab.index.items["representative"].sum())  # one per distinct image
    assert np.percentile(bg_trace.x, 95) < lab.threshold()["value"]
    # its title names the score's source in lines a phone's chart holds (plotly wraps nothing; the whole label,
    # with the score's definition, ran off both sides): descriptor, model, preset and threshold, each whole
    import re

    info = lab.index.descriptor_info(lab.descriptor.name)
    lines = [re.sub("<[^>]+>", "", ln) for ln in fig.layout.title.text.split("<br>")]
    assert all(len(ln) <= 64 for ln in lines) and len(lines) >= 3
    said = "".join(lines).replace(" ", "")  # a long preset is broken at its hyphens
    for part in (info["name"], info["model"], f"preset {info['preset']}", f"threshold {lab.threshold()['value']:.3f}"):
        assert part.replace(" ", "") in said, part
    axis = re.sub("<[^>]+>", "\n", fig.layout.xaxis.title.text).splitlines()
    assert all(len(ln) <= 64 for ln in axis) and " ".join(axis) == lab.score_axis()
    # the seeds' chart plots the same score, and says so (it read "similarity", a cosine's word)
    from memlab.app.charts import seed_scores_chart

    assert seed_scores_chart(lab, None).layout.yaxis.title.text == "verified normalized score"


@pytest.mark.slow
def test_wen_leaves_a_unique_probe_untouched_and_detection_is_the_same_under_mitigations():
    """Issue 11 on the shipped world: with the world's calibrated absolute target, wen (and sail) leaves a
    non-memorized (unique) probe bit for bit as none made it; the detection score of the same seeds is the
    same under none, gni and wen (first step, clean branches); on a memorized probe wen acts."""
    from memlab.generate import Settings

    w = World.load(ASSETS_WORLD)
    assert w.defaults.get("wen_target")
    gen = w.generator()
    probes = pd.read_csv(w.file("probes"))
    st = Settings(steps=int(w.defaults["steps"]), guidance=float(w.defaults["guidance"]))
    unique = probes[probes["group"] == "unique"]["prompt"].iloc[0]
    seeds = [0, 1, 2]
    base = gen.generate(unique, seeds, "none", st)
    for spec in ("gni", "wen"):
        out = gen.generate(unique, seeds, spec, st)
        assert [o.detection for o in out] == [b.detection for b in base], spec
    wen = out
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(wen, base))
    full = probes[probes["group"] == "full_ddf20"]["prompt"].iloc[0]
    fb, fw = gen.generate(full, [0], "none", st)[0], gen.generate(full, [0], "wen", st)[0]
    assert fb.detection > w.defaults["wen_target"] and fw.image.tobytes() != fb.image.tobytes()
    assert fw.detection == fb.detection
    # SAIL (Jeon et al.) the same way, with the world's calibrated target: the unique probe's seeds whose loss is
    # under it keep their noise (the image of none); the memorized probe's seed starts elsewhere, and both probes'
    # detections (Jeon's sharpness included) are read from the seed's own noise
    sail = gen.generate(unique, seeds, "sail", st)
    for a, b in zip(sail, base):
        assert a.extra["detections"]["jeon"] == b.extra["detections"]["jeon"]
        if a.extra["sail_initial_loss"] <= w.defaults["sail_target"]:
            assert a.image.tobytes() == b.image.tobytes() and a.extra["sail_steps"] == 0
    fs = gen.generate(full, [0], "sail", st)[0]
    assert fs.extra["sail_initial_loss"] > w.defaults["sail_target"] and fs.image.tobytes() != fb.image.tobytes()
    assert fs.extra["detections"]["jeon"] == fb.extra["detections"]["jeon"] > max(b.extra["detections"]["jeon"]
                                                                                  for b in base)


def test_token_attribution_ranks_distinctive_words_above_the_template():
    """Issue 11: for at least 7 of the 8 full-duplication ddf-20 probes, the words that make the caption
    distinctive have a higher mean attribution than the caption template's words."""
    from memlab.generate import Settings
    from memlab.worldgen import TEMPLATE_WORDS

    w = World.load(ASSETS_WORLD)
    gen = w.generator()
    st = Settings(steps=int(w.defaults["steps"]), guidance=float(w.defaults["guidance"]))
    probes = pd.read_csv(w.file("probes"))
    wins = 0
    full = probes[probes["group"] == "full_ddf20"]["prompt"].tolist()
    for p in full:
        toks = gen.token_attribution(p, seeds=range(4), settings=st)[1:-1]
        dist = [t["attribution"] for t in toks if t["token"].strip() not in TEMPLATE_WORDS]
        tmpl = [t["attribution"] for t in toks if t["token"].strip() in TEMPLATE_WORDS]
        wins += np.mean(dist) > np.mean(tmpl)
    assert len(full) == 8 and wins >= 7


def test_the_cards_figures_are_recomputed_from_fresh_records():
    """Issue 30 item 5: the card's per-probe figures come back when its probes are run again (a stale card, or
    a changed generator, matcher or verdict, fails here): a full-duplication probe and a unique one, the
    card's 10 seeds, no mitigation; then the group table recomputed from those records."""
    import pandas as pd

    from memlab.evaluate import _group_table, _probe_runs
    from memlab.generate import Settings
    from memlab.match import descriptor_for_index
    from memlab.world import World

    card = json.loads((ASSETS_WORLD / "card.json").read_text())["measured"]
    world = World.load(ASSETS_WORLD)
    gen, index = world.generator(), world.index()
    probes = pd.read_csv(world.file("probes"))
    pick = pd.concat([probes[probes["group"] == "full_ddf20"].head(1), probes[probes["group"] == "unique"].head(1)])
    st = card["settings"]
    runs = _probe_runs(gen, index, descriptor_for_index(index), pick, list(range(card["seeds_per_probe"])), ["none"],
                       Settings(steps=st["steps"], guidance=st["guidance"]))
    stored = {p["prompt"]: p for p in card["per_probe"]}
    for _, r in runs.iterrows():
        s = stored[r["prompt"]]
        assert r["replication_rate"] == pytest.approx(s["replication_rate"])
        assert r["original_recall"] == pytest.approx(s["original_recall"])
        assert r["top_items"] == s["top_items"]
        assert r["detection"] == pytest.approx(s["detection"], rel=1e-4)
        assert r["detections"]["carlini"] == pytest.approx(s["detections"]["carlini"])
    # Carlini et al.: the memorized probe's generations hold a larger clique of near-identical images
    assert runs.iloc[0]["detections"]["carlini"] > runs.iloc[1]["detections"]["carlini"]
    table = _group_table(runs, card["descriptor"]["threshold"])
    full = table["full_ddf20"]["none"]
    assert full["replication_rate"] == pytest.approx(np.mean(runs.iloc[0]["replicated"]))
    assert full["replicated_own"] + full["replicated_other"] == pytest.approx(full["replication_rate"])


def test_an_uploaded_template_copy_is_called_by_where_it_agrees():
    """Issue 32 for uploads: the world's index carries the agreement threshold calibrated on generations of
    items seen once (build-world's stage 5c); a new picture of a planted template (its frame, badge and label
    band around a scene the world never drew) is a ``template copy`` whose agreeing windows include the label
    band (the bottom rows) and not the scene inside, while a new scene without a template is not."""
    import random

    from PIL import Image

    from memlab import worldgen
    from memlab.cli.match import print_table
    from memlab.match import descriptor_for_index, match_images

    idx = World.load(ASSETS_WORLD).index()
    cal = idx.manifest["agreement"]
    assert cal["on"] == "generations" and cal["n"] > 100 and 0 < cal["threshold"] < 1
    trng = random.Random("templates-0")  # the world's first template, drawn as worldgen draws it
    template = worldgen._template(trng)
    new = worldgen._template_image(template, random.Random(1000))[0].resize((64, 64), Image.LANCZOS)
    scene = worldgen._scene(random.Random(1000))[0].resize((64, 64), Image.LANCZOS)
    match = match_images(idx, descriptor_for_index(idx), [new, scene], k=1)
    got, other = match["queries"]
    assert int(idx.items.iloc[got["matches"][0]["row"]]["template"]) == 0
    assert got["verdict"] == "template copy" and got["agreement"]["share"] > cal["threshold"]
    mask = np.asarray(got["agreement"]["mask"])  # 8 x 8 windows: the label band agrees, the new scene does not
    assert mask.shape == (8, 8) and mask[6:].all() and not mask[3:5, 3:5].any()
    assert other["verdict"] != "template copy"
    out = io.StringIO()  # `memlab match`'s table names the windows the mask was cut in (64 px / 8 = 8-px windows)
    with contextlib.redirect_stdout(out):
        print_table({**match, "summary": {**match["summary"], "timing": {**match["summary"]["timing"], "load_s": 0.0}}})
    assert f" of its windows ({64 // mask.shape[0]}-px windows at 64 px " in out.getvalue()


def test_the_docs_show_the_shipped_cards_report():
    """The card's block in docs/builtin-world.md is ``format_report`` of the shipped card, line for line: a
    refreshed world whose docs still show the previous card's figures fails here."""
    import re

    from memlab.cardreport import format_report

    card = json.loads((ASSETS_WORLD / "card.json").read_text())["measured"]
    doc = (ROOT / "docs" / "builtin-world.md").read_text()
    blocks = re.findall(r"```\n(descriptor .*?)```", doc, re.S)
    assert len(blocks) == 1, "docs/builtin-world.md shows the card's report once"
    assert blocks[0].strip().splitlines() == format_report(card).strip().splitlines()


def test_about_names_which_model_made_each_copy_recall():
    """About this world listed the recall on the views model's copies after the world's own with the prefix cut
    off, so "all 85.4%" and "all 80.4%" stood side by side, one unnamed: each model's copies on a line of its
    own, each figure its manifest's."""
    from memlab.app.cardview import world_card_markdown
    from memlab.service import Lab

    lab = Lab(World.load(ASSETS_WORLD))
    text = world_card_markdown(lab)
    gt = lab.descriptor_info()["threshold"]["ground_truth"]
    own = next(ln for ln in text.split("\n\n") if ln.startswith("**Recall on copies made by the world's own model**"))
    views = next(ln for ln in text.split("\n\n") if "took its training views from" in ln)
    for k, v in gt.items():
        assert f"`{k.split(':', 1)[1]}` {v['recall']:.1%} (n={v['n']})" in (own if k.startswith("model:") else views), k
    assert own.count(" `all` ") == views.count(" `all` ") == 1
    for line in (own, views):  # each kind in code: markdown links a bare img2img@0.2 as an e-mail address
        assert "@" not in re.sub(r"`[^`]*`", "", line), line
    assert "| | this world |" in text
    thr = lab.descriptor_info()["threshold"]  # the threshold's row says how it was set once
    assert f"| threshold | {thr['value']:.3f}, calibrated at build: 1.0% false positives" in text


def test_the_keyword_tab_opens_on_the_planted_keyword():
    """Keyword clusters opened on "Velmora" (sorted before the lowercase names), where the hidden object's share
    is 0: a class saw nothing come along unnamed. The world's planted keyword comes first, and its view shows the
    hidden object more often than in the training set at large; the rest follow alphabetically."""
    from memlab.service import Lab

    w = World.load(ASSETS_WORLD)
    lab = Lab(w)
    names = lab.keyword_names
    planted = list(w.manifest["keywords"])
    assert names[: len(planted)] == planted and sorted(names) == sorted(lab.views)
    assert names[len(planted):] == sorted(names[len(planted):], key=str.lower)
    hidden = w.manifest["keywords"][names[0]]["hidden_object"]
    share = lab.views[names[0]]["objects"][hidden]
    assert share["keyword_share"] > 2 * share["overall_share"]
    # its lighthouses are all distinct: the size chart says there are no clusters instead of an empty frame
    from memlab.app.charts import keyword_outputs

    v = lab.views[names[0]]
    fig = keyword_outputs(lab, v)[1]
    real = [c for c in v["clusters"] if not c["miscellaneous"]]
    said = " ".join(a.text for a in fig.layout.annotations).replace("<br>", " ")
    assert (len(real) == 0) == ("no clusters" in said)
    if not real:
        assert f"none of the {v['n_after']} images" in said and fig.layout.xaxis.visible is False
        # in lines a phone's plot area (about 300 px at 14 px, some 7 px a character) holds: it ran off both sides
        assert all(len(ln) <= 40 for a in fig.layout.annotations for ln in a.text.split("<br>"))


def test_a_run_counts_the_hidden_object_in_its_keyword_prompts_generations(tmp_path):
    """Memory Triggers' object-level replication (their astronaut prompts and the US flag): each generation of a
    prompt holding the planted keyword is judged by the world's classifier, recomputed here from the image
    written; the summary's share is those seeds' count with Wilson's interval; a prompt without the keyword, or
    a mitigation's generations (where a classifier trained on lighthouses would say nothing), are not judged;
    the page's summary says it."""
    from PIL import Image

    from memlab.app.views import headline
    from memlab.generate import Settings
    from memlab.match import descriptor_for_index
    from memlab.runner import run_prompt
    from memlab.service import Lab

    w = World.load(ASSETS_WORLD)
    judge, index = w.object_classifier(), w.index()
    assert judge.keywords == ["lighthouse"] and judge.info()["keywords"] == ["lighthouse"]
    probes = pd.read_csv(w.file("probes"))
    lighthouse = probes[probes["group"] == "keyword"]["prompt"].iloc[0]
    shapes = probes[probes["group"] == "unique"]["prompt"].iloc[0]
    st = Settings(steps=w.defaults["steps"], guidance=w.defaults["guidance"])
    recs = run_prompt(w.generator(), index, descriptor_for_index(index), lighthouse, [0, 1], ["none", "rna:k=4"], st,
                      out_dir=tmp_path, judge=judge)
    seeds = [r for r in recs if r["type"] == "seed" and r["mitigation"]["name"] == "none"]
    with_images = [Image.open(tmp_path / r["image"]).convert("RGB") for r in seeds]
    p = judge.probabilities(with_images)
    assert [r["hidden_object"]["probability"] for r in seeds] == pytest.approx(p.tolist(), abs=1e-4)
    assert [r["hidden_object"]["features"] for r in seeds] == (p > 0.5).tolist()
    share = next(r for r in recs if r["type"] == "summary")["hidden_object_share"]
    assert (share["k"], share["n"], share["object"]) == (int((p > 0.5).sum()), 2, "flag")
    from memlab import metrics

    iv = metrics.rate_interval(p > 0.5)
    assert (share["low"], share["high"]) == pytest.approx((iv["low"], iv["high"]))
    # a mitigation's generations are not judged: the classifier knows the world's lighthouses, and RNA's seldom are
    mit = recs
    assert [r["hidden_object"] is None for r in mit if r["type"] == "seed"] == [False, False, True, True]
    assert ["hidden_object_share" in r for r in mit if r["type"] == "summary"] == [True, False]
    other = run_prompt(w.generator(), index, descriptor_for_index(index), shapes, [0], ["none"], st, judge=judge)
    assert other[0]["hidden_object"] is None and "hidden_object_share" not in other[-1]
    lab = Lab(w)  # the page's stream: its summary judged as run's is, and said in words
    state = None
    for state in lab.stream_generation(lighthouse, [0, 1], "none", lab.settings()):
        pass
    line = next(x for x in headline(lab, state).splitlines() if "**hidden object**" in x)
    assert f"the flag in {share['k']} of 2 generations" in line and "held-out accuracy 100.0%" in line


def test_the_training_set_tells_full_duplication_from_partial_by_its_captions():
    """Somepalli et al. 2023: an image repeated with its caption (full duplication) is memorized, the same image
    under varied captions (partial) far less. The near-duplicate groups list the distinct captions on each group's
    copies: the planted full-duplication groups carry one, the partial ones as many as their copies (the world's
    build wrote one caption a copy)."""
    from memlab.service import Lab

    lab = Lab(World.load(ASSETS_WORLD))
    items = lab.index.items
    groups = lab.duplicate_groups(limit=100)
    planted = items.groupby("group")["planted"].first()
    kinds = {k: groups[groups["group"].map(planted) == k] for k in ("full_ddf20", "full_ddf5", "partial_ddf20",
                                                                    "partial_ddf5")}
    assert all(len(v) == 8 for v in kinds.values())  # the world's 8 groups of each kind, every one listed
    for k, v in kinds.items():
        assert (v["captions"] == (1 if k.startswith("full") else v["size"])).all(), (k, v)
    from memlab.app.lesson import _captions_sentence  # the lesson's second step says which its image is

    full, partial = kinds["full_ddf20"].iloc[0], kinds["partial_ddf20"].iloc[0]
    assert "one caption: *full duplication*" in _captions_sentence(full["captions"], full["size"])
    assert "20 different captions: *partial duplication*" in _captions_sentence(partial["captions"], partial["size"])
    assert _captions_sentence(1, 1) == ""  # an image seen once is neither
