"""The shipped built-in world: its files against its manifests, its size, and that it is the default."""
import json

import pandas as pd
import pytest

from conftest import ROOT
from memlab.index import TrainingIndex
from memlab.world import ASSETS_WORLD, World, default_world_path

pytestmark = pytest.mark.skipif(not (ASSETS_WORLD / "world.json").is_file(), reason="built-in world not built")


def test_world_files_match_manifest_and_size():
    w = World.load(ASSETS_WORLD)
    idx = TrainingIndex.load(w.index_path)  # verifies every checksum and row count
    assert idx.default_descriptor == "pixel" and idx.threshold()["source"] == "calibrated"
    assert (ASSETS_WORLD / "model" / "model_index.json").is_file()
    assert list((ASSETS_WORLD / "model").rglob("*.safetensors"))
    assert not list(ASSETS_WORLD.rglob("*.bin")) and not list(ASSETS_WORLD.rglob("*.pt"))
    size = sum(p.stat().st_size for p in ASSETS_WORLD.rglob("*") if p.is_file() and "build" not in p.parts)
    assert size < 40 * 2**20
    probes = pd.read_csv(w.file("probes"))
    assert {"prompt", "group", "item"} <= set(probes.columns)
    assert {"unique", "keyword"} <= set(probes["group"]) and any(probes["group"].str.startswith("partial"))
    assert set(probes["item"]) <= set(idx.items["item"])
    # every image the index names is shipped
    assert all(idx.image_path(r).is_file() for r in range(0, len(idx.items), 37))
    card = json.loads(w.file("card").read_text())
    assert card["built_with"].startswith("python -m memlab build-world")
    assert (ASSETS_WORLD / "keywords" / "lighthouse.json").is_file()


def test_builtin_world_is_the_default(monkeypatch):
    monkeypatch.delenv("MEMLAB_WORLD", raising=False)
    assert default_world_path() == ASSETS_WORLD
    assert World.load().name == World.load(ASSETS_WORLD).name


def test_memlab_run_defaults_to_the_builtin_world(tmp_path, monkeypatch):
    from memlab.cli import main

    monkeypatch.delenv("MEMLAB_WORLD", raising=False)
    out = tmp_path / "r.jsonl"
    assert main(["run", "--prompt", "a lighthouse on the coast at sunset", "--seeds", "0-1", "--steps", "4",
                 "--out", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs[0]["model"]["model"].endswith("model") and recs[0]["descriptor"]["name"] == "pixel"


def test_ships_no_shared_data():
    shared = ROOT.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("../shared/data absent")
    import hashlib

    ours = {hashlib.sha1(p.read_bytes()).hexdigest() for p in ASSETS_WORLD.rglob("*") if p.is_file()}
    theirs = {hashlib.sha1(p.read_bytes()).hexdigest() for p in shared.rglob("*") if p.is_file()}
    assert not ours & theirs
