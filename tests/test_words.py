"""Caption posting lists (``memlab.words``) against a scan of every caption with a pattern, and the views that read
them: the caption search, keyword rows, item lookups."""
import re

import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_DATA
from memlab import words as words_module
from memlab.keywords import filter_keyword, keyword_mask
from memlab.words import CaptionWords

LAION = SHARED_DATA / "laion-captions" / "laion_sample_10000.parquet"
EDGES = ["Van Gogh starry night", "vangogh print", "a van  gogh", "the van gogh's room", "caravan goghs",
         "CAT on a mat", "concatenate", "cat-like", "", None, "snake_case words_2", "Café au lait, CAFÉ", "cat cat CAT",
         "100% cotton t-shirt", "new\nyork", "New York, new-york", "ΑΘΗΝΑ athens αθηνα", "van, gogh", "ΟΔΥΣΣΕΥΣ",
         "nul\x00byte", "İstanbul"]


def scan(captions, words):
    """Every caption matched with a pattern per word, as the caption search did before posting lists."""
    caps = pd.Series(captions).fillna("").astype(str).str.lower()
    return [i for i, c in enumerate(caps) if all(re.search(rf"\b{re.escape(w)}\b", c) for w in words)]


def queries(captions, rng, n=200):
    """Word sets drawn from the captions themselves (one to three words), and words in no caption."""
    toks = [re.findall(r"\w+", str(c or "").lower()) for c in captions]
    out = [["nosuchword"], ["cat", "nosuchword"]]
    for i in rng.integers(0, len(captions), n):
        if toks[i]:
            out.append(list(rng.choice(toks[i], min(len(toks[i]), int(rng.integers(1, 4))), replace=False)))
    return out


def test_posting_lists_find_the_rows_a_scan_finds(monkeypatch):
    """Single words and several at once, over chunk boundaries (7 captions a chunk), with case, punctuation,
    underscores, digits, accents, Greek and null captions."""
    monkeypatch.setattr(words_module, "CHUNK", 7)
    caps = EDGES * 3
    w = CaptionWords.build(caps)
    assert w.n == len(caps)
    for q in [["cat"], ["van", "gogh"], ["café"], ["snake_case"], ["words_2"], ["t", "shirt"], ["100"], ["york"],
              ["αθηνα"], ["gogh", "s"], ["mat", "cat"], ["οδυσσευς"], ["nul"], ["byte"], ["i"],
              ["stanbul"]] + queries(caps, np.random.default_rng(0)):
        assert w.rows_with_all(q).tolist() == scan(caps, q), q
    assert len(scan(caps, ["cat"])) == 9 and len(scan(caps, ["αθηνα"])) == 3  # (the scan itself finds them)
    assert len(scan(caps, ["οδυσσευς"])) == 3 and len(scan(caps, ["byte"])) == 3
    assert w.rows_with_all([]).tolist() == list(range(len(caps)))


@pytest.mark.skipif(not LAION.is_file(), reason="../shared/data absent")
def test_posting_lists_on_laion_captions_equal_the_scan(monkeypatch):
    monkeypatch.setattr(words_module, "CHUNK", 3000)
    caps = pd.read_parquet(LAION)["TEXT"].tolist()
    w = CaptionWords.build(caps)
    qs = queries(caps, np.random.default_rng(1), 150) + [["the"], ["painting"], ["van", "gogh"], ["t", "shirt"]]
    found = 0
    for q in qs:
        rows = w.rows_with_all(q).tolist()
        assert rows == scan(caps, q), q
        found += len(rows)
    assert found > len(qs)


def test_keyword_rows_from_posting_lists_equal_the_scan():
    """A multi-word keyword's words may be anywhere in a caption: the posting lists give candidates, the keyword's
    pattern decides (words split by whitespace alone: not "van, gogh")."""
    caps = np.array([str(c or "") for c in EDGES * 2], object)
    w = CaptionWords.build(caps)
    for kw in ["van gogh", "cat", "CAT", "new york", "café", "t shirt", "snake_case", "gogh van", "athens",
               "gogh + van", "york + new + cat"]:
        assert keyword_mask(caps, kw, w).tolist() == keyword_mask(caps, kw).tolist(), kw
    assert keyword_mask(caps, "van gogh", w).sum() == 6 and keyword_mask(caps, "new york", w).sum() == 4


def test_a_common_keyword_tokenizes_only_what_decides_the_refusal():
    """Past ``max_items`` the keyword is refused whatever the rest: its captions are tokenized in blocks only until
    more than ``max_items`` are kept, so a word in half a LAION-scale index costs what a rare one does."""
    seen = []

    class Counting:
        def __call__(self, caps, **kw):
            seen.extend(caps)
            return type("T", (), {"input_ids": [[0] * (len(c.split()) + 2) for c in caps]})()

    caps = np.array([f"a cat number {i}" + (" long" * 80 if i % 5 == 0 else "") for i in range(20_000)], object)
    f = filter_keyword(caps, "cat", Counting(), CaptionWords.build(caps), max_items=100)
    assert f["over"] and f["n_before"] == 20_000 and f["n_after"] > 100
    assert len(seen) == 1024 and f["n_after"] + f["n_too_long"] == 1024
    seen.clear()
    whole = filter_keyword(caps, "cat", Counting())
    assert len(seen) == 20_000 and not whole["over"]
    assert (whole["n_after"], whole["n_too_long"]) == (16_000, 4_000)
    assert whole["rows"][:f["n_after"]].tolist() == f["rows"].tolist()


def test_the_lab_answers_as_a_scan_of_its_item_table(tiny_world):
    """The caption search (the first 48 distinct group and caption pairs in row order, a prefix read at a time),
    the near-duplicate groups and an id's row, against the same answers computed from the whole table."""
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")
    items = lab._table()
    for query, limit in [("colour field", 48), ("colour", 3), ("field 7", 48), ("FIELD", 1), ("nosuch", 48)]:
        rows = scan(items["caption"], re.findall(r"\w+", query.lower()))
        expected = items.iloc[rows].drop_duplicates(subset=["group", "caption"]).head(limit)
        got = lab.search_captions(query, limit)
        assert got["row"].tolist() == expected.index.tolist() and got["caption"].tolist() == \
            expected["caption"].tolist(), query
        assert got.attrs["captions"] == len(rows)  # (the label's count: every caption holding the words)
    g = items[items["duplicates"] > 0].groupby("group").size().sort_values(ascending=False, kind="stable")
    assert lab.duplicate_groups()["size"].tolist() == g.tolist()[:50]
    for _, r in lab.duplicate_groups().iterrows():  # the distinct captions on each group's copies
        assert r["captions"] == len(set(items.loc[items["group"] == r["group"], "caption"]))
    for row in [0, 7, len(items) - 1]:
        assert lab.item_row(str(items["id"].iloc[row])) == row


def test_an_index_keeps_its_caption_words_and_refuses_ones_that_do_not_fit(tmp_path):
    """Index builds write the posting lists beside the items (checksummed, in the manifest), equal to the ones built
    in memory; lists whose rows are not the index's items, or not in order, are refused with their reason even where
    the manifest's checksums were written to match them."""
    import json

    from memlab.errors import IndexMismatchError, MemlabError
    from memlab.index import TrainingIndex
    from memlab.indexfiles import sha256
    from memlab.ondisk import write_embeddings
    from memlab.words import for_index
    from tests.helpers import clustered
    from tests.test_ondisk import _build

    caps = [str(c or "") for c in EDGES] * 20
    src = write_embeddings(tmp_path / "emb", clustered(len(caps), 32, 12, seed=3), pd.DataFrame({"caption": caps}),
                           part_rows=100)
    _build(src, tmp_path / "idx")
    idx = TrainingIndex.load(tmp_path / "idx")
    assert idx.manifest["words"]["items"] == len(caps) and "words.rows.npy" in idx.manifest["files"]
    kept, built = for_index(idx), CaptionWords.build(caps)
    assert kept.vocab == built.vocab and np.array_equal(kept.rows, built.rows)
    for q in (["cat"], ["van", "gogh"], ["οδυσσευς"]):
        assert kept.rows_with_all(q).tolist() == scan(caps, q)

    def forged(rows):  # the rows replaced, the manifest's checksum written to match
        np.save(tmp_path / "idx" / "words.rows.npy", rows)
        m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        m["files"]["words.rows.npy"] = sha256(tmp_path / "idx" / "words.rows.npy")
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
        return TrainingIndex.load(tmp_path / "idx")

    good = kept.rows.copy()
    with pytest.raises(MemlabError, match="a row is not an item row"):
        for_index(forged(np.where(good == good.max(), len(caps), good)))
    swapped = good.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(MemlabError, match="not in increasing order"):
        for_index(forged(swapped))
    np.save(tmp_path / "idx" / "words.rows.npy", good)  # checksum no longer matches: the index itself is refused
    with pytest.raises(IndexMismatchError):
        TrainingIndex.load(tmp_path / "idx")


def test_an_index_built_before_caption_words_gets_them_in_memory_up_to_the_bound(tmp_path, monkeypatch):
    """An index without stored lists (built before them) has them built from its item table, row group by row
    group, as the build would write them; past ``MAX_ITEMS`` none are built (their memory grows with the captions)
    and the caption search says so."""
    import json
    from types import SimpleNamespace

    from memlab import words
    from memlab.descriptors import create_descriptor
    from memlab.errors import MemlabError
    from memlab.index import TrainingIndex, build_index
    from memlab.service import Lab
    from tests.helpers import synthetic_images

    caps = [str(c or "") for c in EDGES]
    ims = synthetic_images(len(caps))
    items = pd.DataFrame({"id": range(len(caps)), "caption": caps, "file": [f"{i}.png" for i in range(len(caps))]})
    build_index(tmp_path / "idx", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=len(caps))
    stored = words.for_index(TrainingIndex.load(tmp_path / "idx"))
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del m["words"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    before = TrainingIndex.load(tmp_path / "idx")
    monkeypatch.setattr(words, "CHUNK", 5)  # four row blocks
    built = words.for_index(before)
    assert built.vocab == stored.vocab and np.array_equal(built.rows, stored.rows)
    assert np.array_equal(built.starts, stored.starts) and built.n == len(caps)
    monkeypatch.setattr(words, "MAX_ITEMS", len(caps) - 1)
    assert words.for_index(before) is None
    said = []
    assert words.write(tmp_path, caps, len(caps), said.append) is None and "not kept" in said[0]
    lab = SimpleNamespace(_words=None, index=before)
    lab.caption_words = lambda: Lab.caption_words(lab)
    assert lab.caption_words() is None  # (the app starts; the views that need them refuse)
    with pytest.raises(MemlabError, match="have no word index"):
        Lab._words_needed(lab)
    monkeypatch.undo()
    from index_builder.__main__ import main

    assert main(["words", "--index", str(tmp_path / "idx")]) == 0  # kept in the index, as its build would have
    after = TrainingIndex.load(tmp_path / "idx")
    assert after.manifest["words"]["files"]["rows"] in after.manifest["files"]
    kept = words.for_index(after)
    assert kept.vocab == stored.vocab and np.array_equal(kept.rows, stored.rows)
