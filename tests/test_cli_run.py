"""memlab run: records, images, reproducibility, clear errors."""
import json

import sys

import pytest

from memlab.cli import main as memlab_main


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strip_timing(recs):
    return [{k: v for k, v in r.items() if k != "timing"} for r in recs]


def test_run_records_and_bit_for_bit_reproduction(tiny_world, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball on a table\na blue square in the sky\n")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "results.jsonl"
        assert memlab_main(["run", "--world", str(tiny_world), "--prompts", str(prompts), "--seeds", "0-7",
                            "--mitigation", "none", "--mitigation", "rna:k=2", "--mitigation", "gni",
                            "--steps", "3", "--out", str(out)]) == 0
        outs.append(out)
    ra, rb = _records(outs[0]), _records(outs[1])
    assert _strip_timing(ra) == _strip_timing(rb)
    seeds = [r for r in ra if r["type"] == "seed"]
    summaries = [r for r in ra if r["type"] == "summary"]
    assert len(seeds) == 2 * 3 * 8 and len(summaries) == 2 * 3
    for r in seeds:
        a = (outs[0].parent / r["image"]).read_bytes()
        assert a == (outs[1].parent / r["image"]).read_bytes()
        assert {"prompt", "mitigation", "seed", "effective_prompt", "image", "matches", "replicated",
                "threshold", "detection"} <= set(r)
        assert {"id", "file", "caption", "score", "duplicates"} <= set(r["matches"][0])
        assert r["descriptor"]["model"] and r["descriptor"]["preset"] and r["settings"]["steps"] == 3
    for s in summaries:
        assert 0.0 <= s["replication_rate"] <= 1.0 and s["n_seeds"] == 8
        assert {"p95", "mean", "std", "p75", "p90", "frac_above"} <= set(s["dataset_similarity"])
        assert {"load_s", "generate_s", "embed_s", "search_s", "metrics_s"} <= set(s["timing"])
    # same seeds for each mitigation; the summaries state the change against none
    by = {(r["prompt"], r["mitigation"]["name"]): r for r in summaries}
    assert by[("a red ball on a table", "rna")]["seeds"] == by[("a red ball on a table", "none")]["seeds"]
    assert "change_vs_none" in by[("a red ball on a table", "gni")]
    assert "change_vs_none" not in by[("a red ball on a table", "none")]
    rna = [r for r in seeds if r["mitigation"]["name"] == "rna"]
    assert all(r["effective_prompt"] != r["prompt"] for r in rna)
    assert rna[0]["mitigation"]["steps"][0]["params"] == {"k": 2, "seed": 0}


def test_run_with_model_and_index(tiny_world, tmp_path, capsys):
    """A model and an index run with the generic settings; an index that is a world's says so, since its card
    was measured with the world's own settings and calibrations (``--world``)."""
    out = tmp_path / "r.jsonl"
    assert memlab_main(["run", "--model", str(tiny_world / "model"), "--index", str(tiny_world / "index"),
                        "--prompt", "a cat", "--seeds", "1,3", "--steps", "2", "--out", str(out)]) == 0
    assert [r["seed"] for r in _records(out) if r["type"] == "seed"] == [1, 3]
    recs = [r for r in _records(out) if r["type"] == "seed"]
    assert recs[0]["settings"]["guidance"] == 7.5  # the generic default, not the world's 5.0
    err = capsys.readouterr().err
    assert f"is the index of the world {tiny_world.resolve()}" in err and "guidance 7.5" in err
    assert f"--world {tiny_world.resolve()} runs it as its card does" in err
    from memlab.index import TrainingIndex

    idx = TrainingIndex.load(tiny_world / "index")  # every score below names its source, once before them
    info = idx.descriptor_info()
    assert (f"scores: {idx.default_descriptor} (model {info['model']}, preset {info['preset']}), threshold "
            f"{info['threshold']['value']:.3f} ({info['threshold']['source']}); 2 steps, guidance 7.5") in err
    assert memlab_main(["run", "--model", str(tiny_world / "model"), "--index", str(tiny_world / "index"),
                        "--prompt", "a cat", "--seeds", "1", "--steps", "2", "--guidance", "5",
                        "--out", str(out)]) == 0
    assert "is the index of the world" not in capsys.readouterr().err  # both settings given: nothing to say


@pytest.mark.parametrize("extra, msg", [
    (["--prompt", "  "], "prompt is empty"),
    (["--prompt", "x", "--seeds", "0-5000"], "at most 1000"),
    (["--prompt", "x", "--seeds", "-3"], "out of range"),
    (["--prompt", "x", "--mitigation", "magic"], "unknown mitigation"),
    (["--prompt", "x", "--mitigation", "rna:kk=1"], "unknown parameter"),
    (["--prompt", "x", "--descriptor", "sscd"], "has no 'sscd' descriptor"),
    (["--prompt", "x", "--model", "MODEL_NOT_PIPELINE", "--index", "INDEX"], "not a diffusers pipeline"),
    (["--prompt", "x", "--steps", "0"], "steps"),
    (["--prompt", "x", "--out", "FOLDER"], "is a folder: name the results file"),
])
def test_run_errors_are_clear(extra, msg, tiny_world, tmp_path, capsys):
    subst = {"MODEL_NOT_PIPELINE": str(tmp_path), "INDEX": str(tiny_world / "index"), "FOLDER": str(tmp_path)}
    args = ["run", "--out", str(tmp_path / "o.jsonl")] + [subst.get(a, a) for a in extra]
    if "--model" not in extra:
        args += ["--world", str(tiny_world)]
    assert memlab_main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_long_prompt_warns_and_runs(tiny_world, tmp_path, capsys):
    long = " ".join(f"word{i}" for i in range(80))
    assert memlab_main(["run", "--world", str(tiny_world), "--prompt", long, "--seeds", "0", "--steps", "2",
                        "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "truncated after" in capsys.readouterr().err


def test_prompts_csv_with_caption_column(tiny_world, tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("Caption;URL\na red ball;http://x\na blue cube;http://y\n")  # NeMo's ;-separated form
    out = tmp_path / "o.jsonl"
    assert memlab_main(["run", "--world", str(tiny_world), "--prompts", str(f), "--seeds", "0", "--steps", "2",
                        "--out", str(out)]) == 0
    assert {r["prompt"] for r in _records(out)} == {"a red ball", "a blue cube"}


def test_run_records_token_attribution_when_asked(tiny_world, tiny_generator, tmp_path):
    from memlab.generate import Settings

    out = tmp_path / "att.jsonl"
    assert memlab_main(["run", "--world", str(tiny_world), "--prompt", "a red ball on a table", "--seeds", "0-5",
                        "--mitigation", "none", "--mitigation", "gni", "--steps", "3", "--attribution",
                        "--out", str(out)]) == 0
    summaries = [r for r in _records(out) if r["type"] == "summary"]
    att = summaries[0]["token_attribution"]
    assert att["seeds"] == [0, 1, 2, 3] and att["steps"] == 1 and "input embedding" in att["definition"]
    assert [t["token"] for t in att["tokens"]][1:4] == ["a", "red", "ball"]
    expect = tiny_generator.token_attribution("a red ball on a table", seeds=[0, 1, 2, 3],
                                              settings=Settings(steps=3, guidance=5.0))
    assert [t["attribution"] for t in att["tokens"]] == pytest.approx([t["attribution"] for t in expect], rel=1e-4)
    assert summaries[1]["token_attribution"] == att


def test_run_help_names_every_registered_mitigation(capsys):
    """`run --help` listed six mitigations while nine are registered (ren, nemo and jain were missing): the list
    is the registry's."""
    import re

    from memlab.cli import main
    from memlab.mitigations import MITIGATIONS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    known = re.search(r"\(known: ([^)]*)\)", text).group(1)
    assert known.split(", ") == list(MITIGATIONS)


def test_the_console_scripts_name_themselves_as_typed(capsys, monkeypatch):
    """Installed as the console scripts `memlab` and `index_builder`, usage and errors said `python -m memlab`;
    each names the program as it was run, and `python -m` keeps its own name."""
    from index_builder.__main__ import main as builder_main
    from memlab.cli import main

    for argv0, said in (("/venv/bin/memlab", "usage: memlab run"), ("-m", "usage: python -m memlab run")):
        monkeypatch.setattr(sys, "argv", [argv0])
        with pytest.raises(SystemExit):
            main(["run", "--help"])
        assert capsys.readouterr().out.startswith(said)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/index_builder"])
    with pytest.raises(SystemExit):
        builder_main(["add", "--no-such-option"])
    assert "see `index_builder add --help`" in capsys.readouterr().err


def test_each_verbs_help_shows_its_example_command_as_written(capsys):
    """`memlab VERB --help` reflowed its docstring, so the example command ran into the prose with its line
    continuation in the middle (`... --mitigation none \\ --mitigation rna:k=4`); the lines are kept as written."""
    import importlib

    from memlab.cli import VERBS, main

    for verb, (modname, _) in VERBS.items():
        with pytest.raises(SystemExit):
            main([verb, "create", "--help"] if verb == "world" else [verb, "--help"])
        out = capsys.readouterr().out
        examples = [ln.strip() for ln in (importlib.import_module(modname).__doc__ or "").splitlines()
                    if ln.strip().startswith("python -m memlab")]
        for line in examples:
            assert any(o.strip() == line for o in out.splitlines()), (verb, line)


def test_the_generation_clique_is_recomputed_from_the_written_images(tiny_world, tmp_path):
    """Carlini et al.'s detector in a run's summary: the largest clique of its generations near-identical by the
    index descriptor's near-duplicate cut, recomputed here from the images the run wrote (embedded again), and
    its share of the seeds as ``detections_mean["carlini"]``."""
    from PIL import Image

    from memlab import metrics
    from memlab.index import TrainingIndex
    from memlab.match import descriptor_for_index

    out = tmp_path / "r.jsonl"
    assert memlab_main(["run", "--world", str(tiny_world), "--prompt", "a red ball on a table", "--seeds", "0-5",
                        "--mitigation", "none", "--steps", "2", "--out", str(out)]) == 0
    recs = _records(out)
    summary = next(r for r in recs if r["type"] == "summary")
    index = TrainingIndex.load(tiny_world / "index")
    d = descriptor_for_index(index)
    v = d.embed([Image.open(tmp_path / r["image"]).convert("RGB") for r in recs if r["type"] == "seed"])
    size = metrics.largest_clique(v @ v.T, d.duplicate_threshold)
    assert summary["generation_clique"] == {"largest": size, "seeds": 6, "cut": d.duplicate_threshold,
                                            "descriptor": d.name, "score": "cosine of the generations as given"}
    assert summary["detections_mean"]["carlini"] == pytest.approx(size / 6)
    index.close()


def test_a_sweep_of_one_mitigation_keeps_each_strategys_images(tiny_world, tmp_path):
    """`--mitigation rna:k=1 --mitigation rna:k=3` (a sweep, the natural experiment) wrote both strategies' images
    under one name, the second over the first, so the first's records pointed at the other's generations. Each
    strategy's images now have a name of their own, and each record's image is its own generation."""
    import hashlib

    out = tmp_path / "r.jsonl"
    assert memlab_main(["run", "--world", str(tiny_world), "--prompt", "a red ball on a table", "--seeds", "0-1",
                        "--mitigation", "none", "--mitigation", "rna:k=1", "--mitigation", "rna:k=3",
                        "--steps", "2", "--out", str(out)]) == 0
    seeds = [r for r in _records(out) if r["type"] == "seed"]
    assert len(seeds) == 6 and len({r["image"] for r in seeds}) == 6
    assert len(list((tmp_path / "images").glob("*.png"))) == 6
    digest = {r["image"]: hashlib.sha256((tmp_path / r["image"]).read_bytes()).hexdigest() for r in seeds}
    k1 = [digest[r["image"]] for r in seeds if r["mitigation"]["spec"].startswith("rna:k=1")]
    k3 = [digest[r["image"]] for r in seeds if r["mitigation"]["spec"].startswith("rna:k=3")]
    assert len(k1) == len(k3) == 2 and set(k1).isdisjoint(k3)  # k=1 and k=3 insert other numbers: other images


def test_a_stopped_run_over_a_prompt_list_resumes_after_its_finished_prompts(tiny_world, tmp_path, monkeypatch,
                                                                            capsys):
    """A run over a list stopped in its third prompt keeps the two it finished (and not a line the stop cut),
    generates only the rest when started again, and ends in the records an unstopped run writes."""
    from tests.helpers import prompts_run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball on a table\na blue square in the sky\na green star at night\n")
    args = ["run", "--world", str(tiny_world), "--prompts", str(prompts), "--seeds", "0-2", "--mitigation", "none",
            "--mitigation", "rna:k=2", "--steps", "2"]
    whole = tmp_path / "whole" / "r.jsonl"
    assert memlab_main(args + ["--out", str(whole)]) == 0
    prompts_run(monkeypatch, stop_after=2)
    out = tmp_path / "stopped" / "r.jsonl"
    assert memlab_main(args + ["--out", str(out)]) == 130
    assert "stopped: 2 of 3 prompts finished" in capsys.readouterr().err
    part = out.with_name("r.jsonl.part")
    assert not out.exists() and len(part.read_text().splitlines()) == 2 * 2 * (3 + 1)
    left = {f: f.read_bytes() for f in (part, part.with_name("r.jsonl.part.json"))}
    with open(part, "a") as f:
        f.write('{"type": "seed", "prompt": "a green st')  # a line cut by a stop
    ran = prompts_run(monkeypatch)
    capsys.readouterr()
    assert memlab_main(args + ["--out", str(out)]) == 0
    assert ran == ["a green star at night"] and "2 of 3 prompts were finished" in capsys.readouterr().err
    assert _strip_timing(_records(out)) == _strip_timing(_records(whole))
    assert not part.exists() and not part.with_name("r.jsonl.part.json").exists()
    assert (out.parent / "r.comparison.json").exists()
    # a run of other arguments, or --no-resume, starts over
    for other in (args[:-1] + ["3"], args + ["--no-resume"]):
        for f, b in left.items():
            f.write_bytes(b)
        ran.clear()
        assert memlab_main(other + ["--out", str(out)]) == 0 and len(ran) == 3


def test_run_takes_each_prompt_given_and_says_how_sure_each_rate_and_change_is(tiny_world, tmp_path, capsys):
    """``--prompt`` twice runs both (it kept only the last); each summary's interval counts its own seeds, each
    mitigation's paired change counts seed by seed against none, and the comparison's change over prompts is
    the mean of the prompts' changes."""
    out = tmp_path / "r.jsonl"
    assert memlab_main(["run", "--world", str(tiny_world), "--prompt", "a red ball", "--prompt", "a blue square",
                        "--seeds", "0-3", "--mitigation", "none", "--mitigation", "rna:k=2", "--steps", "2",
                        "--out", str(out)]) == 0
    recs = _records(out)
    assert sorted({r["prompt"] for r in recs}) == ["a blue square", "a red ball"]
    seeds = [r for r in recs if r["type"] == "seed"]
    for s in (r for r in recs if r["type"] == "summary"):
        mine = [r for r in seeds if r["prompt"] == s["prompt"] and r["mitigation"] == s["mitigation"]]
        iv = s["replication_interval"]
        assert (iv["k"], iv["n"]) == (sum(r["replicated"] for r in mine), 4) and iv["low"] <= s["replication_rate"] <= iv["high"]
        if s["mitigation"]["name"] == "rna":
            base = {r["seed"]: r["replicated"] for r in seeds if r["prompt"] == s["prompt"]
                    and r["mitigation"]["name"] == "none"}
            pc = s["change_vs_none"]["paired"]
            assert pc["fewer"] == sum(base[r["seed"]] and not r["replicated"] for r in mine)
            assert pc["more"] == sum(r["replicated"] and not base[r["seed"]] for r in mine)
            assert pc["paired"] == 4
    comp = json.loads((tmp_path / "r.comparison.json").read_text())["mitigations"]["rna:k=2"]
    summ = {(r["prompt"], r["mitigation"]["name"]): r["replication_rate"] for r in recs if r["type"] == "summary"}
    change = sum(summ[(p, "rna")] - summ[(p, "none")] for p in ("a red ball", "a blue square")) / 2
    assert comp["change_interval"]["prompts"] == 2 and comp["change_interval"]["change"] == pytest.approx(change)
    assert comp["change_interval"]["low"] <= change <= comp["change_interval"]["high"]
    assert "95% CI" in capsys.readouterr().err
