"""From a prompt list to a world (issue 12): img2dataset fetches the training images from a local HTTP
server this test starts on 127.0.0.1 (30 shared paintings, 5 dead URLs, 2 files that are not images),
`memlab world create` indexes them and writes the probes; `memlab run` and the app work on the result."""
from __future__ import annotations

import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAINTINGS = ROOT.parent / "shared" / "data" / "aic-public-domain" / "images"
ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_ALBUMENTATIONS_UPDATE": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (PAINTINGS / "captions.csv").is_file(), reason="../shared/data is absent")]


class Files(http.server.SimpleHTTPRequestHandler):
    """The paintings folder; /slow/* answers after 4 s (longer than the fetch timeout); GETs counted."""
    hits: Counter = Counter()

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=str(Files.root), **kw)

    def do_GET(self):
        Files.hits[self.path] += 1
        if self.path.startswith("/slow/"):
            time.sleep(4)
        return super().do_GET()

    def log_message(self, *a):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the fetch gave up on /slow/ (its timeout)
            pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Serves the paintings plus two files that are not images; returns (base URL, a refused port)."""
    root = tmp_path_factory.mktemp("site")
    (root / "slow").mkdir()
    for f in PAINTINGS.glob("*.jpg"):
        os.symlink(f, root / f.name)
        os.symlink(f, root / "slow" / f.name)
    (root / "notes.jpg").write_text("this is text, not a JPEG")
    (root / "page.html").write_text("<html><body>an HTML page</body></html>")
    Files.root = root
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    yield f"http://127.0.0.1:{srv.server_address[1]}", refused
    srv.shutdown()


@pytest.fixture(scope="module")
def lists(site, tmp_path_factory):
    """A NeMo-format memorized list (25 paintings + 7 bad URLs) and a NeMo-format control list (5)."""
    base, refused = site
    cap = pd.read_csv(PAINTINGS / "captions.csv").sort_values("file").head(30).reset_index(drop=True)
    urls = [f"{base}/{f}" for f in cap["file"]]
    bad = {f"{base}/missing-1.jpg": "http 404", f"{base}/missing-2.jpg": "http 404",
           f"http://127.0.0.1:{refused}/a.jpg": "unreachable host",
           f"http://127.0.0.1:{refused}/b.jpg": "unreachable host",
           f"{base}/slow/{cap['file'][0]}": "timeout",
           f"{base}/notes.jpg": "not an image", f"{base}/page.html": "not an image"}
    rng = np.random.default_rng(0)
    mem = pd.DataFrame({"Caption": list(cap["caption"][:25]) + [f"a lost image {i}" for i in range(7)],
                        "URL": urls[:25] + list(bad), "type": ["VM"] * 10 + ["TM"] * 22,
                        "mean_sscd": rng.uniform(0.2, 0.9, 32).round(4), "max_sscd": rng.uniform(0.3, 1, 32).round(4),
                        "Index": range(32)})
    ctrl = pd.DataFrame({"Caption": cap["caption"][25:], "URL": urls[25:], "Index": range(1000, 1005)})
    d = tmp_path_factory.mktemp("lists")
    mem.to_csv(d / "nemo.csv", sep=";")  # NeMo's files carry an unnamed index column first
    ctrl.to_csv(d / "nemo_controls.csv", sep=";")
    return d / "nemo.csv", d / "nemo_controls.csv", dict(zip(urls, cap["file"])), bad


def _create(tiny_pipeline_dir, lists, out, capfd=None):
    """``python -m memlab world create ...`` for the test's lists; with ``capfd``, its ``main`` in this process."""
    cmd = [sys.executable, "-m", "memlab", "world", "create", "--model", str(tiny_pipeline_dir),
           "--prompts", str(lists[0]), "--controls", str(lists[1]), "--descriptor", "pixel", "--processes", "1",
           "--threads", "8", "--timeout", "2", "--retries", "0", "--calib-n", "10", "--allow-private-addresses",
           "--probe-seeds", "2", "--nemo-seeds", "4", "--steps", "12",
           "--out", str(out)]
    if capfd is not None:
        from tests.helpers import run_in_process

        r = run_in_process(capfd, cmd[3:])
    else:
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def created(tiny_pipeline_dir, lists, tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds") / "nemo-world"
    t0 = time.perf_counter()
    r = _create(tiny_pipeline_dir, lists, out)
    return out, r, time.perf_counter() - t0


def test_world_create_fetches_indexes_and_labels_the_probes(created, lists):
    from memlab.world import World

    out, r, took = created
    _, _, url_file, bad = lists
    rep = json.loads((out / "build" / "shards" / "_fetch" / "report.json").read_text())
    assert (rep["listed"], rep["fetched"], rep["failed"], rep["pending"]) == (37, 30, 7, 0)
    assert rep["by_reason"] == dict(Counter(bad.values()))
    failures = pd.read_csv(out / "build" / "shards" / "_fetch" / "failures.csv")
    assert dict(zip(failures["url"], failures["reason"])) == bad  # each failed URL with its reason
    assert "fetched 30 of 37 URLs" in r.stderr and "7 failed" in r.stderr

    world = World.load(out)
    items = world.index().items
    assert len(items) == 30 and set(items["url"]) == set(url_file)
    probes = pd.read_csv(out / "probes.csv", dtype={"training_id": str})
    assert Counter(probes["label"]) == {"verbatim": 10, "template": 22, "control": 5}
    assert set(probes["group"]) == {"known memorized, verbatim", "known memorized, template",
                                    "control (not memorized)"}
    indexed = probes[probes["training_image"] == "indexed"]
    assert len(indexed) == 30 and set(indexed["url"]) == set(url_file)
    lost = probes.set_index("url").loc[list(bad), "training_image"]
    assert [f"not fetched: {bad[u]}" for u in bad] == lost.tolist()
    # the published figures travel with the prompt
    nemo = pd.read_csv(lists[0], sep=";")
    got = probes.set_index("prompt").loc[nemo["Caption"], "published_mean_sscd"].to_numpy()
    assert np.allclose(got, nemo["mean_sscd"])
    # the model's defaults: the --steps given, SD's guidance, the tiny model's own size; the index's descriptor
    assert world.defaults["steps"] == 12 and world.defaults["guidance"] == 7.5 and world.defaults["height"] == 16
    assert world.defaults["scheduler"] == "ddim"
    assert world.index().default_descriptor == "pixel"
    assert list((out / "keywords").glob("*.json")), "keyword views over the training captions"
    built_with = json.loads((out / "card.json").read_text())["built_with"]  # every option given
    assert built_with.startswith("python -m memlab world create --model ") and "--probe-seeds 2 --nemo-seeds 4" in built_with
    # an indexed probe points at the item that holds its image
    row = indexed.iloc[0]
    item = items[items["id"].astype(str) == str(row["training_id"])].iloc[0]
    assert item["url"] == row["url"]
    assert (world.index().image_path(item.name)).is_file()


def test_a_second_run_resumes_without_downloading_again(created, tiny_pipeline_dir, lists, capfd):
    out = created[0]
    before = sum(Files.hits.values())
    index_before = (out / "index" / "manifest.json").read_bytes()
    targets_before = json.loads((out / "world.json").read_text())["defaults"]
    assert "targets from 5 controls" in created[1].stdout + created[1].stderr  # the first run calibrated them
    t0 = time.perf_counter()
    r = _create(tiny_pipeline_dir, lists, out, capfd)  # (in this process: the first run was a process of its own)
    assert sum(Files.hits.values()) == before, "nothing is fetched again"
    assert (out / "index" / "manifest.json").read_bytes() == index_before, "an unchanged index is not rebuilt"
    # Wen's and SAIL's targets for the same controls, seeds and sampling are kept, not calibrated again
    assert "targets from" not in r.stdout + r.stderr
    after = json.loads((out / "world.json").read_text())["defaults"]
    assert {k: after[k] for k in after if "target" in k} == {k: targets_before[k] for k in targets_before
                                                             if "target" in k} and "sail_target" in after
    print(f"first run {created[2]:.1f}s, second {time.perf_counter() - t0:.1f}s")
    assert "fetched 30 of 37 URLs" in r.stderr
    # called from Python, the card names the arguments given to ``main``, not this process's command line
    assert json.loads((out / "card.json").read_text())["built_with"] == "python -m memlab " + shlex.join(r.args)


def test_memlab_run_generates_and_matches_on_the_created_world(created, tiny_pipeline_dir, tmp_path):
    out = created[0]
    table = pd.read_csv(out / "probe_scores.csv")
    row = table.iloc[0]  # a listed probe, run at the world's defaults: its row in the probe table comes back
    # (one run, with and without NeMo's mitigation: each `memlab run` pays the imports again)
    r = subprocess.run([sys.executable, "-m", "memlab", "run", "--world", str(out), "--prompt", row["prompt"],
                        "--seeds", "0-1", "--mitigation", "none", "--mitigation", "nemo", "--mitigation", "sail",
                        "--out", str(tmp_path / "run.jsonl")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    seeds = [x for x in recs if x.get("type", "seed") == "seed" and "matches" in x]
    assert len(seeds) == 6 and all(x["matches"] and x["descriptor"] for x in seeds)
    assert sorted(x["mitigation"]["name"] for x in seeds) == ["nemo", "nemo", "none", "none", "sail", "sail"]
    # the world names the model it was made with (a local folder: its fingerprint), and so does every record
    from memlab.pipeload import fingerprint

    made_with = json.loads((out / "world.json").read_text())["model_fingerprint"]
    assert made_with == fingerprint(tiny_pipeline_dir)
    assert {x["model"]["fingerprint"] for x in seeds} == {made_with} and seeds[0]["model"]["revision"] is None
    # NeMo's statistics come from the control list, sealed with the world: the mitigation runs on it
    from memlab.world import World

    w = World.load(out)
    assert w.folder("nemo") is not None and "nemo/statistics.safetensors" in w.manifest["files"]
    assert w.generator().nemo_stats.info["prompts"] == int((pd.read_csv(out / "probes.csv")["label"] == "control").sum())
    # the template threshold (issue 32): from the controls' generations against their top-1 training images
    n_controls = int((pd.read_csv(out / "probes.csv")["label"] == "control").sum())
    thr = w.manifest["template_threshold"]
    assert 0 < thr["n"] <= n_controls * 4 and thr["fpr"] == 0.01 and -1 <= thr["value"] <= 1
    assert thr["sampling"] == {"steps": 12, "guidance": 7.5} and "12 steps, guidance 7.5" in thr["source"]
    assert w.generator().nemo_stats.info["steps"] == 12  # every stage at the world's sampling
    # Wen's and SAIL's targets, calibrated on the controls at the world's sampling, so both run without one given
    from memlab.evaluate import calibrate_wen_target
    from memlab.generate import Settings
    from memlab.sail import calibrate_sail_target

    controls = pd.read_csv(out / "probes.csv").query("label == 'control'")["prompt"].tolist()
    st = Settings(steps=12, guidance=7.5)
    assert w.defaults["wen_target"] == pytest.approx(
        calibrate_wen_target(w.generator(), controls, [0, 1, 2, 3], st)["wen_target"], rel=1e-5)
    assert w.defaults["sail_target"] == pytest.approx(
        calibrate_sail_target(w.generator(), controls, [0, 1, 2, 3], st)["sail_target"], rel=1e-5)
    assert "5 control prompts x 4 seeds at 12 steps" in w.defaults["sail_target_source"]
    sailed = [x for x in seeds if x["mitigation"]["name"] == "sail"]
    assert all(x["mitigation_state"]["sail_target"] == w.defaults["sail_target"] for x in sailed)
    assert w.generator().template_threshold == thr
    # uploads' partial-copy threshold: the agreement share, calibrated on the same control generations
    agree = w.index().manifest["agreement"]
    assert agree["on"] == "generations" and 0 < agree["n"] <= n_controls * 4 and 0 <= agree["threshold"] <= 1
    assert agree["n"] == thr["n"]  # the same generations: those not replicated as a whole
    # the list's verbatim and template probes scored both ways (issue 32), recomputed from the table's seeds
    probes = pd.read_csv(out / "probes.csv")
    assert sorted(table["prompt"]) == sorted(probes[probes["label"].isin(["verbatim", "template"])]["prompt"])
    assert (table["seeds"] == 2).all()  # --probe-seeds
    assert ((table["template_copy"] <= table["masked_above"]) & (table["replicated"] <= table["seeds"])).all()
    summary = json.loads((out / "card.json").read_text())["probe_scores"]["by_label"]
    for label, g in table.groupby("label"):
        s = summary[label]
        assert s["probes"] == len(g) and s["seeds_replicated"] == g["replicated"].sum()
        assert s["masked_calls_copy"] == int((g["masked_above"] >= g["seeds"] / 2).sum())
        assert s["global_calls_copy"] == int((g["replicated"] >= g["seeds"] / 2).sum())
    # the probe's row against the run's unmitigated seeds: the same seeds, the same verdicts
    plain = [x for x in seeds if x["mitigation"]["name"] == "none"]
    assert sum(x["verdict"] == "replicated" for x in plain) == row["replicated"]
    assert sum(x["masked_score"] > thr["value"] and (x["agreement_share"] is None
                                                    or x["agreement_share"] > x["agreement_threshold"])
               for x in plain) == row["masked_above"]


def test_img2dataset_shards_index_to_the_same_vectors_as_the_same_images_in_a_folder(created, lists, tmp_path):
    from index_builder.build import main as build_main
    from memlab.index import TrainingIndex

    out = created[0]
    _, _, url_file, _ = lists
    folder = tmp_path / "folder"
    folder.mkdir()
    for f in url_file.values():
        os.symlink(PAINTINGS / f, folder / f)
    assert build_main(["--shards", str(out / "build" / "shards"), "--descriptor", "pixel,pixel-tiled",
                       "--calib-n", "5", "--out", str(tmp_path / "from-shards")]) == 0
    assert build_main(["--images", str(folder), "--descriptor", "pixel,pixel-tiled", "--calib-n", "5",
                       "--out", str(tmp_path / "from-folder")]) == 0
    a, b = TrainingIndex.load(tmp_path / "from-shards"), TrainingIndex.load(tmp_path / "from-folder")
    row_of = {f: i for i, f in enumerate(b.items["file"])}
    order = [row_of[url_file[u]] for u in a.items["url"]]
    for name in ("pixel", "pixel-tiled"):
        assert np.array_equal(a.vectors(name), b.vectors(name)[order])


STAND_IN = Path(__file__).parent / "stand_in"


def test_a_space_style_start_serves_the_created_world_through_the_zerogpu_wrapper(created, tmp_path):
    """`python app.py` with MEMLAB_WORLD set, as a Space starts it, with a stand-in `spaces` module that
    pickles each GPU call's arguments and enforces its duration."""
    import gradio_client
    from tests.browser import serve_app

    from memlab import gpu

    out, log = created[0], tmp_path / "spaces.jsonl"
    probes = pd.read_csv(out / "probes.csv")
    verbatim = probes[probes["label"] == "verbatim"]["prompt"].iloc[0]
    lost = probes[probes["training_image"].str.startswith("not fetched")].iloc[0]
    env = {"MEMLAB_WORLD": str(out), "PYTHONPATH": str(STAND_IN), "SPACES_LOG": str(log), "SPACES_GUARD": "1"}
    with serve_app(None, env=env) as (url, _):
        c = gradio_client.Client(url, verbose=False)
        head = c.predict(verbatim, 3, "", [], 4, 0.1, 3, 5.0, "pixel", api_name="/generate")[0]
        assert "a probe of this world**: known memorized, verbatim (from nemo.csv)" in head
        assert "**published** (nemo.csv" in head and "**measured here**" in head
        head = c.predict(lost["prompt"], 2, "", [], 4, 0.1, 3, 5.0, "pixel", api_name="/generate")[0]
        assert f"its training image could not be fetched** ({lost['training_image'][len('not fetched: '):]}: " \
               f"{lost['url']})" in head
        c.predict(verbatim, 2, ["rna"], 4, 0.1, api_name="/compare")
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    chunks = [x for x in calls if x["fn"] == "generate_chunk"]  # the rest: the runs' cliques, the caption search
    assert len(chunks) == 5 and {x["fn"] for x in calls} == {"generate_chunk", "lab_call"}  # 3 for the runs;
    # Compare: a call a row (none, rna). Each call asked for the time its work needs (images x steps), ran within it
    assert [x["duration"] for x in chunks[:3]] == [gpu.duration(2, 3), gpu.duration(1, 3), gpu.duration(2, 3)]
    assert all(x["took"] <= x["duration"] for x in calls)


def test_zerogpu_wrapper_pickles_its_arguments_and_refuses_work_over_the_cap(monkeypatch, created):
    import importlib

    from memlab import gpu
    from memlab.errors import MemlabError
    from memlab.service import Lab
    from memlab.world import World

    was = gpu.ON_HOST
    monkeypatch.syspath_prepend(str(STAND_IN))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    host = importlib.reload(gpu)
    try:
        assert host.ON_HOST
        key = host.register(Lab(World.load(created[0]), device="cpu"))
        out = host.generate_chunk_on_host(key, "Soaring", [0, 1], "none", 2, 5.0, "pixel")
        assert [r["seed"] for r, _ in out] == [0, 1] and all(im.size == (16, 16) for _, im in out)
        assert host.duration(8, 50) > host.duration(2, 50) > host.duration(2, 10)  # grows with the work
        with pytest.raises(MemlabError, match=r"over the host's 300 s limit per call: use fewer steps, or at most"):
            host.generate_chunk_on_host(key, "Soaring", list(range(64)), "none", 200, 5.0, "pixel")
    finally:  # (the stand-in out of sys.modules unrecorded: monkeypatch's undo would put it back)
        sys.modules.pop("spaces", None)
        monkeypatch.undo()
        importlib.reload(gpu)
    assert gpu.ON_HOST == was  # the tests after this one run where they ran before it


@pytest.mark.browser
def test_the_app_serves_two_worlds_and_shows_the_probes_by_label_in_chromium(created, tiny_world, tmp_path):
    """Two worlds in one app: the created one on its own page, reached from the navigation bar; its probe
    prompts are grouped by label; a probe's run shows the published figure beside the measured one."""
    pytest.importorskip("playwright")
    from tests.browser import app_page, chromium_path

    if chromium_path() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    out = created[0]
    verbatim = pd.read_csv(out / "probes.csv").query("label == 'verbatim'")["prompt"].iloc[0]
    shot = Path(os.environ.get("MEMLAB_SCREENSHOT_DIR", tmp_path)) / "created-world.png"
    with app_page(None, viewport=(1400, 1800), args=("--world", str(tiny_world), "--world", str(out))) as page:
        assert "World: tiny" in page.inner_text("body")
        page.get_by_role("link", name="nemo-world").first.click()
        page.wait_for_url("**/nemo-world**", timeout=30_000)
        page.get_by_role("link", name="tiny").first.wait_for(timeout=30_000)  # the way back, by its world's name
        page.locator("#more-examples").get_by_text("More examples").first.click()  # every group, folded
        page.get_by_text("known memorized, verbatim · 10 prompts").first.wait_for(timeout=60_000)
        body = page.inner_text("body")
        assert "World: nemo-world" in body
        for group in ("known memorized, template · 22 prompts", "control (not memorized) · 5 prompts"):
            assert group in body
        page.get_by_text(verbatim[:40]).first.click()  # an example (shown shortened) fills the prompt box
        page.wait_for_function(f"[...document.querySelectorAll('textarea')].some(t => t.value === {json.dumps(verbatim)})",
                               timeout=30_000)
        page.locator("#generate-btn").click()
        page.wait_for_function("document.querySelector('#headline').innerText.includes('measured here')",
                               timeout=120_000)
        headline = page.locator("#headline").inner_text()
        page.screenshot(path=str(shot), full_page=True)
    assert "a probe of this world: known memorized, verbatim" in headline and "published (nemo.csv" in headline
    assert shot.is_file()
