"""Keyword filter, token-length rule, clustering and word tables; real captions when available."""
import re

import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_DATA, synthetic_images
from memlab.errors import MemlabError
from memlab.keywords import (cluster, clip_token_lengths, filter_keyword, keyword_mask, keyword_view,
                             object_shares, word_table)

LAION = SHARED_DATA / "laion-captions" / "laion_sample_10000.parquet"


def test_keyword_mask_whole_words_case_and_multiword():
    caps = ["Van Gogh starry night", "vangogh print", "a van  gogh", "the van gogh's room", "caravan goghs",
            "CAT on a mat", "concatenate", "cat-like", ""]
    assert keyword_mask(caps, "van gogh").tolist() == [True, False, True, True, False, False, False, False, False]
    assert keyword_mask(caps, "cat").tolist() == [False] * 5 + [True, False, True, False]
    with pytest.raises(MemlabError):
        keyword_mask(caps, "  ")
    # Memory Triggers' "captions with 'almond' and 'blossoming'": every part, in any order, each whole
    caps = ["almond blossoming tree", "Blossoming almond, van Gogh", "almond tree", "blossoming cherry",
            "almonds blossoming", ""]
    assert keyword_mask(caps, "almond + blossoming").tolist() == [True, True, False, False, False, False]
    assert keyword_mask(caps, "almond blossoming").tolist() == [True, False, False, False, False, False]
    assert keyword_mask(caps, "blossoming + van gogh + almond").tolist() == [False, True] + [False] * 4
    assert keyword_mask(caps, " + almond + ").tolist() == keyword_mask(caps, "almond").tolist()
    with pytest.raises(MemlabError, match="no word"):
        keyword_mask(caps, " + ")


def test_token_rule_uses_the_real_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    caps = ["a cat", "sunflowers by vincent van gogh, oil on canvas", " ".join(["word"] * 80)]
    lengths = clip_token_lengths(caps)
    assert lengths.tolist() == [len(st.encode(c)) + 2 for c in caps]
    f = filter_keyword(caps + ["cat " * 90], "cat")
    assert (f["n_before"], f["n_after"], f["n_too_long"]) == (2, 1, 1)


@pytest.mark.skipif(not LAION.is_file(), reason="../shared/data absent")
def test_laion_counts_equal_an_independent_regex():
    from open_clip.tokenizer import SimpleTokenizer

    caps = pd.read_parquet(LAION)["TEXT"].fillna("").astype(str).tolist()
    assert len(caps) == 10000
    independent = {"painting": r"\bpainting\b", "cat": r"\bcat\b", "van gogh": r"\bvan\s+gogh\b"}
    st = SimpleTokenizer()
    for kw, rx in independent.items():
        expected = [c for c in caps if re.search(rx, c, flags=re.IGNORECASE)]
        f = filter_keyword(caps, kw)
        assert f["n_before"] == len(expected) > 0, kw
        long = sum(len(st.encode(c)) + 2 > 77 for c in expected)
        assert f["n_too_long"] == long and f["n_after"] == len(expected) - long
        print(f"{kw}: {f['n_before']} captions, {f['n_too_long']} over 77 tokens")


def test_cluster_orders_by_size_and_pools_singletons():
    e = np.eye(6, dtype=np.float32)
    v = np.stack([e[0], e[0], e[0], e[1], e[1], e[2], e[3]])
    labels = cluster(v, 0.9)
    assert labels.tolist() == [0, 0, 0, 1, 1, -1, -1]
    assert cluster(np.zeros((0, 3), np.float32), 0.9).size == 0


def test_word_table_like_table_1():
    caps = ["Starry Night by Van Gogh", "the starry night, van gogh painting", "Almond blossom - Van Gogh"]
    t = dict(word_table(caps, "van gogh"))
    # Table 1 lists the keyword's own words with the rest ("van 3061, gogh 3042, night 2841, starry 2806")
    assert t["van"] == 3 and t["gogh"] == 3 and t["starry"] == 2 and t["night"] == 2
    assert "almond" not in t and "blossom" not in t  # one caption of three: not a frequent word
    assert dict(word_table(caps[2:], "van gogh"))["almond"] == 1  # (a single caption: each of its words)
    assert "the" not in t and "painting" not in t
    hidden = dict(word_table(caps, "van gogh", hide_keyword=True))
    assert "van" not in hidden and "gogh" not in hidden and hidden["starry"] == 2


def test_word_table_keeps_every_word_tied_at_the_cut():
    """Nine words in every caption and a top of 8: the cut went through the tie alphabetically and dropped the
    keyword ("velmora"), which then headed no cluster of its own view (the built-in world's, cluster 1)."""
    words = "teal circle blue cross red star brown gradient velmora".split()
    caps = [" ".join(words)] * 3 + ["teal once"]
    t = word_table(caps, "velmora")
    assert [w for w, _ in t] == sorted(words, key=lambda w: (w != "teal", w)) and len(t) == 9
    assert dict(t)["velmora"] == 3 and dict(t)["teal"] == 4
    assert len(word_table(caps, "velmora", top=1)) == 1  # no tie at the cut: the top alone
    assert word_table(caps, "velmora", top=0) == []


def test_object_shares_count_unnamed_objects_over_distinct_images():
    # rows 0-5 are keyword rows; rows 0 and 1 are one image (a duplicate); row 3's caption names the object
    has = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0], bool)
    named = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    group = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    s = object_shares(has, named, group, np.array([0, 1, 2, 3, 4, 5]))
    # keyword images: groups 0-4 (5 distinct); hidden object in groups 0 and 3 (group 2 is named)
    assert (s["keyword_images"], s["keyword_count"]) == (5, 2) and s["keyword_share"] == pytest.approx(2 / 5)
    # overall: 9 distinct images, hidden object in groups 0, 3 and 6
    assert (s["overall_images"], s["overall_count"]) == (9, 3) and s["overall_share"] == pytest.approx(3 / 9)
    # counted by row and ignoring names it would read 4/6 and 5/10
    named_dup = named.copy()
    named_dup[1] = True  # one caption of image 0 names the object: the image no longer counts
    assert object_shares(has, named_dup, group, np.arange(6))["keyword_count"] == 1


def test_keyword_view_on_a_small_index(tmp_path):
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index

    ims = synthetic_images(12)
    ims = ims + [ims[0].copy(), ims[0].copy(), ims[1].copy()]
    caps = [f"a lighthouse number {i}" if i < 6 else f"a field {i}" for i in range(12)] + \
           ["lighthouse at dawn", "lighthouse at dusk", "a lighthouse again"]
    objs = ["flag" if i in (0, 2) else "" for i in range(12)] + ["flag", "flag", ""]
    items = pd.DataFrame({"id": range(15), "caption": caps, "file": [f"{i}.png" for i in range(15)], "objects": objs})
    build_index(tmp_path / "i", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=10)
    v = keyword_view(TrainingIndex.load(tmp_path / "i"), "lighthouse", objects=["flag"])
    assert (v["n_before"], v["n_after"]) == (9, 9)
    first = v["clusters"][0]
    assert first["size"] == 3 and not first["miscellaneous"] and set(first["rows"]) == {0, 12, 13}
    assert v["clusters"][1]["size"] == 2 and v["clusters"][-1]["miscellaneous"]
    assert v["sizes_top30"] == [3, 2] and v["share_in_top"]["top1"] == pytest.approx(3 / 9)
    # distinct images: keyword images are groups of rows {0,12,13}, {1,14}, 2, 3, 4, 5 -> 6; flag in 0 and 2
    assert v["objects"]["flag"]["keyword_images"] == 6
    assert v["objects"]["flag"]["keyword_share"] == pytest.approx(2 / 6)
    assert v["objects"]["flag"]["overall_share"] == pytest.approx(2 / 12)
    assert v["cluster_threshold"] == 0.97 and "near-duplicate cut" in v["cluster_threshold_source"]
    assert "label column" in v["objects"]["flag"]["source"] and v["objects"]["flag"]["named_in_captions"] == 0
    # no CLIP in this index: the default descriptor, and why; the paper's omitted cluster stated (issue 30)
    assert v["descriptor"]["name"] == "pixel" and "no CLIP" in v["descriptor"]["why"]
    assert "largest cluster, comprised of irrelevant images" in v["omitted_rule"]
    # as the app asks on a LAION-scale index: from the columns it reads and the caption words, the item table (its
    # URLs and other metadata) never read whole, the label column read alone
    from memlab.words import for_index

    lean_index = TrainingIndex.load(tmp_path / "i")
    lean = pd.read_parquet(tmp_path / "i" / "items.parquet", columns=["id", "caption", "duplicates", "group"])
    assert keyword_view(lean_index, "lighthouse", objects=["flag"], table=lean, words=for_index(lean_index)) == v
    assert lean_index._items is None


def test_clusters_cli(tmp_path, image_folder, capsys):
    from index_builder.build import main as build_main
    from index_builder.clusters import main as clusters_main

    out = tmp_path / "idx"
    assert build_main(["--images", str(image_folder), "--captions", str(image_folder / "captions.csv"),
                       "--out", str(out), "--calib-n", "5", "--keywords", "colour field"]) == 0
    assert (out / "keywords" / "colour-field.json").is_file()
    assert clusters_main(["--index", str(out), "--keywords", "copy"]) == 0
    assert (out / "keywords" / "copy.json").is_file()
    # an index folder given as --world is accepted (there is no other reading of it)
    assert clusters_main(["--world", str(out), "--keywords", "field"]) == 0
    assert (out / "keywords" / "field.json").is_file()
    import json

    words = lambda: {w for c in json.loads((out / "keywords" / "field.json").read_text())["clusters"]  # noqa: E731
                     for w, _ in c["top_words"]}
    assert "field" in words()
    assert clusters_main(["--index", str(out), "--keywords", "field", "--hide-keyword-words"]) == 0
    assert "field" not in words()
    assert clusters_main(["--index", str(out)]) == 2
    assert "no keywords" in capsys.readouterr().err
    # whose works, kept in the view: "dup.png" (captioned "a copy of the first field") is nearly identical to
    # img00 ("a colour field number 0"), so 1 of their 2 captions names "copy": the rule's half, a cluster of "copy"
    assert clusters_main(["--index", str(out), "--keywords", "field", "--related", "copy"]) == 0
    v = json.loads((out / "keywords" / "field.json").read_text())
    clustered = [c for c in v["clusters"] if not c["miscellaneous"]]
    assert [c["size"] for c in clustered] == [2] and v["related"]["related_ranks"] == [1]
    assert v["related"]["share"] == pytest.approx(2 / v["n_after"]) and v["related"]["captions_naming"] == 1
    assert f"in the clusters of 'copy''s works: {2 / v['n_after']:.1%} of its items (2 of {v['n_after']}; " \
           "clusters [1])" in capsys.readouterr().err
    from memlab.keywords import load_views

    sealed = set(json.loads((out / "manifest.json").read_text())["files"])  # as the app reads the index's views
    assert load_views(out / "keywords", sealed)["field"]["related"] == v["related"]
    # a view from elsewhere whose "related" the page could not read is refused naming the field (the page shows a
    # prebuilt view's related keyword when its box is empty, the first one as the app starts)
    from memlab.validate import check_view

    for change, field in [(lambda r: r.update(clusters=[]), "related.clusters has 0 entries"),
                          (lambda r: r.update(share="52%"), "related.share must be a finite number"),
                          (lambda r: r["clusters"][0].pop("naming"), r"related.clusters\[0\].naming is missing"),
                          (lambda r: r.update(related_ranks=["#1"]), r"related.related_ranks\[0\] holds")]:
        bad = json.loads(json.dumps(v))
        change(bad["related"])
        with pytest.raises(MemlabError, match=field):
            check_view(bad, out / "keywords" / "field.json")
    bad = json.loads(json.dumps(v))  # a cluster's rows, which its variants and whose works read, are rows of the index
    bad["clusters"][0]["rows"].append(10**9)
    with pytest.raises(MemlabError, match=r"clusters\[0\].rows holds 1000000000, not a row of the index"):
        check_view(bad, out / "keywords" / "field.json", n_items=14)


def test_object_shares_by_clip_zero_shot_without_labels(tmp_path, tiny_clip_name, monkeypatch):
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index

    ims = synthetic_images(10)
    items = pd.DataFrame({"id": range(10), "caption": [f"a lighthouse {i}" if i < 4 else "a field" for i in range(10)],
                          "file": [f"{i}.png" for i in range(10)]})
    clip = create_descriptor("clip", model=tiny_clip_name, pretrained=None, device="cpu")
    build_index(tmp_path / "i", items, lambda i: ims[i], [create_descriptor("pixel"), clip], calib_n=5)
    idx = TrainingIndex.load(tmp_path / "i")
    v = keyword_view(idx, "lighthouse", objects=["flag"])
    o = v["objects"]["flag"]
    assert o["source"].startswith("CLIP zero-shot") and tiny_clip_name in o["source"]
    import memlab.keywords as kw

    whole = kw.object_labels(idx, "flag", clip=clip)
    monkeypatch.setattr(kw, "ZERO_SHOT_BLOCK", 3)  # the image vectors scored 3 at a time: the same labels
    assert np.array_equal(kw.object_labels(idx, "flag", clip=clip)[0], whole[0])
    # the images are clustered with CLIP, as the paper does, although pixel is the index's default
    assert idx.default_descriptor == "pixel" and v["descriptor"]["name"] == clip.name
    assert v["descriptor"]["why"].startswith("CLIP image embeddings")
    assert o["overall_images"] == 10 and o["keyword_images"] == 4  # one denominator: distinct images
    # and without CLIP or labels: a clear error
    build_index(tmp_path / "p", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=5)
    with pytest.raises(MemlabError, match="no 'objects' column and no CLIP"):
        keyword_view(TrainingIndex.load(tmp_path / "p"), "lighthouse", objects=["flag"])


def test_the_app_keeps_only_the_latest_keyword_views_it_computed(tiny_world, monkeypatch):
    """A hosted app's visitors may type any number of keywords: views computed on request are kept for the
    ``KEPT_VIEWS`` latest used (a view asked again is reused, not recomputed), and the world's prebuilt ones
    always; the cache grew without bound."""
    import memlab.keywords as kw
    import memlab.trainingset as trainingset
    from memlab.service import Lab
    from memlab.world import World

    monkeypatch.setattr(trainingset, "KEPT_VIEWS", 3)
    computed = []
    real = kw.keyword_view
    monkeypatch.setattr(kw, "keyword_view", lambda index, keyword, **k: computed.append(keyword) or real(index, keyword, **k))
    lab = Lab(World.load(tiny_world), device="cpu")
    prebuilt = dict(lab.views)
    for word in ["1", "2", "3", "1", "4", "5", "1", "2"]:
        assert lab.keyword_view(word)["keyword"] == word
    assert computed == ["1", "2", "3", "4", "5", "2"]  # "1" was used again each time before it could be dropped
    assert list(lab._asked) == ["5", "1", "2"] and lab.views == prebuilt
    # a view clustered at another cut is not kept as the keyword's: the next plain request clusters at the index's
    one = lab.keyword_view("colour field", threshold=-1.0)  # every image nearly identical to every other
    assert [c["size"] for c in one["clusters"] if not c["miscellaneous"]] == [one["n_after"]]
    plain = lab.keyword_view("colour field")
    assert plain["cluster_threshold"] != -1.0 and plain["cluster_threshold_source"] != "given"
    # a view that checked objects is kept, and serves the plain view and fewer objects (the page's default objects
    # made every typed keyword's view twice: once to show it, again to generate from a cluster or run its variants)
    computed.clear()
    monkeypatch.setattr(kw, "object_labels", lambda index, obj, *a: (np.zeros(len(index.items), bool), "none"))
    flagged = lab.keyword_view("field 7", objects=["flag", "star"])
    assert lab.keyword_view("field 7") is flagged and lab.keyword_view("field 7", objects=["star"]) is flagged
    assert computed == ["field 7"]
    assert set(lab.keyword_view("field 7", objects=["moon"])["objects"]) == {"moon"} and len(computed) == 2


def test_a_keyword_in_too_many_captions_is_refused_before_any_clustering(tiny_world, monkeypatch):
    """The clusters compare every pair of the keyword's images: a common word on a LAION-scale index would hold
    the app for hours. Past ``KEYWORD_MAX_ITEMS`` captions the app refuses, saying how many and what to do; at the
    bound it clusters."""
    import memlab.keywords as kw
    import memlab.trainingset as trainingset
    from memlab.errors import MemlabError
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")  # 30 captions "a colour field N"
    monkeypatch.setattr(trainingset, "KEYWORD_MAX_ITEMS", 29)
    monkeypatch.setattr(kw, "cluster", lambda *a, **k: pytest.fail("clustered"))
    with pytest.raises(MemlabError, match="'colour' is in 30 training captions; here at most 29"):
        lab.keyword_view("colour")
    monkeypatch.undo()
    monkeypatch.setattr(trainingset, "KEYWORD_MAX_ITEMS", 30)
    assert lab.keyword_view("colour")["n_after"] == 30


def test_the_miscellaneous_images_have_no_rank():
    """Memory Triggers omit the largest cluster of irrelevant images: the view's miscellaneous images are shown
    apart, so the table gives them rank 0 and "generate from the cluster of rank r" counts real clusters from 1
    (the table showed rank 2 on the miscellaneous row, which the summary calls "not ranked"). A hand-made view."""
    from memlab.app.charts import keyword_outputs
    from memlab.keywords import ranked_cluster

    def cl(rank, size, misc):
        return {"rank": rank, "size": size, "miscellaneous": misc, "top_words": [("red", size)],
                "representatives": [rank], "rows": [rank], "distinct_images": size}

    view = {"keyword": "red", "n_before": 9, "n_after": 9, "n_too_long": 0, "cluster_threshold": 0.9,
            "descriptor": {"name": "pixel", "model": "-", "preset": "-"}, "miscellaneous_size": 4,
            "share_in_top": {"top1": 0.5, "top3": 0.5, "top5": 0.5},
            "clusters": [cl(1, 5, False), cl(2, 4, True)]}
    lab = type("Lab", (), {"item_file": lambda self, r: None})()
    table = keyword_outputs(lab, view)[2]
    assert table["rank"].tolist() == [1, 0] and table["miscellaneous"].tolist() == [False, True]
    assert ranked_cluster(view, 1)["size"] == 5 and ranked_cluster(view, 0)["miscellaneous"]
    with pytest.raises(MemlabError, match=r"no cluster of rank 2 for 'red': it has 1 cluster; its 4 miscellaneous"):
        ranked_cluster(view, 2)
    with pytest.raises(MemlabError, match="it has 0 clusters"):  # and no miscellaneous images either
        ranked_cluster({**view, "clusters": []}, 0)


def test_related_share_counts_the_keywords_items_in_clusters_of_the_related_works():
    """Memory Triggers: "almond + blossoming" lies for about 52% in clusters of Van Gogh's works. A hand-made
    training set: the keyword's rows 0-9 (n_after 10) in clusters {0,1,2}, {3,4}, {5,6} and 3 miscellaneous rows.
    Cluster 1's images are captioned without the name here and with it elsewhere (rows 10-13: 4 of its 7 captions
    anywhere), cluster 2's exactly half (1 of 2 rows, and row 14 of the same image), cluster 3's 1 of 3; a
    miscellaneous image named in all its captions is no one's cluster."""
    from memlab.keywords import related_share

    caps = ["almond blossoming branch"] * 3 + ["almond blossoming, by van gogh", "almond blossoming"] + \
           ["almond blossoming tree", "almond blossoming tree"] + ["almond blossoming by Van  Gogh"] * 3 + \
           ["a van gogh print"] * 4 + ["some tree"] + ["sunflowers, van gogh"]
    group = np.array([0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 0, 0, 1, 1, 2, 9])
    view = {"n_after": 10, "clusters": [
        {"rank": 1, "size": 3, "miscellaneous": False, "rows": [0, 1, 2]},
        {"rank": 2, "size": 2, "miscellaneous": False, "rows": [3, 4]},
        {"rank": 3, "size": 2, "miscellaneous": False, "rows": [5, 6]},
        {"rank": 4, "size": 3, "miscellaneous": True, "rows": [7, 8, 9]}]}
    r = related_share(view, caps, group, "van gogh")
    got = [(c["rank"], c["naming"], c["captions"], c["related"]) for c in r["clusters"]]
    # cluster 1: groups 0 and 1 are rows 0-2 and 10-13 (7 captions, 4 name him); cluster 2: group 2 is rows 3, 4, 14
    # (1 of 3); cluster 3: groups 3 and 4, no name; the miscellaneous: groups 5-7, every caption names him
    assert got == [(1, 4, 7, True), (2, 1, 3, False), (3, 0, 2, False), (0, 3, 3, False)]
    assert r["related_ranks"] == [1] and r["items"] == 3 and r["share"] == pytest.approx(3 / 10)
    # the keyword's own captions that name him: rows 3, 7, 8, 9 (whitespace inside the name, any case)
    assert r["captions_naming"] == 4 and r["captions_share"] == pytest.approx(4 / 10)
    assert "at least half" in r["rule"]
    # at exactly the rule's share a cluster counts: a lower bar takes cluster 2 (1 of 3) too
    low = related_share(view, caps, group, "van gogh", min_share=1 / 3)
    assert low["related_ranks"] == [1, 2] and low["share"] == pytest.approx(5 / 10) and "at least 33%" in low["rule"]
    # a keyword of several parts names the works only where every part is there: cluster 1's captions hold
    # "branch" (rows 0-2) or "gogh" (rows 10-13), none both; with both in 4 of its 7 captions it is again his
    assert related_share(view, caps, group, "gogh + branch")["clusters"][0]["naming"] == 0
    assert related_share(view, caps, group, "gogh + print")["related_ranks"] == [1]
    # on a larger random table, each cluster's counts are those of a scan of the whole table for its groups
    rng = np.random.default_rng(0)
    g = rng.integers(0, 300, 2_000)
    caps = np.where(rng.random(2_000) < 0.4, "by van gogh", "a tree")
    rows = rng.permutation(2_000)[:120]
    view = {"n_after": 120, "clusters": [{"rank": i + 1, "size": 10, "miscellaneous": i == 11,
                                          "rows": rows[10 * i:10 * i + 10].tolist()} for i in range(12)]}
    for c, got in zip(view["clusters"], related_share(view, caps, g, "van gogh")["clusters"]):
        scan = np.isin(g, g[c["rows"]])
        assert (got["captions"], got["naming"]) == (scan.sum(), (scan & (caps == "by van gogh")).sum())


def test_the_keyword_tab_shows_whose_works_its_clusters_are(tiny_world):
    """The Keyword clusters tab's related keyword, as the page shows it: the share in the summary, the clusters
    marked in the chart and the table; recomputed from the view the same request used."""
    from memlab.app.charts import keyword_outputs
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")
    v = lab.keyword_view("colour field", threshold=0.0)  # one cluster of every image: field 3 names 1 of 30
    r = lab.related_share(v, "field 3")
    assert r["clusters"][0]["naming"] == 1 and r["clusters"][0]["captions"] == 30 and r["related_ranks"] == []
    md, fig, table, _ = keyword_outputs(lab, v, r)
    assert "0% of the “colour field” items (0 of 30)" in md and "3% of the “colour field” captions name" in md
    assert table["name “field 3”"].tolist() == ["1 of 30"] and list(fig.data[0].marker.color) == ["#1f77b4"]
    r = lab.related_share(v, "colour")
    md, fig, table, _ = keyword_outputs(lab, v, r)
    assert "100% of the “colour field” items (30 of 30)" in md and "(#1;" in md
    assert table["name “colour”"].tolist() == ["30 of 30 ✓"] and list(fig.data[0].marker.color) == ["#ff7f0e"]
    title = fig.layout.title.text.split("<br>")
    assert " ".join(title).endswith("· orange: “colour”'s works") and max(map(len, title)) <= 40  # a phone's width
    many = keyword_outputs(lab, v, {**r, "related_ranks": list(range(1, 13))})[0]  # a LAION keyword's hundreds
    assert "(#1, #2, #3, #4, #5, #6, #7, #8, #9, #10 and 2 more;" in many
    with pytest.raises(MemlabError, match="at most 200"):
        lab.related_share(v, "x" * 201)
    # the related keyword is text, wherever it is shown (plotly and markdown read tags: a link in a chart's title)
    md, fig, table, _ = keyword_outputs(lab, v, lab.related_share(v, "<a href='http://x'>colour</a>"))
    assert "<a " not in fig.layout.title.text and "&lt;a href='http://x'&gt;colour&lt;/a&gt;" in \
        fig.layout.title.text.replace("<br>", " ")
    assert "<a " not in md.replace("\\<a ", "")


def test_a_keyword_view_exports_as_the_tab_shows_it(tmp_path):
    """Export this view: the view with whose works, a CSV row per cluster, and each cluster's first training
    images, each the index's own image; recounted from the view (the built-in world's "Velmora", with "polka dot"
    as the related keyword)."""
    import csv
    import io
    import json
    import zipfile

    from PIL import Image

    from memlab.export import KEYWORD_IMAGES, write_keyword_zip
    from memlab.service import Lab
    from memlab.world import ASSETS_WORLD, World

    lab = Lab(World.load(ASSETS_WORLD))
    v = lab.keyword_view("Velmora")
    rel = lab.related_share(v, "polka dot")
    with zipfile.ZipFile(write_keyword_zip(lab, v, rel, tmp_path / "velmora.zip")) as z:
        doc = json.loads(z.read("view.json"))
        rows = list(csv.DictReader(io.StringIO(z.read("clusters.csv").decode())))
        pngs = sorted(n for n in z.namelist() if n.endswith(".png"))
        assert doc["world"] == lab.name and doc["view"]["clusters"] == v["clusters"] and doc["related"] == rel
        assert [int(r["rank"]) for r in rows] == [0 if c["miscellaneous"] else c["rank"] for c in v["clusters"]]
        assert [r["captions naming polka dot"] for r in rows] == [f"{c['naming']} of {c['captions']}"
                                                                  for c in rel["clusters"]]
        want = [(c, r) for c in v["clusters"] for r in c["representatives"][:KEYWORD_IMAGES]]
        assert len(pngs) == len(want) == sum(len(r["images"].split()) for r in rows)
        for c, r in want:
            folder = "miscellaneous" if c["miscellaneous"] else f"cluster-{c['rank']:03d}"
            name = f"images/{folder}/{lab.index.item(r)['id']}.png"
            got = np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB"))
            assert np.array_equal(got, np.asarray(lab.item_image(r))), name
    assert [p.name for p in tmp_path.iterdir()] == ["velmora.zip"]  # no part file left
