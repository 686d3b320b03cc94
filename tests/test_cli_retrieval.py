"""The two command lines of retrieval: index_builder and memlab match."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, assert_same, synthetic_images
from index_builder.build import main as build_main
from memlab.cli import main as memlab_main


def _cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_help():
    for args in (["-m", "index_builder", "--help"], ["-m", "memlab", "match", "--help"]):
        r = _cli(*args)
        assert r.returncode == 0 and "--images" in r.stdout


def test_build_skips_corrupt_and_match_json(image_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    assert build_main(["--images", str(image_folder), "--captions", str(image_folder / "captions.csv"),
                       "--out", str(out), "--calib-n", "10"]) == 0
    err = capsys.readouterr().err
    assert "14 listed, 13 readable, 1 skipped" in err and "broken.png" in err
    q = tmp_path / "q.png"
    synthetic_images(6)[5].save(q)
    assert memlab_main(["match", "--index", str(out), "--images", str(q), "--k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"descriptor", "queries", "summary"}
    assert {"name", "model", "preset", "threshold"} <= set(res["descriptor"])
    qq = res["queries"][0]
    assert qq["image"] == str(q) and len(qq["matches"]) == 3 and isinstance(qq["replicated"], bool)
    m = qq["matches"][0]
    assert {"id", "file", "caption", "score", "duplicates"} <= set(m)
    assert m["file"] == "img05.png" and m["id"] == 105 and qq["replicated"]
    # the first image and its exact copy share a group (one duplicate each): listed once, by either row, and
    # the next match is another image (matches are near-duplicate groups, not rows)
    assert memlab_main(["match", "--index", str(out), "--images", str(image_folder / "dup.png"),
                        "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["queries"][0]["matches"][:2]
    assert top[0]["file"] in {"img00.png", "dup.png"} and top[0]["duplicates"] == 1
    assert top[1]["file"] not in {"img00.png", "dup.png"} and top[1]["group"] != top[0]["group"]
    # --images given twice matches both (the second replaced the first), and the summary counts them with their interval
    assert memlab_main(["match", "--index", str(out), "--images", str(q), "--images", str(image_folder / "dup.png"),
                        "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [x["image"] for x in both["queries"]] == [str(q), str(image_folder / "dup.png")]
    iv = both["summary"]["replication_interval"]
    assert (iv["k"], iv["n"]) == (sum(x["replicated"] for x in both["queries"]), 2) and iv["method"] == "Wilson score"
    s = res["summary"]
    assert {"p5", "p50", "p95"} <= set(s["calibration"]["copy_percentiles"])
    assert {"load_s", "embed_s", "search_s"} <= set(s["timing"])
    # the readable table names descriptor, preset and threshold
    assert memlab_main(["match", "--index", str(out), "--images", str(q)]) == 0
    table = capsys.readouterr().out
    assert "preset" in table and "threshold" in table and "REPLICATED" in table


def test_folder_without_captions(image_folder, tmp_path, capsys):
    (image_folder / "captions.csv").unlink()
    assert build_main(["--images", str(image_folder), "--out", str(tmp_path / "i"), "--calib-n", "5"]) == 0
    assert "13 readable, 1 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("args, msg", [
    (["match", "--index", "/nonexistent", "--images", "x.png"], "not a memlab index"),
    (["match", "--index", "IDX", "--images", "/nonexistent.png"], "does not exist"),
    (["match", "--index", "IDX", "--images", "CORRUPT"], "cannot read image"),
    (["match", "--index", "IDX", "--images", "GOOD", "--descriptor", "sscd"], "has no 'sscd'"),
    (["match", "--index", "IDX", "--images", "GOOD", "--k", "0"], "--k"),
])
def test_match_errors_are_clear(args, msg, image_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    build_main(["--images", str(image_folder), "--out", str(out), "--calib-n", "5"])
    capsys.readouterr()
    subst = {"IDX": str(out), "CORRUPT": str(image_folder / "broken.png"),
             "GOOD": str(image_folder / "img01.png")}
    assert memlab_main([subst.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and msg in err and "Traceback" not in err


def test_builder_errors(tmp_path, capsys):
    assert build_main(["--images", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "c.csv").write_text("path,text\nx.png,hello\n")
    assert build_main(["--images", str(tmp_path), "--captions", str(tmp_path / "c.csv"),
                       "--out", str(tmp_path / "o")]) == 2
    assert "no 'file' column" in capsys.readouterr().err


def test_a_folder_is_matched_a_chunk_at_a_time_with_the_whole_answer(image_folder, tmp_path, monkeypatch):
    """``memlab match`` over files holds one chunk of decoded images, not the folder, and answers as matching them
    all at once (floats up to float32 rounding: a CPU's vector kernels may sum a batch of 3 and one of 7 in
    another order); a bad file anywhere is refused before any image is embedded."""
    from memlab import match
    from memlab.index import TrainingIndex

    assert build_main(["--images", str(image_folder), "--out", str(tmp_path / "idx"), "--calib-n", "10"]) == 0
    idx = TrainingIndex.load(tmp_path / "idx")
    d = match.descriptor_for_index(idx)
    files = sorted(image_folder.glob("img*.png"))[:7]
    whole = match.match_images(idx, d, [match.load_image(f) for f in files], [str(f) for f in files], k=3)
    seen = []
    real = match.query_vectors
    monkeypatch.setattr(match, "query_vectors", lambda i, de, ims: seen.append(len(ims)) or real(i, de, ims))
    chunked = match.match_paths(idx, d, files, k=3, chunk=3)
    assert seen == [3, 3, 1]
    for key in ("queries", "descriptor"):
        assert_same(chunked[key], whole[key], 1e-5, key)
    assert chunked["summary"]["replication_rate"] == whole["summary"]["replication_rate"]
    cut = tmp_path / "cut.png"  # a PNG whose header reads but whose data stops
    cut.write_bytes(files[0].read_bytes()[:-40])
    seen.clear()
    with pytest.raises(match.MemlabError, match="cut.png"):
        match.match_paths(idx, d, files + [cut], k=3, chunk=3)
    assert seen == []


def test_a_folder_from_elsewhere_can_leave_its_unreadable_files_out(image_folder, tmp_path, capsys):
    """``--skip-unreadable``: the files the check refuses (a cut PNG, text named .png) are left out and named with
    why, the rest are matched as a folder without them is; without the flag the first stops the run before any
    work; a folder of nothing readable is an error either way."""
    import shutil

    assert build_main(["--images", str(image_folder), "--out", str(tmp_path / "idx"), "--calib-n", "10"]) == 0
    good, mixed = tmp_path / "good", tmp_path / "mixed"
    good.mkdir()
    for f in sorted(image_folder.glob("img*.png"))[:3]:
        shutil.copy(f, good / f.name)
    shutil.copytree(good, mixed)
    (mixed / "cut.png").write_bytes((good / "img00.png").read_bytes()[:-40])
    (mixed / "notes.png").write_text("not an image")
    base = ["match", "--index", str(tmp_path / "idx"), "--k", "2", "--json", "--images"]
    assert memlab_main(base + [str(mixed)]) == 2 and "cannot read image" in capsys.readouterr().err
    assert memlab_main(base + [str(good)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert memlab_main(base + [str(mixed), "--skip-unreadable"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert [q["image"].replace("mixed", "good") for q in got["queries"]] == [q["image"] for q in want["queries"]]
    assert [q["score"] for q in got["queries"]] == pytest.approx([q["score"] for q in want["queries"]], abs=1e-5)
    assert [(s["image"], "cannot read image" in s["error"]) for s in got["skipped"]] == \
        [(str(mixed / "cut.png"), True), (str(mixed / "notes.png"), True)]
    assert "skipped 2 of 5 images that could not be read" in err
    assert memlab_main(base + [str(mixed / "cut.png"), "--skip-unreadable"]) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err


def test_a_device_the_machine_lacks_is_one_error_line_before_any_model_loads():
    import torch

    cases = [["app.py", "--device", "nonsense"], ["-m", "memlab", "run", "--prompt", "a red ball", "--device", "gpu0"],
             ["-m", "index_builder", "--images", ".", "--out", "x", "--device", "cuda:64"]]
    if not torch.cuda.is_available():
        cases.append(["-m", "memlab", "match", "--index", "x", "--images", "y", "--device", "cuda"])
    for args in cases:
        r = _cli(*args)
        assert r.returncode == 2, args
        assert "argument --device" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2  # argparse's usage line at most, then the error


def test_images_are_checked_on_threads_in_order_with_the_bad_ones_named(tmp_path, monkeypatch):
    """The folder check decodes on several threads, a block at a time: the rows kept and the files skipped (with
    their reasons) are those, in the same order, of checking one file after another."""
    import pandas as pd
    from PIL import Image

    from memlab import sources

    d = tmp_path / "imgs"
    d.mkdir()
    files = []
    for i in range(40):
        f = f"{i:02d}.png"
        if i % 7 == 3:
            (d / f).write_bytes(b"not a png")
        elif i % 11 == 5:
            pass  # listed, missing
        else:
            Image.new("RGB", (24, 24), (i * 6, 0, 0)).save(d / f)
        files.append(f)
    items = pd.DataFrame({"file": files, "id": range(len(files))})
    one = sources.check_images(d, items, lambda it, **k: it, threads=1)
    calls = []
    real = sources._check_one
    monkeypatch.setattr(sources, "_check_one", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(sources, "CHECK_BLOCK", 8)
    many = sources.check_images(d, items, lambda it, **k: it, threads=4)
    assert many[0].equals(one[0]) and many[1] == one[1] and len(calls) == len(files)
    assert [f for f, _ in one[1]] == [f for i, f in enumerate(files) if int(f[:2]) % 7 == 3 or int(f[:2]) % 11 == 5]
    assert one[0]["file"].tolist() == [f for f in files if f not in {g for g, _ in one[1]}]
    assert len(one[1]) == 9 and all(why for _, why in one[1])


def test_a_build_started_again_does_not_decode_its_images_again(image_folder, tmp_path, monkeypatch):
    """The folder check's answer waits beside the output until the build ends: a build stopped after it and started
    again over the same files skips the same file without decoding any image, and ends in the same index; a file
    changed since is checked again."""
    import os

    from memlab import index as index_module
    from memlab import sources
    from memlab.index import TrainingIndex

    out, cache = tmp_path / "idx", tmp_path / ".idx.check.json"
    args = ["--images", str(image_folder), "--captions", str(image_folder / "captions.csv"), "--out", str(out),
            "--calib-n", "10"]
    real_build = index_module.build_index

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "build_index", stopped)
    assert build_main(args) == 130  # (a stop: "interrupted")
    assert cache.is_file()
    monkeypatch.setattr(index_module, "build_index", real_build)
    monkeypatch.setattr(sources, "_check_one", lambda p: pytest.fail(f"{p} decoded again"))
    assert build_main(args) == 0
    assert not cache.is_file() and len(TrainingIndex.load(out).items) == 13
    assert TrainingIndex.load(out).manifest["source"]["skipped"] == ["broken.png"]
    monkeypatch.undo()
    monkeypatch.setattr(index_module, "build_index", stopped)
    assert build_main(args) == 130
    st = (image_folder / "img03.png").stat()
    os.utime(image_folder / "img03.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # changed since
    checked = []
    real_check = sources._check_one
    monkeypatch.setattr(sources, "_check_one", lambda p: checked.append(p.name) or real_check(p))
    assert build_main(args) == 130
    assert len(checked) == 14  # every listed file again: the listing is not what was checked


@pytest.mark.parametrize("text", ['{"key": 1, "skipped": [["a"]]', '{"key": "k", "skipped": 3}', "[]", "\udcff"])
def test_a_cut_or_foreign_check_answer_means_checking_again(image_folder, tmp_path, text):
    """``.OUT.check.json`` left cut by a kill, or written by another version: the check runs again, whole."""
    import pandas as pd

    from memlab import sources

    cache = tmp_path / ".idx.check.json"
    cache.write_text(text, errors="surrogateescape")
    items = pd.DataFrame({"file": sorted(p.name for p in image_folder.glob("*.png"))})
    kept, skipped = sources.checked_images(image_folder, items, lambda it, **k: it, cache)
    assert [f for f, _ in skipped] == ["broken.png"] and len(kept) == len(items) - 1
    assert sources.checked_images(image_folder, items, lambda it, **k: pytest.fail("checked again"), cache)[1] == \
        skipped  # (and now kept for the next start)


def test_the_printed_table_gives_the_template_threshold_only_where_the_template_check_applies(capsys):
    """`memlab match`'s table: an image replicated as a whole is not a template copy, whatever its agreement share
    (``match.partial_copy`` calls a template copy only where the whole is not replicated), so its agreement line
    gives no template-copy threshold; an image that is not gives it. A hand-made result."""
    from memlab.cli.match import print_table

    def query(name, replicated, verdict):
        return {"image": name, "replicated": replicated, "verdict": verdict, "score": 0.5, "threshold": 0.3,
                "possible_threshold": 0.2,
                "agreement": {"share": 0.25, "threshold": 0.19},
                "matches": [{"score": 0.5, "duplicates": 0, "id": 7, "caption": "a red cross"}]}

    print_table({"descriptor": {"name": "pixel", "model": "-", "preset": "-", "threshold": 0.3,
                                "threshold_source": "hand-made"},
                 "queries": [query("whole.png", True, "replicated"), query("part.png", False, "template copy")],
                 "summary": {"n_queries": 2, "replication_rate": 0.5, "dataset_similarity": {"p95": 0.5, "mean": 0.5},
                             "background": {"p95": 0.2}, "calibration": {},
                             "timing": {"load_s": 0.0, "embed_s": 0.0, "search_s": 0.0}}})
    whole, part = capsys.readouterr().out.split("part.png")
    assert "whole.png  ->  REPLICATED" in whole and "agrees with its top-1 in 25%" in whole
    assert "template copy above" not in whole and "not replicated as a whole" in whole
    assert "->  template copy" in part and "template copy above 19%" in part
    assert "possible copy above 0.200" in part and "possible copy above" not in whole  # the band, where it applies
    assert "copies  id" in whole and "  0.500       1  7 " in whole  # copies in training: itself and 0 duplicates
