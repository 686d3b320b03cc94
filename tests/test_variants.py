"""Prompt variants of a keyword cluster (Memory Triggers, Case Study 1; memlab.variants): the captions, the
figures counted from seed records, the study on the built-in world, its command and its endpoints."""
import json
import re

import numpy as np
import pytest

from memlab import metrics
from memlab.errors import MemlabError
from memlab.variants import (VARIANTS, check_variants, cluster_caption, content_words, default_variants, subject,
                             variant_figures)
from memlab.world import ASSETS_WORLD

BUILT = (ASSETS_WORLD / "world.json").is_file()


def _words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.parametrize("keyword, caption", [
    ("van gogh", "The Starry Night by Vincent van Gogh, 1889, oil on canvas"),
    ("Velmora", "a teal circle, a blue cross and a red star on a brown gradient background, by Velmora"),
    ("coffee", "a photo of a cup of coffee, close-up"),
])
def test_the_variants_are_the_papers_five_kinds_around_the_keyword(keyword, caption):
    """The paper's kinds: only the keywords; short and long relevant captions with them; an irrelevant one with
    them; a long one without the main keyword. Plus the cluster's own caption, as is."""
    v = default_variants(keyword, caption)
    assert list(v) == list(VARIANTS) and v["caption"] == caption
    kw = _words(keyword)
    for kind in ("keywords", "short", "long", "irrelevant"):
        assert kw <= _words(v[kind]), kind
    assert not kw & _words(v["without"])  # the main keyword's words, whole and in any case, are gone
    # keywords only: the keyword and words of the caption, nothing else
    assert _words(v["keywords"]) <= kw | _words(caption)
    # the irrelevant caption's scene is none of the caption's: beside the keywords its words are new
    assert _words(v["irrelevant"]) - set(content_words(caption)) - kw >= {"dog", "sofa", "room"}
    assert not {"dog", "sofa"} & _words(caption)
    # long is longer than short, and "without" is "long" less the keyword
    assert len(v["long"]) > len(v["short"])
    assert _words(v["without"]) <= _words(v["long"])


def test_a_keyword_of_several_parts_gives_its_words_to_the_variants():
    v = default_variants("almond + blossoming", "Almond Blossoming by Vincent van Gogh, 1890")
    assert v["keywords"].startswith("almond blossoming ") and "+" not in "".join(v.values())
    assert not {"almond", "blossoming"} & _words(v["without"])


def test_subject_takes_the_keyword_and_what_joined_it():
    assert subject("a teal circle on a grey background, by Velmora", "velmora") == "a teal circle on a grey background"
    assert subject("Velmora: a red star", "Velmora") == "a red star"


def _rec(seed, group, replicated):
    return {"seed": seed, "replicated": replicated, "matches": [{"group": group, "row": group * 10}]}


def test_figures_are_counted_from_the_seed_records():
    """in cluster: the top-1 match's near-duplicate group is one of the cluster's; copies: those also replicated;
    replicated: from any image. A replicated seed outside the cluster is no copy of it; a seed in the cluster that
    is not replicated is in it but no copy."""
    recs = [_rec(0, 5, True), _rec(1, 5, False), _rec(2, 7, True), _rec(3, 8, False), _rec(4, 7, True)]
    f = variant_figures(recs, {5, 8}, keyword={5, 7, 8})
    assert (f["in_cluster"]["k"], f["copies"]["k"], f["replicated"]["k"]) == (3, 1, 3)
    assert f["in_keyword"]["k"] == 5  # group 7: another of the keyword's images
    assert "in_keyword" not in variant_figures(recs, {5, 8})
    assert all(f[k]["n"] == 5 for k in ("in_cluster", "copies", "replicated")) and f["seeds"] == [0, 1, 2, 3, 4]
    # each with Wilson's interval, recomputed from its closed form
    z = 1.959963984540054
    for key, k in (("in_cluster", 3), ("copies", 1)):
        p, n = k / 5, 5
        mid, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert (f[key]["low"], f[key]["high"]) == pytest.approx((mid - half, mid + half), abs=1e-9)
    assert variant_figures([], {5})["in_cluster"]["n"] == 0


def test_bad_variants_are_refused():
    with pytest.raises(MemlabError, match="unknown prompt variant 'sideways'"):
        check_variants({"sideways": "x"})
    with pytest.raises(MemlabError, match="no prompt variant to run"):
        check_variants({"short": "  ", "long": ""})
    assert check_variants({"short": " a b ", "long": ""}) == {"short": "a b"}


def test_the_clusters_caption_is_its_most_frequent_and_rank_0_is_refused():
    view = {"keyword": "star", "clusters": [
        {"rank": 1, "size": 3, "miscellaneous": False, "rows": [0, 1, 2]},
        {"rank": 2, "size": 2, "miscellaneous": True, "rows": [3, 4]}]}
    caps = ["a star", "a red star", "a red star", "x", "y"]
    assert cluster_caption(view, 1, caps.__getitem__) == "a red star"
    with pytest.raises(MemlabError, match="miscellaneous images"):
        cluster_caption(view, 0, caps.__getitem__)
    with pytest.raises(MemlabError, match="no cluster of rank 2"):
        cluster_caption(view, 2, caps.__getitem__)


@pytest.mark.skipif(not BUILT, reason="built-in world not built")
def test_the_study_on_the_built_in_world_counts_what_its_records_show(tmp_path):
    """Velmora's largest cluster (a planted full duplication), two variants on two seeds, through the command:
    each figure recounted from the seed records it wrote against the cluster's groups read from the index's item
    table; the cluster's own caption is its own closest training caption (text similarity 1); the images are
    written; and the figures are the library's for the same seeds."""
    from memlab.cli import main
    from memlab.index import TrainingIndex
    from memlab.world import World

    out = tmp_path / "v.json"
    assert main(["variants", "--keyword", "Velmora", "--seeds", "0-1", "--only", "--variant",
                 "without=a teal circle, a blue cross and a red star on a brown gradient background",
                 "--variant", "caption=a teal circle, a blue cross and a red star on a brown gradient background, "
                 "by Velmora", "--out", str(out)]) == 0
    obj = json.loads(out.read_text())
    items = TrainingIndex.load(World.load(ASSETS_WORLD).index_path).items
    view = json.loads((ASSETS_WORLD / "keywords" / "velmora.json").read_text())
    rows = next(c["rows"] for c in view["clusters"] if c["rank"] == 1)
    groups = set(items["group"].to_numpy()[rows].tolist())
    words = set(items["group"].to_numpy()[[r for c in view["clusters"] for r in c["rows"]]].tolist())
    assert obj["cluster_rows"] == rows and obj["keyword"] == "Velmora"
    # every score names its source: the descriptor with its index, the model by its files' fingerprint
    manifest = json.loads((ASSETS_WORLD / "index" / "manifest.json").read_text())
    assert obj["descriptor"]["name"] == manifest["default_descriptor"] and len(obj["descriptor"]["index"]["sha256"]) == 64
    assert len(obj["model"]["fingerprint"]) == 64 and obj["model"]["software"]["torch"]
    assert [v["kind"] for v in obj["variants"]] == ["caption", "without"]  # VARIANTS' order, the given ones only
    for v in obj["variants"]:
        recs = v["seed_records"]
        inside = [int(r["top1"]["group"]) in groups for r in recs]
        assert v["figures"]["in_cluster"]["k"] == sum(inside)
        assert v["figures"]["copies"]["k"] == sum(i and r["replicated"] for i, r in zip(inside, recs))
        assert v["figures"]["replicated"]["k"] == sum(r["replicated"] for r in recs)
        assert v["figures"]["in_keyword"]["k"] == sum(int(r["top1"]["group"]) in words for r in recs)
        assert v["figures"]["in_cluster"] == json.loads(json.dumps(metrics.rate_interval(inside)))
        assert [r["seed"] for r in recs] == [0, 1]
        assert all((tmp_path / p).is_file() for p in v["images"]) and len(v["images"]) == 2
    cap = obj["variants"][0]["closest_caption"]
    assert cap["caption"] == obj["variants"][0]["prompt"] and cap["text_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert obj["threshold"]["value"] == pytest.approx(json.loads(
        (ASSETS_WORLD / "index" / "manifest.json").read_text())["descriptors"]["memlab-copy"]["threshold"]["value"])


@pytest.mark.skipif(not BUILT, reason="built-in world not built")
@pytest.mark.parametrize("argv, msg", [
    (["--variant", "sideways=x"], "unknown prompt variant 'sideways'"),
    (["--variant", "short"], "write KIND=PROMPT"),
    (["--variant", "short=a", "--variant", "short=b"], "given twice"),
    (["--only"], "give at least one"),
    (["--rank", "0"], "miscellaneous images"),
    (["--rank", "9"], "no cluster of rank 9"),
])
def test_the_command_refuses_bad_variants_before_generating(tmp_path, capsys, argv, msg):
    from memlab.cli import main

    assert main(["variants", "--keyword", "Velmora", "--seeds", "0", "--out", str(tmp_path / "v.json"), *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()


def test_the_endpoints_fill_and_run_the_variants(client, server):
    """The page's two events: Fill (the templates from the keyword and rank) and Run (streamed; the last update
    holds every variant): its table's counts are the library's figures from the same seeds, recomputed here."""
    from memlab.keywords import keyword_view
    from memlab.variants import cluster_groups, keyword_groups, stream_variants

    lab = server[1]
    view = keyword_view(lab.index, "colour field", threshold=-1.0)  # every image in one cluster
    lab.views["colour field clustered"] = {**view, "keyword": "colour field clustered"}
    try:
        filled = client.predict("colour field clustered", 1, api_name="/variant_prompts")
        assert list(filled) == list(default_variants("colour field clustered", cluster_caption(
            view, 1, lab.item_caption)).values())
        md, fig, table, gallery = client.predict("colour field clustered", 1, 2, "a colour field 3", "", "a colour field",
                                                 "", "", "a blue ball", api_name="/prompt_variants")
        assert [r[0] for r in table["data"]] == ["caption", "short", "without"] and len(gallery) == 6
        assert "in cluster" in md and "Wilson" in md
        groups = cluster_groups(lab.views["colour field clustered"], 1, lab.index.groups_of)
        words = keyword_groups(lab.views["colour field clustered"], lab.index.groups_of)
        results = list(stream_variants(lab, lab.views["colour field clustered"], 1,
                                       {"caption": "a colour field 3", "short": "a colour field",
                                        "without": "a blue ball"}, [0, 1], lab.settings()))[-1]
        for row, r in zip(table["data"], results):
            f = variant_figures(r["records"], groups, words)
            assert row[2:6] == [f"{f[k]['k']} of {f[k]['n']}" for k in ("in_cluster", "copies", "replicated",
                                                                       "in_keyword")]
        assert table["data"][0][6] == pytest.approx(1.0, abs=1e-3)  # a training caption is its own closest
        # the export: the study as `memlab variants` writes it, and every generation inside the zip
        import zipfile

        with zipfile.ZipFile(client.predict(api_name="/export_variants")) as z:
            study = json.loads(z.read("variants.json"))
            names = set(z.namelist())
            assert [v["kind"] for v in study["variants"]] == ["caption", "short", "without"]
            for v, r in zip(study["variants"], results):
                assert v["figures"] == json.loads(json.dumps(variant_figures(r["records"], groups, words)))
                assert set(v["images"]) <= names and len(v["images"]) == 2
            assert "partial" not in study and study["seeds"] == [0, 1] and study["keyword"] == "colour field clustered"
        with pytest.raises(Exception, match="miscellaneous images"):
            client.predict("colour field", 0, 2, "x", "", "", "", "", "", api_name="/prompt_variants")
        with pytest.raises(Exception, match="no prompt variant to run"):
            client.predict("colour field clustered", 1, 2, "", "", "", "", "", "", api_name="/prompt_variants")
        with pytest.raises(Exception, match="16"):
            client.predict("colour field clustered", 1, 17, "x", "", "", "", "", "", api_name="/prompt_variants")
    finally:
        lab.views.pop("colour field clustered", None)


@pytest.mark.skipif(not BUILT, reason="built-in world not built")
def test_a_stopped_study_resumes_after_the_variants_it_finished(tmp_path, monkeypatch, capsys):
    """``memlab variants`` keeps each variant as it finishes: stopped in its second variant, the same command
    generates that one alone and writes the study a run without a stop writes; other arguments start over."""
    from memlab.cli import main
    from memlab.service import Lab

    argv = ["variants", "--keyword", "Velmora", "--seeds", "0-1", "--only", "--variant", "caption=a teal circle, a "
            "blue cross and a red star on a brown gradient background, by Velmora", "--variant", "short=a teal circle"]
    whole = tmp_path / "whole.json"
    assert main(argv + ["--out", str(whole)]) == 0
    real, calls, stop_at = Lab.stream_generation, [], [2]

    def stopped(self, prompt, *a, **kw):
        calls.append(prompt)
        if len(calls) in stop_at:
            raise KeyboardInterrupt  # a stop in the second variant
        yield from real(self, prompt, *a, **kw)

    monkeypatch.setattr(Lab, "stream_generation", stopped)
    out = tmp_path / "v.json"
    assert main(argv + ["--out", str(out)]) == 130  # Ctrl-C: "interrupted"
    assert not out.exists() and (tmp_path / "v.json.part").is_file()
    from memlab.cli.variants import resumed

    job = json.loads((tmp_path / "v.json.part").read_text())["job"]
    assert [v["kind"] for v in resumed(tmp_path / "v.json.part", job)[0]] == ["caption"]
    assert resumed(tmp_path / "v.json.part", {**job, "seeds": [0]}) == ([], {})  # other arguments start over
    calls.clear()
    stop_at.clear()
    capsys.readouterr()
    assert main(argv + ["--out", str(out)]) == 0
    assert calls == ["a teal circle"] and "resuming" in capsys.readouterr().err
    a, b = json.loads(whole.read_text()), json.loads(out.read_text())
    assert [v["figures"] for v in a["variants"]] == [v["figures"] for v in b["variants"]]
    assert [v["kind"] for v in b["variants"]] == ["caption", "short"] and "partial" not in b
    assert not (tmp_path / "v.json.part").exists()
    assert all((tmp_path / p).is_file() for v in b["variants"] for p in v["images"])
