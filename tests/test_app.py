"""The app through its API (gradio_client against a locally launched server) and bad input."""
import json
import zipfile

import numpy as np

import pytest

from tests.helpers import run_coroutine

gradio_client = pytest.importorskip("gradio_client")


def test_generate_endpoint_matches_memlab_run(client, server, tmp_path):
    import json

    from memlab.cli import main as memlab_main

    out = client.predict("a red ball", 4, "", [], 4, 0.1, 3, 5.0, api_name="/generate")
    headline, gallery, table = out[0], out[1], out[2]  # (the State output is not part of the API)
    assert "Replication" in headline and "dataset similarity" in headline and "threshold" in headline
    assert len(gallery) == 4
    rows = table["data"]
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    # the same prompt and seeds through the CLI give the same scores and verdicts
    lab = server[1]
    f = tmp_path / "r.jsonl"
    assert memlab_main(["run", "--world", str(lab.world.path), "--prompt", "a red ball", "--seeds", "0-3",
                        "--steps", "3", "--guidance", "5", "--out", str(f)]) == 0
    recs = [json.loads(x) for x in f.read_text().splitlines() if '"type": "seed"' in x]
    from memlab.app.views import SEED_COLUMNS

    assert table["headers"] == SEED_COLUMNS
    col = {c: [r[i] for r in rows] for i, c in enumerate(SEED_COLUMNS)}
    assert [f"{r['score']:.3f}" for r in recs] == col["score"]  # 3 decimals, as in the pairs' captions
    assert [r["verdict"] for r in recs] == col["verdict"]  # three levels: replicated, possible copy, novel
    assert [r["matches"][0]["id"] for r in recs] == col["match id"]
    summary = [json.loads(x) for x in f.read_text().splitlines() if '"type": "summary"' in x][0]
    assert f"{summary['replication_rate']:.1%}" in headline
    # the headline says which caption it shows and over how many generations the 95th percentile is
    best = max(recs, key=lambda r: r["score"])
    assert "caption of the best image match" in headline and best["matches"][0]["caption"] in headline
    assert "n = 4 generations" in headline
    # the headline names its source: mitigation, settings, descriptor and threshold, one rounding rule
    assert f"[mitigation](#g-mitigation) none · 3 steps, guidance 5 · {lab.descriptor.name} > " in headline
    assert f"Replication: {summary['replication_rate']:.1%} of 4 seeds" in headline


@pytest.mark.parametrize("args, msg", [
    (("", 4, "", [], 4, 0.1, 3, 5.0), "prompt is empty"),
    (("x", 4, "0-5000", [], 4, 0.1, 3, 5.0), "at most"),
    (("x", 4, "0-99", [], 4, 0.1, 3, 5.0), "too many"),
    (("x", 4, "", ["gni"], 4, 5.0, 3, 5.0), "greater than maximum"),  # gradio checks slider ranges
    (("x", 0, "", [], 4, 0.1, 3, 5.0), "the number of seeds must be between 1 and 64 (got 0)"),  # never clamped
])
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(client, args, msg):
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name="/generate")
    assert msg in str(e.value)
    ok = client.predict("a blue square", 1, "", [], 4, 0.1, 2, 5.0, api_name="/generate")
    assert len(ok[1]) == 1


def test_compare_endpoint(client):
    import json
    import zipfile

    head, grid, fig, table = client.predict("a red ball", 2, ["rna", "gni"], 2, 0.1, api_name="/compare")
    assert grid.count('<figure class="ab-cell') == 3 * 2 and "3 of 3 strategies on the same 2 seeds" in head
    assert [r[0] for r in table["data"]] == ["none", "rna k=2", "gni λ=0.1"]  # short labels, full specs beside
    assert [r[1] for r in table["data"]] == ["none", "rna:k=2,seed=0", "gni:lam=0.1,halves=both,seed=0"]
    # explicit seeds, steps and guidance; the whole comparison exported in `memlab run`'s JSONL format
    head, grid, _, table = client.predict("a red ball", 2, ["rna"], 2, 0.1, "5,9", 2, 3.0, api_name="/compare")
    assert "seeds 5, 9 · 2 steps, guidance 3" in head and "seed 9" in grid
    with zipfile.ZipFile(client.predict(api_name="/export_comparison")) as z:
        lines = [json.loads(x) for x in z.read("results.jsonl").splitlines()]
        assert len([n for n in z.namelist() if n.startswith("generations/")]) == 4
    assert [x["type"] for x in lines] == ["seed"] * 4 + ["summary"] * 2
    assert sorted(x["seed"] for x in lines[:4]) == [5, 5, 9, 9] and {x["settings"]["steps"] for x in lines[:4]} == {2}
    assert "change_vs_none" in lines[-1] and "partial" not in lines[-1]


def test_compare_streams_one_row_a_strategy_equal_to_run_prompt(server):
    from memlab.runner import run_prompt

    lab = server[1]
    seen = [(len(s.summaries), len(s.records)) for s in lab.compare_stream("a red ball", [0, 1, 2], ["rna:k=2"])]
    assert seen == [(1, 3), (2, 6)]
    state = lab.compare("a red ball", [0, 1, 2], ["rna:k=2"])
    ref = [r for r in run_prompt(lab.generator, lab.index, lab.descriptor, "a red ball", [0, 1, 2], ["none", "rna:k=2"],
                                 lab.settings()) if r["type"] == "summary"]
    for a, b in zip(state.summaries, ref):
        assert a["mitigation"]["spec"] == b["mitigation"]["spec"]
        assert a["replication_rate"] == b["replication_rate"]
        assert abs(a["dataset_similarity"]["p95"] - b["dataset_similarity"]["p95"]) < 1e-6
    ch, ref_ch = dict(state.summaries[1]["change_vs_none"]), dict(ref[1]["change_vs_none"])
    assert ch.pop("paired") == ref_ch.pop("paired")  # seed by seed on the same seeds: the same counts and test
    assert ch == pytest.approx(ref_ch)
    from memlab.app.views import compare_table, headline
    from memlab.records import RunState

    pc = state.summaries[1]["change_vs_none"]["paired"]
    assert compare_table(state).iloc[1]["seeds fewer / more (p)"] == f"{pc['fewer']} / {pc['more']} (p = {pc['p_value']:.3g})"
    assert pc["fewer"] - pc["more"] == round(-3 * ch["replication_rate"])  # the count's change, seed by seed
    one = RunState(prompt="a red ball", records=state.records[:3], summaries=state.summaries[:1], requested=3)
    iv = state.summaries[0]["replication_interval"]
    assert f"95% interval](#g-interval) {iv['low']:.1%}-{iv['high']:.1%} over 3 seeds" in headline(lab, one)
    # a row already made (the lesson's step 1 is its step 3's first row) is used, not generated again
    first = list(lab.compare_stream("a red ball", [0, 1, 2], []))[-1]
    calls = []
    gen_chunk = lab.generate_chunk
    lab.generate_chunk = lambda *a, **k: calls.append(a[2]) or gen_chunk(*a, **k)
    try:
        again = list(lab.compare_stream("a red ball", [0, 1, 2], ["rna:k=2"],
                                        done={"none": list(zip(first.records, first.images))}))[-1]
    finally:
        del lab.generate_chunk
    assert calls == ["rna:k=2"] and again.records[:3] == first.records and again.images[:3] == first.images
    assert again.summaries == state.summaries


def test_search_duplicates_export(client):
    gallery, table = client.predict("colour field", api_name="/search_captions")
    assert len(table["data"]) > 0
    with pytest.raises(Exception, match="type a word"):
        client.predict("  ", api_name="/search_captions")
    _, members = client.predict("3", api_name="/duplicates")
    assert members["headers"][:2] == ["id", "copies in training"] and members["data"][0][0] == 3
    assert "row" not in members["headers"] and "group" not in members["headers"]  # one identifier: the id
    with pytest.raises(Exception, match="no training item"):
        client.predict("nope", api_name="/duplicates")


def test_an_export_opens_offline_with_every_image_it_names(server, tmp_path):
    """Unzipped into an empty folder, an export holds every image its records name (the generations and each
    seed's matched training images, one per near-duplicate group) and no path of the server."""
    import csv
    import json

    lab = server[1]
    state = None
    for state in lab.generate_stream("a colour field 3", [0, 1], "none", lab.settings(2, 5.0)):
        pass
    with zipfile.ZipFile(lab.export(state, tmp_path / "run.zip")) as z:
        z.extractall(tmp_path / "out")
    out = tmp_path / "out"
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    seeds = [r for r in lines if r["type"] == "seed"]
    assert len(lines) == 3 and lines[-1]["type"] == "summary" and len(seeds) == 2
    for r in seeds:
        assert (out / r["image"]).is_file()
        assert 1 <= len(r["matches"]) <= lab.EXPORT_MATCHES
        assert len({m["group"] for m in r["matches"]}) == len(r["matches"])  # one per near-duplicate group
        for m in r["matches"]:
            assert (out / m["file"]).is_file() and m["copies_in_training"] == m["duplicates"] + 1
    text = (out / "results.jsonl").read_text()
    server_paths = [str(p) for p in (lab.world.path, lab.index.path, tmp_path.parent) if p is not None]
    assert not any(p in text for p in server_paths) and '"/' not in text
    table = list(csv.DictReader((out / "summary.csv").open()))
    assert [int(t["seed"]) for t in table] == [0, 1] and all((out / t["match image"]).is_file() for t in table)


def test_a_comparison_export_keeps_every_strategys_images_and_the_three_level_verdict(server, tmp_path):
    """Compare offers ``jain`` and ``jain:mode=dynamic``, both named ``jain``: their generations were written under
    one file name, the second over the first (the zip holding two members of one name). And summary.csv wrote
    "novel" for a possible or template copy. Each strategy's images now have names of their own, and the table
    the records' verdict."""
    import csv

    from PIL import Image

    lab = server[1]
    state = lab.compare("a colour field 3", [0, 1], ["jain", "jain:mode=dynamic"], lab.settings(2, 5.0))
    state.records[1]["verdict"] = "possible copy"  # (a hand-set verdict: the table must carry the record's)
    with zipfile.ZipFile(lab.export(state, tmp_path / "comparison.zip")) as z:
        names = z.namelist()
        assert len(names) == len(set(names))
        z.extractall(tmp_path / "out")
    seeds = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    seeds = [r for r in seeds if r["type"] == "seed"]
    assert len(seeds) == 6 and len({r["image"] for r in seeds}) == 6
    for r, im in zip(seeds, state.images):  # each record points at its own generation
        got = Image.open(tmp_path / "out" / r["image"]).convert("RGB")
        assert np.array_equal(np.asarray(got), np.asarray(im.convert("RGB")))
    table = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [t["verdict"] for t in table] == [r["verdict"] for r in seeds] and table[1]["verdict"] == "possible copy"


def test_the_first_seed_streams_ahead_of_the_rest_of_its_chunk(server):
    """``generate_stream(head=1)``: the first seed's pair is yielded as soon as it is matched, before the
    rest of its chunk; the run equals ``run_prompt``'s for the same seeds."""
    import torch

    from memlab.runner import run_prompt
    from memlab.service import APP_MATCHES

    from memlab import compute

    lab = server[1]
    if not compute.run(lab.generator.head_start_ok, 4, 1):  # as the Lab asks it: on its compute thread
        assert compute.run(torch.get_num_threads) == 1
        pytest.skip("one torch thread: no head start")
    st = lab.settings(2, 5.0)
    sizes = [len(s.records) for s in lab.generate_stream("a cat", [0, 1, 2, 3], "none", st, chunk=4, head=1)]
    assert sizes == [1, 4]
    state = list(lab.generate_stream("a cat", [0, 1, 2, 3], "none", st, chunk=4, head=1))[-1]
    ref = [r for r in run_prompt(lab.generator, lab.index, lab.descriptor, "a cat", [0, 1, 2, 3], ["none"], st,
                                 k=APP_MATCHES) if r["type"] == "seed"]
    assert [r["seed"] for r in state.records] == [0, 1, 2, 3]
    assert [r["matches"][0]["id"] for r in state.records] == [r["matches"][0]["id"] for r in ref]
    assert np.allclose([r["score"] for r in state.records], [r["score"] for r in ref], atol=1e-4)


def test_the_stream_plan_pays_for_a_head_start_only_when_the_first_chunk_is_long():
    """``stream_plan``: on a CPU with cores to share, a head start only when the first chunk is expected to take
    over ``HEAD_START_AFTER_S`` (or its time is not known yet); one batch per chunk otherwise; elsewhere the
    first two seeds, then ``MAX_CHUNK``."""
    from memlab.headstart import HEAD_START, HEAD_START_AFTER_S, stream_plan
    from memlab.limits import MAX_CHUNK

    assert stream_plan(True, None, MAX_CHUNK) == {"chunk": MAX_CHUNK, "head": HEAD_START}
    assert stream_plan(True, HEAD_START_AFTER_S * 2, MAX_CHUNK) == {"chunk": MAX_CHUNK, "head": HEAD_START}
    assert stream_plan(True, HEAD_START_AFTER_S / 2, MAX_CHUNK) == {"chunk": MAX_CHUNK}
    for first in (None, 0.1, 100.0):  # a GPU, one core or a GPU host
        assert stream_plan(False, first, MAX_CHUNK) == {"chunk": 2, "then": MAX_CHUNK}


def test_a_steps_time_is_a_fixed_part_plus_a_part_per_image():
    """``step_seconds`` on hand-made timings: a step of 20 ms plus 10 ms an image, timed at 2 and 8 images,
    gives 60 ms at 4 and 180 ms at 16; one size timed scales in proportion; timings that fall with the batch
    (noise) fall back on the nearest size timed."""
    from memlab.headstart import step_seconds

    timed = {2: 0.02 + 2 * 0.01, 8: 0.02 + 8 * 0.01}
    assert step_seconds(timed, 4) == pytest.approx(0.06) and step_seconds(timed, 16) == pytest.approx(0.18)
    assert step_seconds({2: 0.04}, 8) == pytest.approx(0.16)
    assert step_seconds({2: 0.05, 8: 0.04}, 8) == pytest.approx(0.04)
    assert step_seconds({2: 0.05, 8: 0.04}, 1) == pytest.approx(0.025)


def test_the_app_streams_a_quick_batch_in_one_update(server):
    """``Lab.stream_generation`` times each chunk it runs (``estimate_seconds``) and plans by it
    (``stream_plan``): a batch expected to be quick comes in one update on a CPU with cores to share."""
    from memlab import compute
    from memlab.headstart import HEAD_START_AFTER_S

    lab = server[1]
    st, spec = lab.settings(2, 5.0), lab.strategy_spec([], 4, 0.1)
    head_ok = compute.run(lab.generator.head_start_ok, 4, 1)
    list(lab.stream_generation("a cat", [0, 1, 2, 3], spec, st))  # timed here
    est = lab.estimate_seconds(4, st.steps)
    assert est is not None and est < HEAD_START_AFTER_S  # the tiny model, 2 steps
    assert [len(s.records) for s in lab.stream_generation("a cat", [0, 1, 2, 3], spec, st)] == \
        ([4] if head_ok else [2, 4])


def test_a_stopped_run_exports_labelled_partial(server, tmp_path):
    import json

    from memlab.app.views import headline
    from memlab.service import MAX_CHUNK

    lab = server[1]
    stream = lab.generate_stream("a cat", [0, 1, 2, 3], "none", lab.settings(2, 5.0), chunk=2)
    state = next(stream)  # stopped after the first two seeds
    stream.close()
    assert not state.finished and "2 of 4 seeds so far" in headline(lab, state)
    with zipfile.ZipFile(lab.export(state, tmp_path / "run-partial.zip")) as z:
        summary = json.loads(z.read("results.jsonl").decode().splitlines()[-1])
    assert summary["partial"] is True and summary["seeds_requested"] == 4 and summary["seeds_done"] == 2
    for state in lab.generate_stream("a cat", [0, 1], "none", lab.settings(2, 5.0)):
        pass
    assert state.finished and "so far" not in headline(lab, state)
    sizes = [len(s.records) for s in lab.generate_stream("a cat", list(range(11)), "none", lab.settings(2, 5.0),
                                                          chunk=2, then=4)]
    assert sizes == [2, 6, 10, 11]  # the first pair, then chunks of 4 (the last one what is left)
    assert [len(s.records) for s in lab.generate_stream("a cat", list(range(40)), "none", lab.settings(1, 5.0),
                                                        chunk=2, then=MAX_CHUNK)] == [2, 10, 18, 26, 34, 40]  # the app's
    with zipfile.ZipFile(lab.export(state, tmp_path / "run.zip")) as z:
        assert "partial" not in json.loads(z.read("results.jsonl").decode().splitlines()[-1])


def test_service_validates_what_the_ui_cannot(server):
    from memlab.errors import MemlabError

    lab = server[1]
    with pytest.raises(MemlabError, match=r"λ \(gni\) must be between 0 and 1 \(got 100\)"):
        lab.strategy_spec(["gni"], lam=100)
    with pytest.raises(MemlabError, match="between 1 and 64"):
        lab.seeds(0)
    with pytest.raises(MemlabError, match="between 1 and 64"):
        lab.seeds(5000)
    with pytest.raises(MemlabError, match="too many"):
        lab.seeds(None, "0-99")
    with pytest.raises(MemlabError, match="unknown descriptor 'nope'; this world has"):
        lab.get_descriptor("nope")
    assert lab.strategy_spec(["rna", "gni"], k=2, lam=0.2) == "rna:k=2+gni:lam=0.2"


def test_keyword_clusters_and_generate_from_a_cluster(client):
    md, fig, table, gallery = client.predict("colour field", "", api_name="/keyword_clusters")
    assert "30 captions" in md and "within 77 CLIP tokens" in md
    assert table["headers"][:2] == ["rank", "size"] and "whose works" not in md
    # whose works (a related keyword, optional: the call above left it out): every caption names "colour", but no
    # image of this world is nearly identical to another, so no cluster is anyone's works
    md, fig, table, gallery = client.predict("colour field", "", "colour", api_name="/keyword_clusters")
    assert "**whose works**: 0% of the “colour field” items (0 of 30) lie in the clusters of “colour”'s works " \
           "(none;" in md and "100% of the “colour field” captions name “colour” themselves" in md, md
    assert table["headers"][4] == "name “colour”" and table["data"][0][4] == "30 of 30"
    # Export this view: the same view and whose works, from the kept view (no second clustering)

    with zipfile.ZipFile(client.predict("colour field", "", "colour", api_name="/export_keyword")) as z:
        doc = json.loads(z.read("view.json"))
        assert doc["view"]["keyword"] == "colour field" and doc["related"]["captions_naming"] == 30
        assert "clusters.csv" in z.namelist() and sum(n.endswith(".png") for n in z.namelist()) == 4
    out = client.predict("colour field", 0, api_name="/cluster_prompt")  # no clusters: its miscellaneous images
    assert "colour field" in (out if isinstance(out, str) else out[-1])
    with pytest.raises(Exception, match="no training caption contains"):
        client.predict("zebra", "", api_name="/keyword_clusters")


def test_closest_captions_by_text_embedding(server):
    lab = server[1]
    near = lab.closest_captions("a colour field 7", k=3)
    assert len(near) == 3 and near["text similarity"].is_monotonic_decreasing
    assert near["caption"].iloc[0] == "a colour field 7"
    assert near["text similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)


def test_closest_captions_are_not_searched_past_the_bound_and_the_label_says_so(tiny_world, monkeypatch):
    """The text search embeds every distinct caption once, on the compute thread every request waits on: on a
    LAION-scale index that held the app for hours. Past ``CAPTION_SEARCH_MAX`` the table is empty and its label
    says why; nothing is embedded."""
    import memlab.trainingset as trainingset
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")
    assert lab.distinct_captions() == 30
    monkeypatch.setattr(trainingset, "CAPTION_SEARCH_MAX", 29)
    monkeypatch.setattr(Lab, "_text_embedder", lambda self: pytest.fail("embedded the captions"))
    assert lab.closest_captions("a colour field 7").empty
    assert lab.text_source().startswith("not searched: the training set has 30 distinct captions, over the 29 the app "
                                        "embeds (`python -m index_builder captions")
    monkeypatch.undo()
    assert lab.closest_captions("a colour field 7", k=2)["caption"].iloc[0] == "a colour field 7"


def test_closest_captions_use_projected_clip_text_when_the_index_has_clip(tiny_clip_name, tiny_pipeline_dir,
                                                                           tmp_path):
    """CLIP text similarity is defined on projected embeddings: with a CLIP descriptor in the index the
    closest captions are scored by its text tower (projected), else by the pipeline's pooled output."""
    import numpy as np
    import pandas as pd

    from tests.helpers import synthetic_images
    from memlab.descriptors import create_descriptor
    from memlab.index import build_index
    from memlab.service import Lab
    from memlab.world import World

    ims = synthetic_images(6)
    caps = [f"a field of colour number {i}" for i in range(6)]
    items = pd.DataFrame({"id": range(6), "caption": caps, "file": [f"{i}.png" for i in range(6)]})
    clip = create_descriptor("clip", model=tiny_clip_name, pretrained=None, device="cpu")
    build_index(tmp_path / "idx", items, lambda i: ims[i], [create_descriptor("pixel"), clip], calib_n=6)
    lab = Lab(World.from_parts(str(tiny_pipeline_dir), tmp_path / "idx"))
    assert lab.text_source().startswith("CLIP text embedding") and "projected" in lab.text_source()
    near = lab.closest_captions(caps[2], k=6)
    t = lab.get_descriptor("clip").embed_text(caps)  # the index's CLIP descriptor (random tiny weights)
    expect = t @ t[2]
    assert near["caption"].iloc[0] == caps[2]
    assert np.allclose(near.set_index("caption").loc[caps, "text similarity"].to_numpy(), np.round(expect, 4),
                       atol=1e-4)
    plain = Lab(World.from_parts(str(tiny_pipeline_dir), tmp_path / "idx"))
    plain.index.manifest["descriptors"].pop("clip")  # the same world without a CLIP descriptor
    assert "pooled output" in plain.text_source()


def test_attribution_endpoint_draws_a_bar_per_prompt_token(client, server):
    out = client.predict("a red ball", 4, "", 3, 5.0, api_name="/attribution")
    text = str(out)
    assert "a·1" in text and "red·2" in text and "ball·3" in text and "startoftext" not in text
    lab = server[1]
    toks = lab.token_attribution("a red ball", range(4), lab.settings(3, 5.0))
    assert [t["token"] for t in toks][1:4] == ["a", "red", "ball"]


def test_generate_with_the_second_descriptor_names_it(client, server):
    lab = server[1]
    out = client.predict("a red ball", 2, "", [], 4, 0.1, 3, 5.0, lab.descriptor.name, api_name="/generate")
    assert lab.descriptor_label() in out[0]
    with pytest.raises(Exception, match="unknown descriptor|not in the list of choices"):
        client.predict("a red ball", 2, "", [], 4, 0.1, 3, 5.0, "nope", api_name="/generate")


def test_a_generation_clears_the_previous_results_in_its_own_first_update(client):
    """Generate clears what a new request invalidates in the request itself (no clearing round trip
    before the work starts): its first streamed update is empty, then the seeds come."""
    job = client.submit("a red ball", 4, "", [], 4, 0.1, 3, 5.0, api_name="/generate")
    job.result()
    outs = job.outputs()
    headline, gallery = outs[0][0], outs[0][1]
    assert headline == "" and not gallery
    assert "of 4 seeds" in outs[-1][0] and len(outs[-1][1]) == 4


class Countdown:
    """A stand-in for a ``threading.Event`` that reads set from its ``n + 1``-th look on: a run given it as
    ``stop`` is asked to stop after ``n`` looks (the stream's own before each chunk, the chunk's as it starts on
    the compute thread, then one after every denoising step); ``looks`` counts them."""

    def __init__(self, n: int):
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.n


def test_stop_ends_the_chunk_in_flight_within_a_denoising_step(server):
    """``stop`` (Stop on the page, ``wiring.stoppable``): the chunk in flight ends at the first step that sees it
    set, not at the chunk's end; the seeds already yielded stand; a head start's second batch stops with it;
    the next run is served in full."""
    lab = server[1]
    st = lab.settings(20, 5.0)
    # the first chunk (2 seeds): 2 looks before it and 20 after its steps; the second's 2 before it, then 5
    stop = Countdown(2 + 20 + 2 + 5)
    sizes = [len(s.records) for s in lab.generate_stream("a cat", list(range(8)), "none", st, chunk=2, then=6,
                                                          stop=stop)]
    assert sizes == [2]  # the second chunk yielded nothing
    assert stop.looks == 2 + 20 + 2 + 6  # it stopped at the 6th of its 20 steps
    stop = Countdown(0)  # set from the start: nothing runs
    assert list(lab.generate_stream("a cat", [0, 1], "none", st, stop=stop)) == [] and stop.looks == 1
    stop = Countdown(1)  # set while the chunk waited for the compute thread: it does not start
    assert list(lab.generate_stream("a cat", [0, 1], "none", st, stop=stop)) == [] and stop.looks == 2
    stop = Countdown(2 + 3)  # a head start (on a CPU with 2 threads): the rest stops, and its head
    assert [len(s.records) for s in lab.generate_stream("a cat", [0, 1, 2, 3], "none", st, chunk=4, head=1,
                                                         stop=stop)] in ([], [1])
    assert stop.looks == 2 + 4
    stop = Countdown(2 + 3)  # the comparison: its first row stops at its 4th step, and no other row starts
    assert list(lab.compare_stream("a cat", [0, 1], ["rna:k=2"], st, stop=stop)) == [] and stop.looks == 2 + 4
    assert [len(s.records) for s in lab.generate_stream("a cat", [0, 1, 2], "none", st, chunk=2)] == [2, 3]


def test_stoppable_lets_go_of_the_update_in_flight_and_sets_stop():
    """``wiring.stoppable``: cancelling the event (Stop) ends the wait for the update in flight at once and sets
    the handler's ``stop``; Gradio's own driver of a synchronous generator would wait for that update (10 s
    here). Gradio sees the handler's parameters without ``stop``, with ``request``."""
    import asyncio
    import inspect
    import threading
    import time

    from memlab.app.wiring import stoppable

    noticed = threading.Event()

    def handler(x, progress=None, stop=None):
        yield x
        t0 = time.perf_counter()
        while not stop.is_set() and time.perf_counter() - t0 < 10:  # a chunk that looks after every step
            time.sleep(0.01)
        if stop.is_set():
            noticed.set()
        yield "the rest of the chunk"

    driven = stoppable(handler)
    assert list(inspect.signature(driven).parameters) == ["x", "progress", "request"]  # Gradio fills `request`

    async def stop_in_flight():
        updates = driven(1)
        assert await updates.__anext__() == 1
        pending = asyncio.ensure_future(updates.__anext__())
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        return time.perf_counter() - t0

    assert run_coroutine(stop_in_flight()) < 1.0
    assert noticed.wait(2.0)


def test_a_closed_page_stops_its_own_runs_and_no_other():
    """Gradio neither cancels a closed page's event nor closes its handler: ``wiring.stop_session`` (the page's
    ``unload``) sets ``stop`` for the runs of that page's session in flight, and for no other page's; a run
    that ended is no longer filed."""
    import asyncio
    import inspect
    import time
    from types import SimpleNamespace

    import gradio as gr

    from memlab.app import wiring

    def handler(x, progress=None, stop=None):
        yield x
        t0 = time.perf_counter()
        while not stop.is_set() and time.perf_counter() - t0 < 10:  # a chunk that looks after every step
            time.sleep(0.01)
        yield f"{x} stopped" if stop.is_set() else f"{x} ran on"

    driven = wiring.stoppable(handler)
    assert inspect.signature(driven).parameters["request"].annotation is gr.Request  # Gradio fills it

    async def close_page_a():
        pages = {name: driven(name, None, SimpleNamespace(session_hash=f"page-{name}")) for name in "ab"}
        assert [await u.__anext__() for u in pages.values()] == ["a", "b"]
        rest = {name: asyncio.ensure_future(u.__anext__()) for name, u in pages.items()}
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        wiring.stop_session(SimpleNamespace(session_hash="page-a"))
        a = await asyncio.wait_for(rest["a"], 2.0)
        waited = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        b_running = not rest["b"].done()
        filed = set(wiring._RUNS)
        wiring.stop_session(SimpleNamespace(session_hash="page-b"))
        b = await asyncio.wait_for(rest["b"], 2.0)
        for u in pages.values():
            await u.aclose()
        return a, waited, b_running, b, filed

    a, waited, b_running, b, filed = run_coroutine(close_page_a())
    assert a == "a stopped" and waited < 1.0
    assert b_running and b == "b stopped" and filed == {"page-b"}
    assert "page-a" not in wiring._RUNS and "page-b" not in wiring._RUNS


@pytest.mark.slow
def test_a_long_run_can_be_stopped_and_the_app_keeps_serving(tiny_world):
    """What the Stop button does (Gradio's ``cancels``), through the API, on the app in its own process (the
    browser tests' shared server on this world): the run ends early and the next caller is served at once."""
    import time

    from tests.browser import busy_seconds, shared_app

    url, proc = shared_app(tiny_world)
    job = gradio_client.Client(url, verbose=False).submit("a red ball", 64, "", [], 4, 0.1, 30, 5.0,
                                                          api_name="/generate")
    t0 = time.time()
    while not any(o[0] for o in job.outputs()) and time.time() - t0 < 60:  # (the first update clears)
        time.sleep(0.2)
    assert any(o[0] for o in job.outputs()), "no partial result streamed"
    job.cancel()
    t1 = time.time()
    ok = gradio_client.Client(url, verbose=False).predict("a blue square", 1, "", [], 4, 0.1, 2, 5.0,
                                                          api_name="/generate")
    assert "of 1 seeds" in ok[0]
    waited = time.time() - t1
    assert len(job.outputs()) < 32  # far from all 64 seeds (2 per update)
    assert proc.poll() is None
    assert waited < 30, waited

    # the stopped run is not still generating behind the answer: the server goes quiet (within a few windows)
    shares = busy_seconds(proc)
    assert min(shares) < 0.2, f"the server kept {min(shares):.0%} of a core busy after the run was stopped ({shares})"


def test_top_k_collapses_near_duplicates_into_one_entry_per_group():
    from memlab.service import collapse_matches

    ms = [{"row": 5, "group": 1, "score": 0.99}, {"row": 6, "group": 1, "score": 0.98},
          {"row": 9, "group": 2, "score": 0.90}, {"row": 7, "group": 1, "score": 0.89},
          {"row": 3, "group": 3, "score": 0.80}]
    got = collapse_matches(ms, 2)
    assert [(m["row"], m["copies"]) for m in got] == [(5, 3), (9, 1)]  # best of each group, in rank order
    assert [m["row"] for m in collapse_matches(ms, 10)] == [5, 9, 3]


def test_generate_draws_each_seeds_score_against_the_threshold(client, server):
    out = client.predict("a red ball", 3, "", [], 4, 0.1, 3, 5.0, api_name="/generate")
    fig = json.loads(out[-1]["plot"]) if isinstance(out[-1], dict) and "plot" in out[-1] else out[-1]
    text = json.dumps(fig)
    assert "top-1 score per seed" in text and f"threshold {server[1].threshold()['value']:.3f}" in text
    assert out[2]["data"] and len(out[2]["data"]) == 3


def test_the_seed_chart_names_the_threshold_and_keeps_its_line_and_every_point_inside_the_axis(server):
    """Seeds all above the threshold, one just over it: the dashed line is inside the y range with room below
    (plotly's autorange leaves a shape at its edge, its label on the nearest point), and the title names it."""
    from memlab.app.charts import seed_scores_chart
    from memlab.records import RunState

    lab = server[1]
    thr = lab.threshold()["value"]
    scores = [thr + 0.003, thr + 0.08, thr + 0.15]
    state = RunState(prompt="p", records=[{"seed": i, "score": sc, "verdict": "replicated", "matches": [{"id": i}]}
                                          for i, sc in enumerate(scores)])
    fig = seed_scores_chart(lab, state)
    lo, hi = fig.layout.yaxis.range
    assert lo < thr - 0.01 and hi > max(scores)
    assert f"threshold {thr:.3f}" in fig.layout.title.text
    assert [sh.y0 for sh in fig.layout.shapes] == [thr]
    # both run charts name what the run was made with: its seeds, mitigation and settings (a downloaded chart
    # keeps its source)
    from memlab.app.charts import histogram

    for r in state.records:
        r.update(mitigation={"spec": "rna:k=4,seed=0"}, settings={"steps": 30, "guidance": 5.0})
    for fig in (seed_scores_chart(lab, state), histogram(lab, scores, records=state.records)):
        said = fig.layout.title.text.replace("<br>", " ").replace("<sup>", "").replace("</sup>", "")
        assert "3 seeds · mitigation rna:k=4,seed=0 · 30 steps, guidance 5" in " ".join(said.split()), said
    from memlab.app.charts import compare_figure, copy_recall_chart

    assert "ground_truth" not in lab.threshold() and copy_recall_chart(lab) is None  # no copies measured: no chart
    summ = [{"mitigation": {"name": n, "spec": n}, "descriptor": {"name": lab.descriptor.name}, "n_seeds": 3,
             "replication_rate": 0.5, "dataset_similarity": {"p95": thr}} for n in ("none", "rna")]
    fig = compare_figure(lab, RunState(prompt="p", records=state.records, summaries=summ))
    said = " ".join(fig.layout.title.text.replace("<br>", " ").replace("<sup>", "").replace("</sup>", "").split())
    assert "the same 3 seeds for every strategy · 30 steps, guidance 5" in said and lab.descriptor.name in said
    # each rate's bar carries its 95% interval over its seeds (Wilson's), its label above the whisker
    from memlab import metrics

    for sm, k in zip(summ, (2, 0)):
        sm.update(replication_rate=k / 4, n_seeds=4, replication_interval=metrics.rate_interval([1] * k + [0] * (4 - k)))
    fig = compare_figure(lab, RunState(prompt="p", records=state.records, summaries=summ))
    bar, label = fig.data[:2]
    words = fig.layout.title.text.replace("<br>", " ").replace("<sup>", "").replace("</sup>", "")
    assert "whiskers: each rate's 95% interval (Wilson)" in " ".join(words.split())
    for j, sm in enumerate(summ):
        iv = sm["replication_interval"]
        assert bar.y[j] + bar.error_y.array[j] == pytest.approx(100 * iv["high"])
        assert bar.y[j] - bar.error_y.arrayminus[j] == pytest.approx(100 * max(iv["low"], 0))
        assert label.y[j] == pytest.approx(100 * iv["high"]) and label.text[j] == f"{100 * sm['replication_rate']:.1f}%"
    assert bar.error_y.array[1] > 0  # 0 of 4 seeds still fits a true rate up to about half


def test_a_finished_run_and_each_compare_row_carry_carlinis_clique(server):
    """The app's summaries are made from records, which keep no vectors: the run's last update (and each row of a
    comparison) embeds its images again for Carlini et al.'s clique, recomputed here; earlier updates have none."""
    from memlab import metrics

    lab = server[1]
    updates, state = [], None
    for state in lab.generate_stream("a red ball", [0, 1, 2, 3], "none", lab.settings(2, 5.0), chunk=2):
        updates.append((len(state.records), state.summaries[0]))
    assert [n for n, _ in updates] == [2, 4] and "generation_clique" not in updates[0][1]
    final = updates[-1][1]
    d = lab.get_descriptor()
    v = d.embed(state.images)
    size = metrics.largest_clique(v @ v.T, d.duplicate_threshold)
    assert final["generation_clique"]["largest"] == size and final["generation_clique"]["seeds"] == 4
    assert final["detections_mean"]["carlini"] == pytest.approx(size / 4)
    comp = lab.compare("a red ball", [0, 1, 2], ["rna:k=2"], lab.settings(2, 5.0))
    assert [s["generation_clique"]["seeds"] for s in comp.summaries] == [3, 3]


def test_an_idle_server_leaves_the_cpu_to_generation(server):
    """Gradio's queue polls 1,000 times a second on Linux; the app slows it (memlab.app.serve.calm_queue), since each
    wake takes the GIL from the generating thread. Measured: the event loop's CPU time while idle."""
    import threading
    import time

    import uvicorn

    from memlab.app.serve import QUEUE_POLL_S
    from tests.browser import cpu_seconds

    loops = [t for t in threading.enumerate()
             if isinstance(getattr(getattr(t, "_target", None), "__self__", None), uvicorn.Server)]
    assert loops, "the server's event-loop thread was not found"

    def cpu_s(tid):
        return cpu_seconds(f"/proc/self/task/{tid}/stat")

    # idle: the quietest of up to eight 2-second windows (a stream an earlier test left finishing, or the machine's
    # load, can keep one window busy; an event loop polling every millisecond is busy in all of them)
    shares = []
    for _ in range(8):
        before = {t.native_id: cpu_s(t.native_id) for t in loops}
        time.sleep(2.0)
        shares.append(max(cpu_s(tid) - c for tid, c in before.items()) / 2.0)
        if shares[-1] < 0.03:
            break
    assert QUEUE_POLL_S >= 0.05
    assert min(shares) < 0.03, f"the idle event loop took {min(shares):.1%} of a core at least ({shares})"


def test_the_apps_image_files_are_pruned_after_a_day_and_reuse_keeps_them(tmp_path, monkeypatch):
    """A hosted app writes a PNG per pair it shows; memlab.app.serve.prune_app_files deletes those a day old, and a
    file reused by a request is fresh again (never pruned from under it)."""
    import os
    import tempfile
    import time

    from PIL import Image

    from memlab.app import serve as ui

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a = ui.as_file(Image.new("RGB", (8, 8), (255, 0, 0)))
    b = ui.as_file(Image.new("RGB", (8, 8), (0, 0, 255)))
    assert a != b and os.path.dirname(a) == str(tmp_path / "memlab-app")
    day_ago = time.time() - ui.FILE_MAX_AGE_S - 60
    for p in (a, b):
        os.utime(p, (day_ago, day_ago))
    assert ui.as_file(Image.new("RGB", (8, 8), (255, 0, 0))) == a  # reused: touched
    assert time.time() - os.path.getmtime(a) < 60
    assert ui.prune_app_files() == 1
    assert os.path.exists(a) and not os.path.exists(b)
    assert ui.prune_app_files(now=time.time() + ui.FILE_MAX_AGE_S + 60) == 1 and not os.path.exists(a)


def test_the_apps_downloads_each_get_a_folder_and_are_pruned_after_a_day(tmp_path, monkeypatch):
    """Every export (a run, a comparison, a keyword view, variants) is written by memlab.app.serve.download_path:
    two visitors' run.zip never share a folder, and a hosted app keeps no download past a day (each used to
    leave a temporary folder behind for good)."""
    import os
    import tempfile
    import time
    from pathlib import Path

    from memlab.app import serve as ui

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a, b = ui.download_path("run.zip"), ui.download_path("run.zip")
    assert a.name == b.name == "run.zip" and a.parent != b.parent
    assert a.parent.parent == b.parent.parent == tmp_path / "memlab-app" / "downloads"
    a.write_bytes(b"zip"), b.write_bytes(b"zip")
    day_ago = time.time() - ui.FILE_MAX_AGE_S - 60
    os.utime(a.parent, (day_ago, day_ago))
    assert ui.prune_app_files() == 1
    assert not a.parent.exists() and b.is_file() and ui.downloads().is_dir()
    assert ui.prune_app_files(now=time.time() + ui.FILE_MAX_AGE_S + 60) == 1 and not b.parent.exists()
    app_dir = Path(ui.__file__).parent
    assert not [f.name for f in app_dir.glob("*.py") if "mkdtemp" in f.read_text()], "a download outside download_path"


def test_a_large_index_training_set_views_read_only_the_columns_they_show(tiny_world, monkeypatch):
    """On a LAION-scale index the training-set views read id, caption, duplicates and group alone (its URLs and
    other metadata stay on disk), with the answers a small index gives from its whole table."""
    from memlab import index
    from memlab.service import Lab
    from memlab.world import World

    small = Lab(World.load(tiny_world), device="cpu")
    monkeypatch.setattr(index, "SMALL_ITEMS", 1)
    large = Lab(World.load(tiny_world), device="cpu")
    for lab in (small, large):
        lab.answers = (lab.search_captions("colour field"), lab.duplicate_groups(), lab.distinct_captions(),
                       lab.item_row(str(lab.search_captions("colour field")["id"].iloc[2])))
    assert large.index._items is None and list(large._table().columns) == ["id", "caption", "duplicates", "group"]
    for a, b in zip(small.answers, large.answers):
        assert (a.equals(b) if hasattr(a, "equals") else a == b)


def test_a_match_that_is_not_replicated_names_both_edges_of_its_verdict(client, server, tmp_path):
    """Match an image: where the upload is not replicated, its verdict line gives the two scores that decide the
    three levels (the threshold and the possible-copy band's edge, the index's own), and reads "novel" rather
    than "not replicated"; a training image matched as itself is replicated and says no more."""
    from PIL import Image

    from gradio_client import handle_file

    lab = server[1]
    thr, possible = lab.index.threshold()["value"], lab.index.possible()["value"]
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (250, 10, 250)).save(flat)
    md = client.predict(handle_file(str(flat)), 3, None, api_name="/match_image")[0]
    assert f"(replicated above {thr:.3f}, a possible copy above {possible:.3f})" in md
    assert ": **novel**" in md or ": a **possible copy**" in md
    own = tmp_path / "own.png"
    with Image.open(lab.index.image_path(0)) as im:
        im.save(own)
    md = client.predict(handle_file(str(own)), 3, None, api_name="/match_image")[0]
    assert ": **replicated**" in md and "possible copy above" not in md


def test_a_batch_gives_its_replication_rate_its_interval_and_each_images_top1(client, server, tmp_path):
    """Match a batch (/match_batch): two training images matched as themselves and a flat field no training image
    resembles give 2 of 3 replicated, Wilson's interval for 2 of 3 (recomputed here by its formula), a table row
    per image with its verdict and top-1 id, and the dataset similarity beside the training set's background; a
    file that is not an image is left out and named by its file name (not the server's folder); the whole result
    comes as `match --json`'s JSON; past the batch's limit the caller is told the limit."""
    import math

    from PIL import Image

    from gradio_client import handle_file

    from memlab.limits import LIMITS

    lab = server[1]
    own = []
    for row in (0, 5):
        own.append(tmp_path / f"own{row}.png")
        with Image.open(lab.index.image_path(row)) as im:
            im.save(own[-1])
    flat, text = tmp_path / "flat.png", tmp_path / "notes.png"
    Image.new("RGB", (64, 64), (250, 10, 250)).save(flat)
    text.write_text("not an image, whatever the name says")
    files = [handle_file(str(f)) for f in (*own, flat, text)]
    md, table, result = client.predict(files, None, api_name="/match_batch")
    rows = {r[0]: r for r in table["data"]}
    assert set(rows) == {"own0.png", "own5.png", "flat.png"} and table["headers"][:3] == ["image", "verdict", "score"]
    items = lab.index.items["id"].astype(str).tolist()
    assert [rows["own0.png"][1], str(rows["own0.png"][3])] == ["replicated", items[0]]
    assert [rows["own5.png"][1], str(rows["own5.png"][3])] == ["replicated", items[5]]
    assert rows["flat.png"][1] != "replicated"
    z, n, k = 1.959963984540054, 3, 2  # Wilson's score interval for 2 of 3
    mid = (k / n + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert "2 of 3 images [replicated](#g-replicated): 66.7%" in md
    assert f"{mid - half:.1%}-{mid + half:.1%}" in md
    assert lab.descriptor_label() in md.replace("\\", "") and "dataset similarity" in md and "background" in md
    assert "notes.png" in md and "left out" in md and str(tmp_path) not in md and "/tmp" not in md
    saved = json.loads(open(result).read())  # the whole result as `memlab match --json` writes it
    assert [q["image"] for q in saved["queries"]] == ["own0.png", "own5.png", "flat.png"]
    assert saved["summary"]["replication_rate"] == sum(q["verdict"] == "replicated" for q in saved["queries"]) / 3
    assert saved["skipped"][0]["image"] == "notes.png" and saved["descriptor"]["name"] == lab.descriptor.name
    assert "/tmp" not in json.dumps(saved["queries"]) + json.dumps(saved["skipped"])
    too_many = [handle_file(str(flat))] * (LIMITS["match_batch"] + 1)
    with pytest.raises(Exception, match=f"at most {LIMITS['match_batch']}"):
        client.predict(too_many, None, api_name="/match_batch")


def test_a_batch_decodes_one_upload_at_a_time(server, tmp_path, monkeypatch):
    """Lab.match_batch holds one decoded upload in memory at a time: 16 flat fields of 40 megapixels compress to
    a few MiB (within the upload cap) but would decode to gigabytes together. Checked on small files: every
    chunk the matcher sees is one image, and the batch's answer is the one a single chunk gives."""
    from PIL import Image

    from memlab import match

    lab = server[1]
    files = []
    for i, colour in enumerate([(250, 10, 250), (10, 200, 30), (0, 0, 0)]):
        files.append(str(tmp_path / f"f{i}.png"))
        Image.new("RGB", (64, 64), colour).save(files[-1])
    seen, inner = [], match._match_chunk

    def counted(index, descriptor, images, k):
        seen.append(len(images))
        return inner(index, descriptor, images, k)
    monkeypatch.setattr(match, "_match_chunk", counted)
    res = lab.match_batch(files, 1, None)
    assert seen == [1, 1, 1]
    whole = match.match_paths(lab.index, lab.descriptor, files, k=1)  # all three in one chunk
    assert seen[-1] == 3 and [q["score"] for q in res["queries"]] == [q["score"] for q in whole["queries"]]


def test_the_phone_row_names_the_tabs_the_page_has_and_follows_them_by_id(server):
    """The "Go to" row offers the tabs this page built, in their order, and a tab opened from the bar marks its
    own id: the tiny world has no lesson, so the row has no Lesson and the second tab is Compare (reading the
    opened tab's index into the full list once marked Lesson when Compare was opened)."""
    import gradio as gr

    from memlab.app import PHONE_TABS, build_app, follow_tab

    demo = build_app(server[1])
    built = [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    row = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "phone-tabs")
    assert "lesson" not in built and [tab for _, tab in row.choices] == built
    assert set(built) <= {tab for _, tab in PHONE_TABS}  # every tab has its place in the row
    opened = gr.SelectData(None, {"index": 1, "value": "Compare mitigations"})
    assert follow_tab(built)(opened) == "compare"
    intro = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "intro").value
    assert "Lesson" not in intro and "Pick an example prompt" in intro  # nor does its first screen point at one
