"""What a record names as its model: a Hub id at the commit it resolved to, a local folder by its files'
fingerprint, and the library versions that ran it; a world loads the model it was calibrated on."""
from __future__ import annotations

import json
import shutil
from importlib.metadata import version

import pytest

A, B = "a" * 40, "b" * 40  # two commits of one Hub repository


def _bump(folder, delta=0.5):
    """Change one weight of a pipeline folder's UNet (as a new commit or an edited copy would)."""
    from safetensors.numpy import load_file, save_file

    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    w["conv_in.bias"] = w["conv_in.bias"] + delta
    save_file(w, f)
    return float(w["conv_in.bias"][0])


def _bias(gen) -> float:
    return float(gen.pipe.unet.conv_in.bias[0].detach())


@pytest.fixture
def hub(tiny_pipeline_dir, tmp_path, monkeypatch):
    """A Hub cache laid out as huggingface_hub lays it out, offline: someone/pipe at commits A and B (one weight
    differs), its main branch at B, a tag v1 at A. Returns each commit's first conv_in bias."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someone--pipe"
    bias = {}
    for commit, delta in ((A, 0.0), (B, 0.5)):
        shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / commit)
        bias[commit] = _bump(repo / "snapshots" / commit, delta)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(B)
    (repo / "refs" / "v1").write_text(A)  # a tag at the older commit
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return bias


def test_a_hub_model_is_named_by_its_commit_and_loaded_at_the_revision_asked(hub):
    from memlab.errors import MemlabError
    from memlab.generate import Generator

    main = Generator.from_pretrained("someone/pipe", device="cpu")
    assert main.identity == {"revision": B, "fingerprint": None}  # the main branch, resolved to its commit
    assert _bias(main) == pytest.approx(hub[B])
    for asked in (A, "v1"):  # by commit, and by a tag resolved to it
        old = Generator.from_pretrained("someone/pipe", device="cpu", revision=asked)
        assert old.identity["revision"] == A and _bias(old) == pytest.approx(hub[A])
    info = old.info()
    assert info["model"] == "someone/pipe" and info["revision"] == A
    assert info["software"] == {"memlab": __import__("memlab").__version__, "python": info["software"]["python"],
                                **{n: version(n) for n in ("torch", "diffusers", "transformers", "numpy",
                                                           "pillow", "torchvision", "open_clip_torch")}}
    from memlab.records import software

    assert software() == info["software"]  # what `match --json` names too (its summary)
    for bad in ("../../../etc", "main/../..", "a b"):
        with pytest.raises(MemlabError, match="revision must name a branch, tag or commit"):
            Generator.from_pretrained("someone/pipe", device="cpu", revision=bad)
    with pytest.raises(MemlabError, match=f"cannot load the pipeline someone/pipe at revision {'c' * 40}"):
        Generator.from_pretrained("someone/pipe", device="cpu", revision="c" * 40)


def test_a_local_folder_is_named_by_the_fingerprint_of_the_files_it_loads(tiny_pipeline_dir, tmp_path):
    from memlab.errors import MemlabError
    from memlab.generate import Generator
    from memlab.indexfiles import sha256
    from memlab.pipeload import fingerprint, loaded_files

    d = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, d)
    gen = Generator.from_pretrained(d, device="cpu")
    files = loaded_files(d)
    assert files[0].name == "model_index.json" and {f.parent.name for f in files[1:]} >= {"unet", "vae",
                                                                                          "text_encoder", "tokenizer"}
    import hashlib  # recomputed: each loaded file's path and sha256, in order

    want = hashlib.sha256("".join(f"{f.relative_to(d).as_posix()}\t{sha256(f)}\n" for f in files).encode())
    assert gen.identity == {"revision": None, "fingerprint": want.hexdigest()}
    (d / "unet" / "notes.md").write_text("a note")  # a file no component loads
    (d / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a variant memlab does not load")
    assert fingerprint(d) == want.hexdigest()
    kept = (d / "model_index.json").read_bytes()
    index = json.loads(kept)  # a key naming a path is no component: not read
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text("{}")
    (d / "model_index.json").write_text(json.dumps({**index, "../outside": ["diffusers", "UNet2DConditionModel"]}))
    assert [f.name for f in loaded_files(d)] == [f.name for f in files]
    (d / "model_index.json").write_bytes(kept)
    assert fingerprint(d) == want.hexdigest()
    _bump(d)
    assert fingerprint(d) != want.hexdigest()
    with pytest.raises(MemlabError, match="is a local folder: a revision names a commit"):
        Generator.from_pretrained(d, device="cpu", revision=A)


def test_a_world_loads_the_model_it_was_calibrated_on(hub, tiny_world, tiny_pipeline_dir, tmp_path, capsys):
    from memlab.errors import MemlabError
    from memlab.pipeload import fingerprint
    from memlab.world import World, write_world_json

    def world(name, **entries):
        w = tmp_path / name
        shutil.copytree(tiny_world / "index", w / "index")
        write_world_json(w, name=name, index="index", defaults={"steps": 2}, **entries)
        return w

    pinned = World.load(world("pinned", model="someone/pipe", model_revision=A))
    gen = pinned.generator(device="cpu")
    assert gen.identity["revision"] == A and _bias(gen) == pytest.approx(hub[A])
    from memlab.service import Lab

    assert Lab(pinned).model_description() == f"someone/pipe at commit `{A[:12]}`"  # the About tab's words
    from PIL import Image

    from memlab.match import descriptor_for_index, match_images
    from memlab.records import software

    idx = pinned.index()  # a match names the versions its scores depend on, and the index it searched
    res = match_images(idx, descriptor_for_index(idx), [Image.new("RGB", (16, 16))])
    assert res["summary"]["software"] == software()
    import hashlib

    manifest = (pinned.index_path / "manifest.json").read_bytes()
    assert res["descriptor"]["index"] == {"sha256": hashlib.sha256(manifest).hexdigest(), "items": 30,
                                          "built": json.loads(manifest)["created"]}
    Image.new("RGB", (16, 16)).save(tmp_path / "q.png")
    from memlab.cli import main as memlab_main

    capsys.readouterr()
    assert memlab_main(["match", "--index", str(pinned.index_path), "--images", str(tmp_path / "q.png")]) == 0
    assert f"index {hashlib.sha256(manifest).hexdigest()[:12]} (its manifest's sha256; 30 items" in \
        capsys.readouterr().out  # the table names it too
    assert World.load(world("main", model="someone/pipe")).generator(device="cpu").identity["revision"] == B

    local = tmp_path / "local-pipe"
    shutil.copytree(tiny_pipeline_dir, local)
    w = world("local", model=str(local), model_fingerprint=fingerprint(local))
    assert World.load(w).generator(device="cpu").identity["fingerprint"] == fingerprint(local)
    assert Lab(World.load(w)).model_description().endswith(f"(its files' fingerprint `{fingerprint(local)[:12]}`)")
    _bump(local)
    with pytest.raises(MemlabError, match="is not the one it was calibrated on"):
        World.load(w).generator(device="cpu")
    hub_pinned = world("hub-fingerprint", model="someone/pipe", model_fingerprint=fingerprint(local))
    with pytest.raises(MemlabError, match="fingerprint none: not a local folder"):  # a Hub id has no fingerprint
        World.load(hub_pinned).generator(device="cpu")
    for key, value in (("model_revision", "../../etc/x"), ("model_revision", "main"), ("model_fingerprint", "ab")):
        with pytest.raises(MemlabError, match=f"{key} must be"):
            World.load(world(f"bad-{key}-{len(value)}", model="someone/pipe", **{key: value}))


def test_memlab_run_names_the_commit_and_a_changed_model_starts_a_stopped_run_over(hub, tiny_world, tmp_path,
                                                                                 tiny_pipeline_dir, monkeypatch,
                                                                                 capsys):
    from memlab.cli import main as memlab_main
    from tests.helpers import prompts_run

    base = ["run", "--index", str(tiny_world / "index"), "--prompt", "a red ball", "--seeds", "0-1", "--steps", "2"]
    out = tmp_path / "r.jsonl"
    assert memlab_main(base + ["--model", "someone/pipe", "--revision", A, "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model"]["revision"] for r in recs if r["type"] == "seed"} == {A}
    assert f"generated by someone/pipe at commit {A[:12]}" in capsys.readouterr().err
    assert memlab_main(base + ["--world", str(tiny_world), "--revision", A, "--out", str(out)]) == 2
    capsys.readouterr()  # an empty revision is refused, not read as the main branch
    assert memlab_main(base + ["--model", "someone/pipe", "--revision", "", "--out", str(out)]) == 2
    assert "revision must name a branch, tag or commit" in capsys.readouterr().err

    # a run over a local folder, stopped after its first prompt, resumes only while the folder is unchanged
    local = tmp_path / "local-pipe"
    shutil.copytree(tiny_pipeline_dir, local)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue square\n")
    args = base[:3] + ["--prompts", str(prompts)] + base[5:] + ["--model", str(local), "--out", str(out)]
    prompts_run(monkeypatch, stop_after=1)
    assert memlab_main(args) == 130
    part = out.with_name("r.jsonl.part")
    left = {f: f.read_bytes() for f in (part, part.with_name("r.jsonl.part.json"))}
    ran = prompts_run(monkeypatch)
    assert memlab_main(args) == 0 and ran == ["a blue square"]  # the same model: the first prompt is kept
    for f, b in left.items():
        f.write_bytes(b)
    _bump(local)
    ran.clear()
    assert memlab_main(args) == 0 and ran == ["a red ball", "a blue square"]  # another model: every prompt again
