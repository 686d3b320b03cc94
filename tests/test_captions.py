"""The captions' text vectors kept in an index (memlab.captions, ``index_builder captions``): the same nearest
captions as the app's in-memory embedding, at any size, resumable, from clip-retrieval's text_emb parts."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tests.helpers import clustered, synthetic_images

CAPS = ["a field of colour number 3", "a red square", "", "a red square", "a blue circle on grey", "a green star",
        "a photo of a lighthouse", "a lighthouse at night", "a red square", "an orange ring", "a teal diamond",
        "a field of colour number 3", "a purple cross", "two yellow triangles"]


@pytest.fixture
def clip_index(tiny_clip_name, tmp_path):
    from memlab.descriptors import create_descriptor
    from memlab.index import build_index

    ims = synthetic_images(len(CAPS))
    items = pd.DataFrame({"id": range(len(CAPS)), "caption": CAPS, "file": [f"{i}.png" for i in range(len(CAPS))]})
    from safetensors.torch import save_file

    weights = tmp_path / "tiny-clip.safetensors"  # one set of random weights that every load reads
    save_file(create_descriptor("clip", model=tiny_clip_name, pretrained=None, device="cpu").net.state_dict(),
              str(weights))
    clip = create_descriptor("clip", model=tiny_clip_name, pretrained=str(weights), device="cpu")
    build_index(tmp_path / "idx", items, lambda i: ims[i], [create_descriptor("pixel"), clip], calib_n=len(CAPS))
    return tmp_path / "idx", clip


def test_kept_caption_vectors_give_the_in_memory_answer_past_the_cap(clip_index, tiny_pipeline_dir, monkeypatch):
    from index_builder.__main__ import main
    from memlab import index, trainingset
    from memlab.service import Lab
    from memlab.world import World

    idx, clip = clip_index
    prompt = "a red square on a lighthouse"
    before = Lab(World.from_parts(str(tiny_pipeline_dir), idx))
    assert before.caption_vectors() is None
    memory = before.closest_captions(prompt, k=5)
    assert main(["captions", "--index", str(idx), "--block", "4"]) == 0
    monkeypatch.setattr(trainingset, "CAPTION_SEARCH_MAX", 1)  # the in-memory embedding would now refuse
    lab = Lab(World.from_parts(str(tiny_pipeline_dir), idx))
    assert lab.caption_vectors().entry["count"] == 10  # distinct, non-empty captions
    assert "caption vectors: 10 distinct captions (exact" in lab.text_source()
    monkeypatch.setattr(index, "SMALL_ITEMS", 1)  # as a large index: its item table is read row group by row group
    kept = lab.closest_captions(prompt, k=5)
    assert lab.index._items is None  # the matched rows alone were read
    assert kept["caption"].tolist() == memory["caption"].tolist()
    assert np.allclose(kept["text similarity"], memory["text similarity"], atol=2e-3)  # float16 vectors
    # recomputed: the cosine of the tiny CLIP's projected text embeddings, each caption at its first row
    t = clip.embed_text(CAPS + [prompt])
    sims = t[:-1] @ t[-1]
    first = {c: CAPS.index(c) for c in CAPS if c}
    expect = sorted(first, key=lambda c: -sims[first[c]])[:5]
    assert kept["caption"].tolist() == expect
    assert kept["row"].tolist() == [first[c] for c in expect] and "" not in kept["caption"].tolist()
    # without them, past the cap, nothing is searched and the label says how to keep them
    bare = Lab(World.from_parts(str(tiny_pipeline_dir), idx))
    bare.index.manifest.pop("captions")
    assert bare.closest_captions(prompt).empty and "index_builder captions" in bare.text_source()


def test_a_stopped_caption_build_resumes_with_the_captions_it_lacks(clip_index):
    from memlab.captions import CaptionVectors, build
    from memlab.index import TrainingIndex

    idx, clip = clip_index
    seen = []

    def stops(texts):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(list(texts))
        return clip.embed_text(texts)

    with pytest.raises(KeyboardInterrupt):
        build(idx, block=3, embed=stops)
    assert "captions" not in json.loads((idx / "manifest.json").read_text())
    again = []
    build(idx, block=3, embed=lambda texts: again.append(list(texts)) or clip.embed_text(texts))
    firsts = [c for i, c in enumerate(CAPS) if c and c not in CAPS[:i]]
    assert sum(seen, []) == firsts[:6] and sum(again, []) == firsts[6:]  # the two finished blocks were kept
    kept = CaptionVectors.load(TrainingIndex.load(idx))  # checked against its checksums on load
    assert np.allclose(np.asarray(kept.vectors, np.float32), clip.embed_text(firsts), atol=2e-3)
    assert not (idx.parent / f".{idx.name}.captions").exists()


def test_text_emb_parts_are_kept_at_build_and_searched_through_ivf(tmp_path, monkeypatch):
    """clip-retrieval's text_emb parts beside img_emb (LAION's layout): the build keeps one vector per distinct
    caption; past the exact size an IVF index finds each caption's own vector first."""
    from memlab import ondisk
    from memlab.captions import CaptionVectors, build
    from memlab.embeddings import write_embeddings
    from memlab.errors import IndexMismatchError, MemlabError
    from memlab.index import TrainingIndex
    from index_builder.build import main

    n = 1200
    caps = [f"caption {i % 1000}" for i in range(n)]  # rows 1000-1199 repeat earlier captions
    text = clustered(n, 768, 0, seed=1)
    text[1000:] = text[:200]  # a caption's text vector is the same wherever it repeats
    src = write_embeddings(tmp_path / "emb", clustered(n, 768, 30), pd.DataFrame({"caption": caps}), part_rows=500)
    (src / "text_emb").mkdir()
    for i, s in enumerate(range(0, n, 500)):
        np.save(src / "text_emb" / f"text_emb_{i}.npy", text[s:s + 500].astype(np.float16))
    assert main(["--embeddings", str(src), "--descriptor", "clip", "--out", str(tmp_path / "idx")]) == 0
    kept = CaptionVectors.load(TrainingIndex.load(tmp_path / "idx"))
    assert kept.entry["count"] == 1000 and kept.entry["factory"] == "Flat" and "text_emb" in kept.entry["source"]
    rows, sims = kept.search(text[1100], k=2)
    assert rows[0] == 100 and sims[0] > 0.999  # a repeated caption is found at its first row
    monkeypatch.setattr(ondisk, "EXACT_MAX", 100)
    entry = build(tmp_path / "idx", text_emb=[src])
    assert entry["factory"].startswith("IVF")
    ivf = CaptionVectors.load(TrainingIndex.load(tmp_path / "idx"))
    assert all(ivf.search(text[r], k=1)[0][0] == r for r in range(0, 1000, 37))
    # parts that do not cover the items, and a caption file that no longer matches its checksum, are refused
    with pytest.raises(MemlabError, match="hold 500 rows, the index 1,200"):
        part = tmp_path / "half"
        write_embeddings(part, text[:500], pd.DataFrame({"caption": caps[:500]}))
        (part / "text_emb").mkdir()
        np.save(part / "text_emb" / "text_emb_0.npy", text[:500])
        build(tmp_path / "idx", text_emb=[part])
    with pytest.raises(MemlabError, match=r"cannot read .*text_emb_0\.npy as a \.npy array"):  # (before: "a bug")
        (part / "text_emb" / "text_emb_0.npy").write_bytes(b"\x93NUMPY garbage")
        build(tmp_path / "idx", text_emb=[part])
    np.save(tmp_path / "idx" / "captions" / "rows.npy", np.arange(1000)[::-1])
    with pytest.raises(IndexMismatchError, match="captions/rows.npy"):
        TrainingIndex.load(tmp_path / "idx")
    np.save(tmp_path / "idx" / "captions" / "rows.npy", np.arange(1000) * 5)  # past the items, even if resealed
    with pytest.raises(MemlabError, match="not item rows"):
        CaptionVectors.load(TrainingIndex.load(tmp_path / "idx", verify=False))


def test_a_caption_entry_pointing_outside_the_index_is_refused(tmp_path):
    from memlab.errors import MemlabError
    from memlab.validate import check_manifest

    m = {"item_count": 1, "descriptors": {"clip": {"threshold": {"value": 0.5}, "factory": "Flat",
                                                   "files": {"vectors": "v.npy", "background": "b.npy"}}},
         "default_descriptor": "clip", "metadata": "items.parquet", "files": {"x.npy": "0"},
         "captions": {"descriptor": "clip", "count": 1, "items": 1, "dim": 4, "factory": "Flat",
                      "files": {"vectors": "../x.npy", "rows": "r.npy", "index": "i.faiss"}}}
    with pytest.raises(MemlabError, match="outside"):
        check_manifest(m, tmp_path)


def test_an_addition_extends_the_caption_vectors_as_a_build_anew_would(tmp_path, capsys):
    """An addition keeps the old items' caption vectors and appends those of the captions it brings (repeated
    captions keep their first row): from the new embeddings' text_emb parts at once; without parts, the command it
    names embeds those captions alone. Either way: the rows, vectors and answers of a build anew."""
    import shutil

    from index_builder.__main__ import main
    from memlab.captions import CaptionVectors, build
    from memlab.embeddings import write_embeddings
    from memlab.index import TrainingIndex

    def caption_of(i):  # the added rows repeat some earlier captions
        return i - 300 if 600 <= i < 900 and i % 2 == 0 else i - 500 if i >= 900 and i % 3 == 0 else i

    text = clustered(1000, 768, 0, seed=2)
    of = np.array([caption_of(i) for i in range(1000)])
    for name, rows in (("emb", range(0, 600)), ("new", range(600, 900)), ("bare", range(900, 1000))):
        src = write_embeddings(tmp_path / name, clustered(len(rows), 768, 0, seed=len(rows)),
                               pd.DataFrame({"caption": [f"caption {of[i]}" for i in rows]}))
        if name != "bare":
            (src / "text_emb").mkdir()
            np.save(src / "text_emb" / "text_emb_0.npy", text[of[rows.start:rows.stop]])
    idx = tmp_path / "idx"
    assert main(["--embeddings", str(tmp_path / "emb"), "--descriptor", "clip", "--out", str(idx)]) == 0
    assert CaptionVectors.load(TrainingIndex.load(idx)).entry["count"] == 600
    # the new embeddings came with text_emb: extended at once, 150 captions new to the index
    capsys.readouterr()
    assert main(["add", "--index", str(idx), "--embeddings", str(tmp_path / "new")]) == 0
    assert "the 600 kept, 150 added" in capsys.readouterr().err
    kept = CaptionVectors.load(TrainingIndex.load(idx))
    anew = tmp_path / "anew"
    shutil.copytree(idx, anew)
    build(anew, text_emb=[tmp_path / "emb", tmp_path / "new"])  # every row's parts: built anew
    fresh = CaptionVectors.load(TrainingIndex.load(anew))
    assert kept.entry["count"] == fresh.entry["count"] == 750 and kept.entry["items"] == 900
    assert np.array_equal(kept.rows, fresh.rows) and np.array_equal(kept.vectors, fresh.vectors)
    for i in (5, 601, 602, 750, 899):
        assert kept.search(text[of[i]], k=3)[0].tolist() == fresh.search(text[of[i]], k=3)[0].tolist()
        assert kept.search(text[of[i]], k=1)[0][0] == min(i, of[i])  # a caption's first row
    # these came without: the old vectors stay (not searched: they miss the new items), the command named
    capsys.readouterr()
    assert main(["add", "--index", str(idx), "--embeddings", str(tmp_path / "bare")]) == 0
    assert "embeds the added captions alone" in capsys.readouterr().err
    assert CaptionVectors.load(TrainingIndex.load(idx)) is None
    asked = []

    def embed(caps):
        asked.extend(caps)
        return text[[int(c.split()[1]) for c in caps]]

    build(idx, embed=embed)
    assert len(asked) == 66 and set(asked) == {f"caption {i}" for i in range(900, 1000) if i % 3}
    shutil.rmtree(anew)
    shutil.copytree(idx, anew)
    m = json.loads((anew / "manifest.json").read_text())
    m.pop("captions")
    (anew / "manifest.json").write_text(json.dumps(m))
    build(anew, embed=lambda caps: text[[int(c.split()[1]) for c in caps]])
    kept, fresh = (CaptionVectors.load(TrainingIndex.load(p)) for p in (idx, anew))
    assert kept.entry["count"] == 816 and np.array_equal(kept.rows, fresh.rows)
    assert np.array_equal(kept.vectors, fresh.vectors)
    with pytest.raises(Exception, match="hold 900 rows, the index 1,000"):
        build(idx, text_emb=[tmp_path / "emb", tmp_path / "new"])


def test_embedding_shards_with_a_clip_writes_the_captions_text_vectors_beside_the_images(tiny_clip_name, tmp_path):
    """``index_builder embed`` with a CLIP writes text_emb/text_emb_{i}.npy as clip-retrieval does: row for row with
    img_emb and the metadata, the text tower's vectors of each sample's caption."""
    from safetensors.torch import save_file

    from index_builder.embed import embed_shard
    from memlab.descriptors import create_descriptor
    from tests.test_ondisk import _shards

    weights = tmp_path / "tiny-clip.safetensors"
    save_file(create_descriptor("clip", model=tiny_clip_name, pretrained=None, device="cpu").net.state_dict(),
              str(weights))
    options = {"model": tiny_clip_name, "pretrained": str(weights), "device": "cpu"}
    shards = _shards(tmp_path / "shards", n_shards=1, per=7)
    embed_shard(str(shards / "00000.tar"), 0, str(tmp_path / "emb"), "clip", options, batch_size=3)
    meta = pd.read_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    text = np.load(tmp_path / "emb" / "text_emb" / "text_emb_0.npy")
    assert text.shape[0] == len(meta) == len(np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy")) == 7
    want = create_descriptor("clip", **options).embed_text(meta["caption"].tolist())
    assert np.allclose(text.astype(np.float32), want, atol=2e-3)
    embed_shard(str(shards / "00000.tar"), 1, str(tmp_path / "emb"), "pixel", {}, batch_size=3)
    assert not (tmp_path / "emb" / "text_emb" / "text_emb_1.npy").exists()  # no text tower, no text vectors


def test_the_app_refuses_bad_caption_vectors_with_one_line(tiny_world, tmp_path):
    """An index whose caption vectors name rows past its items (resealed, so its checksums hold) stops the app at
    start with one error line, as every other bad index does."""
    import shutil

    import app
    from memlab.indexfiles import seal_files

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    idx = world / "index"
    (idx / "captions").mkdir()
    np.save(idx / "captions" / "text.f16.npy", np.ones((2, 4), np.float16))
    np.save(idx / "captions" / "rows.npy", np.array([0, 10_000]))
    from memlab.indexfiles import faiss_module
    flat = faiss_module().IndexFlatIP(4)
    flat.add(np.ones((2, 4), np.float32))
    faiss_module().write_index(flat, str(idx / "captions" / "text.faiss"))
    m = json.loads((idx / "manifest.json").read_text())
    m["captions"] = {"descriptor": m["default_descriptor"], "count": 2, "items": m["item_count"], "dim": 4,
                     "factory": "Flat", "files": {"vectors": "captions/text.f16.npy", "rows": "captions/rows.npy",
                                                  "index": "captions/text.faiss"}}
    (idx / "manifest.json").write_text(json.dumps(m))
    seal_files(idx, ["captions/text.f16.npy", "captions/rows.npy", "captions/text.faiss"])
    with pytest.raises(SystemExit, match="error: .*caption rows are not item rows"):
        app.main(["--world", str(world), "--device", "cpu"])
