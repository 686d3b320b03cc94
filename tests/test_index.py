"""The on-disk index: round trip, exact re-rank, manifest checks, atomic writes."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import synthetic_images
from memlab.descriptors import create_descriptor
from memlab.errors import IndexMismatchError, MemlabError
from memlab.index import TrainingIndex, build_index, calibrate_agreement
from memlab.match import descriptor_for_index, match_images


def _build(out, n=40, factory="Flat", dup_of=None):
    ims = synthetic_images(n)
    if dup_of is not None:
        ims.append(ims[dup_of].copy())
    items = pd.DataFrame({"id": range(len(ims)), "caption": [f"field {i}" for i in range(len(ims))],
                          "file": [f"{i}.png" for i in range(len(ims))]})
    build_index(out, items, lambda i: ims[i], [create_descriptor("pixel")], factory=factory, calib_n=20)
    return ims


def test_round_trip_and_manifest(tmp_path):
    ims = _build(tmp_path / "idx", dup_of=3)
    idx = TrainingIndex.load(tmp_path / "idx")
    m = idx.manifest
    assert m["item_count"] == 41 and m["default_descriptor"] == "pixel" and m["created"]
    info = idx.descriptor_info("pixel")
    assert info["model"] == "pixels-16x16" and info["dim"] == 768 and info["factory"] == "Flat"
    thr = info["threshold"]
    assert thr["source"] == "calibrated" and 0 < thr["value"] < 1 and thr["recall"] is not None
    # an exact (Flat) index stores its vectors once: its FAISS index is built from them at load
    assert set(m["files"]) == {"items.parquet", "pixel.npy", "pixel.background.npy",
                               "pixel.background_distinct.npy", "words.vocab.parquet", "words.rows.npy",
                               "words.starts.npy"}
    assert info["files"]["index"] is None and idx.faiss_index("pixel").ntotal == 41
    # the planted duplicate is grouped with its original and counted
    assert idx.items.loc[40, "group"] == idx.items.loc[3, "group"]
    assert idx.items.loc[3, "duplicates"] == 1 and idx.items.loc[5, "duplicates"] == 0
    d = descriptor_for_index(idx)
    res = match_images(idx, d, [ims[7]], ["q"], k=3)
    q = res["queries"][0]
    assert q["matches"][0]["id"] == 7 and q["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert q["replicated"] and q["threshold"] == thr["value"]
    assert res["descriptor"]["model"] == "pixels-16x16" and res["descriptor"]["preset"]


def test_copy_top1_counts_a_duplicate_of_the_original_as_found(tmp_path):
    """With duplicates as explicit rows, a copy's top-1 may be any row of its image."""
    ims = synthetic_images(20)
    items = pd.DataFrame({"id": range(40), "caption": [f"field {i % 20}" for i in range(40)],
                          "file": [f"{i % 20}.png" for i in range(40)]})
    build_index(tmp_path / "d", items, lambda i: ims[i % 20], [create_descriptor("pixel")], calib_n=40)
    thr = TrainingIndex.load(tmp_path / "d").descriptor_info("pixel")["threshold"]
    assert thr["copy_top1"] >= 0.9  # counted by row it would be about one half


def test_ivf_factory_reranks_exactly(tmp_path):
    ims = _build(tmp_path / "ivf", n=300, factory="IVF4,SQ8")
    _build(tmp_path / "flat", n=300)
    a, b = TrainingIndex.load(tmp_path / "ivf"), TrainingIndex.load(tmp_path / "flat")
    q = create_descriptor("pixel").embed(ims[:10])
    a.nprobe = 4  # every list: the candidates are the whole set, so the re-rank must be exact
    sa, ra = a.search(q, k=5, rerank=300)
    sb, rb = b.search(q, k=5)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_allclose(sa, sb, atol=1e-5)  # exact scores after the re-rank


def test_load_refuses_mismatch(tmp_path):
    _build(tmp_path / "idx")
    p = tmp_path / "idx"
    v = np.load(p / "pixel.npy")
    np.save(p / "pixel.npy", v[:-1])
    with pytest.raises(IndexMismatchError, match="checksum"):
        TrainingIndex.load(p)
    (p / "pixel.npy").unlink()
    with pytest.raises(IndexMismatchError, match="missing"):
        TrainingIndex.load(p)
    with pytest.raises(MemlabError, match="not a memlab index"):
        TrainingIndex.load(tmp_path)


def test_load_refuses_row_count_mismatch(tmp_path):
    _build(tmp_path / "idx")
    p = tmp_path / "idx"
    m = json.loads((p / "manifest.json").read_text())
    m["item_count"] = 39
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="rows"):
        TrainingIndex.load(p)


def test_atomic_write_keeps_old_index_on_crash(tmp_path):
    _build(tmp_path / "idx")
    before = (tmp_path / "idx" / "manifest.json").read_text()
    items = pd.DataFrame({"id": [0, 1], "caption": ["a", "b"], "file": ["a", "b"]})

    def boom(i):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        build_index(tmp_path / "idx", items, boom, [create_descriptor("pixel")])
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    assert TrainingIndex.load(tmp_path / "idx").manifest["item_count"] == 40
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no half-written folder left behind


def test_query_descriptor_must_match_index(tmp_path):
    _build(tmp_path / "idx")
    idx = TrainingIndex.load(tmp_path / "idx")
    with pytest.raises(MemlabError, match="built with"):
        idx.check_descriptor(create_descriptor("pixel", size=8))
    with pytest.raises(MemlabError, match="has no 'sscd' descriptor"):
        idx.descriptor_info("sscd")


def test_published_threshold_for_sscd(tmp_path, sscd_cache, monkeypatch):
    monkeypatch.setenv("MEMLAB_CACHE", str(sscd_cache))
    ims = synthetic_images(30)
    items = pd.DataFrame({"id": range(30), "caption": [""] * 30, "file": [f"{i}" for i in range(30)]})
    build_index(tmp_path / "s", items, lambda i: ims[i],
                [create_descriptor("pixel"), create_descriptor("sscd", device="cpu")], calib_n=10)
    idx = TrainingIndex.load(tmp_path / "s")
    t = idx.threshold("sscd")
    assert (t["value"], t["high"], t["source"]) == (0.5, 0.75, "published")
    assert "Somepalli" in t["citation"] and t["recall"] is not None
    assert idx.threshold("pixel")["source"] == "calibrated"
    assert idx.default_descriptor == "pixel"


def test_calibration_and_background_hold_one_row_per_group(tmp_path):
    """Planted duplicate rows must not weight the calibration sample or the distinct background."""
    ims = synthetic_images(30)
    files = [f"{i}.png" for i in range(30)] + ["0.png"] * 20 + ["1.png"] * 10  # item 0 x21, item 1 x11
    items = pd.DataFrame({"id": range(len(files)), "caption": ["c"] * len(files), "file": files})
    build_index(tmp_path / "d", items, lambda i: ims[int(files[i].split(".")[0])], [create_descriptor("pixel")],
                calib_n=500)
    idx = TrainingIndex.load(tmp_path / "d")
    info = idx.descriptor_info("pixel")
    thr = info["threshold"]
    reps = idx.items[idx.items["representative"]]
    assert thr["n_groups"] == len(reps) == idx.items["group"].nunique() == 30
    assert thr["n_copies"] == 30 and thr["n_background"] == 30  # one row per group, not 60 rows
    assert reps["group"].is_unique
    bg_all, bg_distinct = idx.background("pixel"), idx.background("pixel", distinct=True)
    assert len(bg_all) == 60 and len(bg_distinct) == 30
    # over all rows the planted copies score 1.0 against each other; over distinct items none does
    assert np.nanpercentile(bg_all, 95) == pytest.approx(1.0, abs=1e-5)
    assert np.nanmax(bg_distinct) < 0.999 and info["background_distinct"]["p95"] < info["background"]["p95"]


def test_ground_truth_copies_are_held_out_and_scored(tmp_path):
    from memlab.distort import blur

    ims = synthetic_images(40)
    items = pd.DataFrame({"id": range(40), "caption": ["c"] * 40, "file": [f"{i}.png" for i in range(40)]})
    rows = np.arange(10)
    build_index(tmp_path / "g", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=500,
                ground_truth={"blur": (rows, [blur(ims[i], 1.0) for i in rows]),
                              "others": (rows, [ims[(i + 20) % 40] for i in rows])})
    thr = TrainingIndex.load(tmp_path / "g").threshold("pixel")
    assert thr["n_copies"] == 30  # the 10 ground-truth items are not in the calibration sample
    gt = thr["ground_truth"]
    assert gt["blur"]["n"] == 10 and gt["blur"]["copy_top1"] == 1.0 and gt["blur"]["recall"] >= 0.9
    assert gt["others"]["copy_top1"] == 0.0 and gt["others"]["recall"] <= 0.1


def test_rows_of_one_origin_count_once_in_calibration(tmp_path):
    """Crops of one photograph overlap: the distinct background must not pair them with each other."""
    base = synthetic_images(1, size=128, seed=9)[0]
    crops = [base.crop((x, x, x + 96, x + 96)).resize((64, 64)) for x in (0, 8, 16, 24)]
    ims = synthetic_images(30) + crops
    items = pd.DataFrame({"id": range(34), "caption": ["c"] * 34, "file": [f"{i}.png" for i in range(34)],
                          "source": [""] * 30 + ["photo"] * 4})
    build_index(tmp_path / "a", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=500)
    build_index(tmp_path / "b", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=500, origin="source")
    a, b = TrainingIndex.load(tmp_path / "a"), TrainingIndex.load(tmp_path / "b")
    assert a.threshold()["n_groups"] == 34 and b.threshold()["n_groups"] == 31
    assert b.items["representative"].sum() == 31 and b.items["group"].nunique() == 34  # duplicates unchanged
    # overlapping crops are each other's nearest items: with them the distinct background's top is higher
    assert np.max(a.background(distinct=True)) > np.max(b.background(distinct=True))
    with pytest.raises(MemlabError, match="origin column"):
        build_index(tmp_path / "c", items, lambda i: ims[i], [create_descriptor("pixel")], origin="nope")


def test_any_tar_of_images_with_txt_or_json_captions_is_a_source(tmp_path):
    """Not only img2dataset's shards: a hand-made .tar (png + txt, jpg + json) indexes with its captions."""
    import io
    import tarfile

    from PIL import Image

    from index_builder.build import main as build_main
    from memlab.index import TrainingIndex

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def image(colour, fmt):
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), colour).save(buf, fmt)
        return buf.getvalue()

    with tarfile.open(tmp_path / "mine.tar", "w") as tar:
        add(tar, "a.png", image("red", "PNG"))
        add(tar, "a.txt", "a red square".encode())
        add(tar, "b.jpg", image("blue", "JPEG"))
        add(tar, "b.json", json.dumps({"caption": "a blue square", "url": "http://example.org/b.jpg"}).encode())
        add(tar, "c.txt", b"a caption without an image")
    assert build_main(["--shards", str(tmp_path / "mine.tar"), "--descriptor", "pixel", "--calib-n", "2",
                       "--out", str(tmp_path / "idx")]) == 0
    items = TrainingIndex.load(tmp_path / "idx").items
    assert items["caption"].tolist() == ["a red square", "a blue square"]
    assert items["url"].tolist() == ["", "http://example.org/b.jpg"]


def test_a_template_copy_is_told_by_where_it_agrees_with_its_match(tmp_path):
    """Partial copies (issue 32): pictures of one template (a patterned frame around changing content) count
    as one source; the index calibrates the agreement share's threshold on distinct items, and an upload with
    the template's frame around new content is a ``template copy`` with its mask on the frame, while a
    distinct image is not."""
    from PIL import Image

    from memlab.metrics import agreement_mask

    rng = np.random.default_rng(3)
    frame = np.kron((rng.random((32, 32, 3)) * 255).astype(np.uint8), np.ones((2, 2, 1), np.uint8))  # a texture

    def template_picture(inner):
        a = frame.copy()
        a[16:48, 16:48] = np.asarray(inner.resize((32, 32)))
        return Image.fromarray(a)
    inners = synthetic_images(8, seed=5)
    ims = synthetic_images(30) + [template_picture(im) for im in inners[:6]]
    root = tmp_path / "images"
    root.mkdir()
    for i, im in enumerate(ims):
        im.save(root / f"{i}.png")
    items = pd.DataFrame({"id": range(36), "caption": ["c"] * 36, "file": [f"{i}.png" for i in range(36)],
                          "origin": [""] * 30 + ["template"] * 6})
    build_index(tmp_path / "t", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=500,
                origin="origin", image_root=str(root))
    cal = TrainingIndex.load(tmp_path / "t").manifest["agreement"]
    assert cal["n"] == 31 and 0 <= cal["threshold"] < 0.75  # 30 distinct images + the template, counted once
    # an index built before it gets the same calibration from its stored vectors, groups and images
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    (tmp_path / "t" / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "agreement"}))
    assert calibrate_agreement(tmp_path / "t") == cal
    # one calibrated on another agreement (raw pixels in 16-px windows, before issue 32's detail) is not used:
    # uploads get no partial-copy verdict from it until `python -m index_builder agreement` calibrates again
    old = {**cal, "window": 16, "cutoff": 0.8, "min_std": 4.0, "detail_sigma": 0.0, "threshold": 0.0}
    (tmp_path / "t" / "manifest.json").write_text(json.dumps({**manifest, "agreement": old}))
    stale = TrainingIndex.load(tmp_path / "t")
    first = match_images(stale, descriptor_for_index(stale), [template_picture(inners[7])], k=3)["queries"][0]
    assert "agreement" not in first and first["verdict"] != "template copy"
    from index_builder.__main__ import main as index_builder

    assert index_builder(["agreement", "--index", str(tmp_path / "t")]) == 0
    assert index_builder(["agreement", "--index", str(tmp_path / "nowhere")]) == 2
    index = TrainingIndex.load(tmp_path / "t")
    assert index.manifest["agreement"] == cal
    copy, other = template_picture(inners[7]), synthetic_images(1, seed=11)[0]
    res = match_images(index, descriptor_for_index(index), [copy, other], k=3)
    got, miss = res["queries"]
    assert int(got["matches"][0]["id"]) >= 30 and got["verdict"] in ("template copy", "replicated")
    mask = np.asarray(got["agreement"]["mask"])
    frame_windows = np.ones((8, 8), bool)
    frame_windows[2:6, 2:6] = False
    # the frame agrees; inside, only windows at its edge may (the frame's edge is detail both images share)
    assert mask.shape == (8, 8) and mask[frame_windows].all() and not mask[3:5, 3:5].any()
    assert 0.75 <= got["agreement"]["share"] <= 0.75 + 12 / 64 and got["agreement"]["share"] > cal["threshold"]
    assert miss["verdict"] != "template copy" and miss["agreement"]["share"] <= cal["threshold"]
    # the app's Match shows the pair with the agreeing windows in their own colours: the frame, not the content
    # inside, which fades
    from memlab.app.pictures import FADED, agreement_pair

    pair = np.asarray(agreement_pair(copy, index.image_path(got["matches"][0]["row"]), got), np.float64)
    plain = np.asarray(copy.resize((64, 64)).resize((192, 192), Image.NEAREST), np.float64)
    shown = pair[4:196, 4:196]  # the upload's half, 3x
    assert np.abs(shown[:40] - plain[:40]).mean() < 2.0  # the frame's top (its edge with the content outlined below)
    inside, was = shown[72:120, 72:120], plain[72:120, 72:120]
    assert np.abs(inside - FADED).mean() < 0.5 * np.abs(was - FADED).mean()
    # the metric itself: a colour cast leaves agreement whole; a window without detail never agrees, and
    # smooth colour alone (the same blob under other texture) is not agreement
    a = np.random.default_rng(4).uniform(0, 255, (64, 64, 3))  # detail everywhere
    assert agreement_mask(a, a * [0.6, 1.2, 0.9] + 20).all()
    flat = a.copy()
    flat[:16, :16] = 128
    same = agreement_mask(flat, flat)
    assert not same[0, 0] and same[2:].all() and same[:, 2:].all()
    yy, xx = np.mgrid[0:64, 0:64]
    blob = 200.0 * np.exp(-((xx - 32.0) ** 2 + (yy - 32.0) ** 2) / (2 * 12.0 ** 2))[..., None]
    b1, b2 = (blob + np.random.default_rng(s).normal(0, 6, (64, 64, 3)) for s in (1, 2))
    assert agreement_mask(b1, b2, sigma=0).mean() >= 0.25 and agreement_mask(b1, b2).mean() < 0.05


def test_an_index_of_another_rendering_embeds_it_compares_it_and_names_it(tmp_path):
    """``build_index(indexed=...)`` (the built-in world indexes each image as its VAE returns it): the vectors are
    the rendering's, the distinct background compares the renderings with each other, the images kept stay the
    originals, and the descriptor's entry, a match's descriptor summary and the app's label name it."""
    from memlab.distort import blur
    from memlab.match import descriptor_summary
    from memlab.metrics import background

    ims = synthetic_images(30)
    rendered = [blur(im, 2.0) for im in ims]
    items = pd.DataFrame({"id": range(30), "caption": ["c"] * 30, "file": [f"{i}.png" for i in range(30)]})
    d = create_descriptor("pixel")
    build_index(tmp_path / "r", items, lambda i: ims[i], [d], calib_n=500,
                indexed=(lambda i: rendered[i], "each image blurred by 2 px"))
    build_index(tmp_path / "o", items, lambda i: ims[i], [d], calib_n=500)
    idx, plain = TrainingIndex.load(tmp_path / "r"), TrainingIndex.load(tmp_path / "o")
    v = d.embed(rendered)
    assert np.allclose(idx.vectors("pixel"), v, atol=1e-6)
    assert not np.allclose(plain.vectors("pixel"), v, atol=1e-3)
    reps = idx.items["representative"].to_numpy()
    assert np.allclose(idx.background("pixel", distinct=True), background(v, groups=idx.items["group"].to_numpy())[reps],
                       atol=1e-6)
    assert idx.descriptor_info("pixel")["indexed"] == "each image blurred by 2 px"
    assert "indexed" not in plain.descriptor_info("pixel")
    assert descriptor_summary(idx, "pixel")["indexed"] == "each image blurred by 2 px"
    # a blurred copy of a training image scores higher against the blurred rendering than against the original
    q = d.embed([blur(ims[5], 2.0)])[0]
    assert float(q @ idx.vectors("pixel")[5]) > float(q @ plain.vectors("pixel")[5])


def test_a_stopped_build_resumes_at_the_batches_it_lacks_and_ends_in_the_same_index(tmp_path):
    """A folder of images takes hours to embed on a CPU: each batch's vectors are kept beside the output until
    the index is written, so a build stopped in its third batch loads only the rest when started again."""
    ims = synthetic_images(14)
    items = pd.DataFrame({"id": range(14), "caption": [f"field {i}" for i in range(14)],
                          "file": [f"{i}.png" for i in range(14)]})
    d = [create_descriptor("pixel")]
    build_index(tmp_path / "whole", items, lambda i: ims[i], d, batch_size=4, calib_n=14)
    calls = []

    def stops(i):
        if i == 9:
            raise KeyboardInterrupt
        calls.append(i)
        return ims[i]

    def build(out, rows=items, load=stops, files="as first seen"):
        build_index(tmp_path / out, rows, load, d, batch_size=4, calib_n=14, resume={"files": files})

    with pytest.raises(KeyboardInterrupt):
        build("idx")
    assert sorted(p.name for p in (tmp_path / ".idx.embed").iterdir()) == ["0000000000.npz", "0000000004.npz",
                                                                           "job.json"]
    calls.clear()
    build("idx", load=lambda i: calls.append(i) or ims[i])
    assert calls[:6] == [8, 9, 10, 11, 12, 13]  # the embedding pass, then calibration's own reads
    assert not (tmp_path / ".idx.embed").exists()
    a, b = TrainingIndex.load(tmp_path / "whole"), TrainingIndex.load(tmp_path / "idx")
    assert np.array_equal(a.vectors(), b.vectors()) and a.threshold() == b.threshold()
    # other items, or the same files changed since (the caller's ``resume``), start over
    for changed in ({"rows": items.assign(caption="other")}, {"files": "changed since"}):
        with pytest.raises(KeyboardInterrupt):
            build("idx2")
        calls.clear()
        build("idx2", **{"load": lambda i: calls.append(i) or ims[i], **changed})
        assert calls[:4] == [0, 1, 2, 3]
    with pytest.raises(KeyboardInterrupt):  # without ``resume`` nothing is kept
        build_index(tmp_path / "idx3", items, stops, d, batch_size=4, calib_n=14)
    assert not (tmp_path / ".idx3.embed").exists()


def _stopped_then_resumed(build, monkeypatch, change=None):
    """Stop ``build()`` at its fourth image read, apply ``change``, build again: (the names read before the stop,
    the names read after)."""
    from memlab import match

    real, seen = match.load_image, []

    def stops(path):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(match, "load_image", stops)
    with pytest.raises(KeyboardInterrupt):
        build()
    first, seen[:] = list(seen), []
    if change:
        change(first)
    monkeypatch.setattr(match, "load_image", lambda path: seen.append(Path(path).name) or real(path))
    build()
    return first, seen


def test_a_folder_build_resumes_only_over_unchanged_files(image_folder, tmp_path, monkeypatch):
    """index_builder's folder build resumes a stopped embedding where the listed files are as they were; a file
    changed since (its size or time) starts it over."""
    from memlab import sources

    def build():
        sources.build_images(image_folder, tmp_path / "idx", ["pixel"], batch_size=2, calib_n=5)

    first, again = _stopped_then_resumed(build, monkeypatch)
    assert again[0] == first[2]  # the finished batch (2 images) was not read again
    assert not (tmp_path / ".idx.embed").exists()
    first, again = _stopped_then_resumed(build, monkeypatch, lambda first: os.utime(image_folder / first[0], ns=(1, 1)))
    assert again[:2] == first[:2]  # a listed file changed since the stop: from the start


def test_a_shards_build_resumes_though_its_samples_are_staged_anew(tmp_path, monkeypatch):
    from memlab import sources
    from tests.test_ondisk import _shards

    shards = _shards(tmp_path / "shards", n_shards=2, per=5)

    def build():
        sources.build_sources([str(shards)], tmp_path / "idx", descriptors=["pixel"], batch_size=2, calib_n=5)

    first, again = _stopped_then_resumed(build, monkeypatch)
    assert again[0] == first[2]
    first, again = _stopped_then_resumed(build, monkeypatch, lambda first: os.utime(shards / "00001.tar", ns=(1, 1)))
    assert again[:2] == first[:2]  # a shard changed since the stop: from the start


def test_a_listing_source_resumes_only_over_unchanged_images(image_folder, tmp_path, monkeypatch):
    """A CSV listing as a training source: its images are staged as hard links, which keep their originals'
    times, so an image changed since a stop starts the embedding over though the listing itself did not change."""
    from memlab import sources

    def build():
        sources.build_sources([str(image_folder / "captions.csv")], tmp_path / "idx", descriptors=["pixel"],
                              batch_size=2, calib_n=5)

    first, again = _stopped_then_resumed(build, monkeypatch)
    assert again[0] == first[2]
    first, again = _stopped_then_resumed(build, monkeypatch, lambda first: os.utime(image_folder / "img00.png",
                                                                                    ns=(1, 1)))
    assert again[:2] == first[:2]
