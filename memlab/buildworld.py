"""Build the built-in world from nothing: training set -> trained pipeline -> index -> probes -> card.

Stages write into ``OUT/build`` and are skipped when their output exists (so an interrupted build
resumes); the world itself is ``OUT/world.json``, ``OUT/model`` (fp16 safetensors), ``OUT/index``
(pixel descriptor, calibrated threshold, images inside), ``OUT/probes.csv`` and ``OUT/card.json``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .worldgen import HIDDEN_OBJECT, KEYWORD, WorldSpec, make_training_set, probes

WORLD_DEFAULTS = {"steps": 30, "guidance": 5.0, "scheduler": "ddim", "seeds": "0-7", "k": 5}
WORLD_KEYWORDS = (KEYWORD, "astronaut", "coffee", "cat", "star", "Velmora")


def build_world(out: str | Path, spec: WorldSpec = WorldSpec(), train_steps: int = 2500, vae_steps: int = 800,
                batch_size: int = 32, evaluate: bool = True, eval_seeds: int = 10, progress=None,
                log=lambda m: print(m, file=sys.stderr)) -> Path:
    from .index import build_index
    from .descriptors import create_descriptor
    from .match import load_image
    from .train import TrainConfig, train
    from .world import write_world_json

    out = Path(out)
    build = out / "build"
    times = json.loads((build / "times.json").read_text()) if (build / "times.json").is_file() else {}

    def stage(name):
        times[name] = time.time()

    def done(name):
        times[name] = time.time() - times[name]
        build.mkdir(parents=True, exist_ok=True)
        (build / "times.json").write_text(json.dumps(times, indent=2))
        log(f"[build-world] {name}: {times[name]:.1f}s")

    # 1. the training set
    data = build / "data"
    if not (data / "train.parquet").is_file():
        stage("dataset")
        rows, images = make_training_set(spec)
        (data / "images").mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(data / "images" / f"{i:04d}.png")
        rows.to_parquet(data / "train.parquet", index=False)
        done("dataset")
    import pandas as pd

    rows = pd.read_parquet(data / "train.parquet")

    # 2. the model
    cfg = TrainConfig(data=str(data / "train.parquet"), out=str(build / "train"), pipeline="world",
                      steps=train_steps, vae_steps=vae_steps, batch_size=batch_size, seed=spec.seed,
                      save_dtype="fp16")
    if not (build / "train" / "run_card.json").is_file():
        stage("train")
        train(cfg, progress=progress)
        done("train")
    if not (out / "model" / "model_index.json").is_file():
        shutil.copytree(build / "train" / "pipeline", out / "model", dirs_exist_ok=True)

    # 3. the index of the training set (one row per training sample: duplicates are explicit)
    if not (out / "index" / "manifest.json").is_file():
        stage("index")
        distinct = sorted(set(rows["file"]))

        def copy_images(tmp):
            for f in distinct:
                (tmp / "images" / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / "images" / Path(f).name, tmp / "images" / f)

        build_index(out / "index", rows, lambda i: load_image(data / "images" / Path(rows["file"].iloc[i]).name),
                    [create_descriptor("pixel")], image_root="images", progress=progress,
                    extra_files=copy_images,
                    extra_manifest={"source": {"command": "python -m memlab build-world",
                                               "generator": "memlab.worldgen", "spec": asdict(spec)}})
        done("index")

    # 4. keyword views (Memory Triggers): the planted keyword with its hidden object, and a few more
    if not (out / "keywords" / f"{KEYWORD}.json").is_file():
        from .index import TrainingIndex
        from .keywords import keyword_view, save_view

        stage("keywords")
        index = TrainingIndex.load(out / "index")
        for kw in WORLD_KEYWORDS:
            save_view(out / "keywords", keyword_view(index, kw, objects=[HIDDEN_OBJECT]))
        done("keywords")

    # 5. probes, world.json
    probes(rows).to_csv(out / "probes.csv", index=False)
    write_world_json(out, name="memlab built-in world", model="model", index="index", probes="probes.csv",
                     card="card.json", descriptors=["pixel"], defaults=WORLD_DEFAULTS,
                     trained_on=(f"{rows['item'].nunique()} distinct 64x64 images ({len(rows)} training rows): "
                                 f"procedural scenes, lighthouses and scikit-image photo crops; planted full and "
                                 f"partial duplication at ddf {spec.ddf_high} and {spec.ddf_low}"),
                     keywords={KEYWORD: {"hidden_object": HIDDEN_OBJECT, "planted_share": spec.flag_share}})

    # 6. measure, and write the card
    card = {"name": "memlab built-in world", "built_with": "python -m memlab build-world --out " + str(out),
            "spec": asdict(spec), "train": json.loads((build / "train" / "run_card.json").read_text()),
            "build_seconds": times}
    previous = json.loads((out / "card.json").read_text()) if (out / "card.json").is_file() else {}
    if not evaluate and previous.get("measured") and previous.get("train") == card["train"]:
        card["measured"] = previous["measured"]  # same trained model: its figures still hold
    if evaluate:
        from .evaluate import evaluate_world
        from .world import World

        stage("evaluate")
        card["measured"] = evaluate_world(World.load(out), n_seeds=eval_seeds, progress=progress, log=log)
        done("evaluate")
        card["build_seconds"] = times
    card["build_seconds_total"] = sum(v for v in times.values() if isinstance(v, (int, float)))
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out
