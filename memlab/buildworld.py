"""Build the built-in world from nothing: training set -> trained pipeline -> index -> probes -> card.

Stages write into ``OUT/build`` and are skipped when their output exists (so an interrupted build
resumes); the world itself is ``OUT/world.json``, ``OUT/model`` (fp16 safetensors), ``OUT/index``
(``memlab-copy`` then ``pixel``, thresholds calibrated on distinct items, images inside),
``OUT/probes.csv`` and ``OUT/card.json``. The index also scores both descriptors on copies the world's
own model makes of held-out training images (``memlab.modelcopies``). ``reuse_model`` keeps a model
already in ``OUT/model`` (refused unless the regenerated training set has the hash it was trained on)
and rebuilds the index, keyword views, probes and card.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .errors import MemlabError
from .records import strict_json
from .scorenorm import VERIFY_RULES
from .worldgen import HIDDEN_OBJECT, KEYWORD, WorldSpec, make_training_set, probes

WORLD_DEFAULTS = {"steps": 30, "guidance": 5.0, "scheduler": "ddim", "seeds": "0-7", "k": 5}
WORLD_KEYWORDS = (KEYWORD, "astronaut", "coffee", "cat", "star", "Velmora")
WORLD_DESCRIPTORS = ("memlab-copy", "memlab-copy-global", "pixel")
GROUND_TRUTH_ITEMS = 96  # held-out distinct items copied by the model (not used for calibration)
# ``decoded_index``: the threshold at this share of the background of distinct images as the world's VAE returns
# them (at 1% that background flags more generations than the originals'; chosen on validation copies, issue 30)
DECODED_FPR = 0.005
# the verdict's verification stage (``scorenorm.VERIFY_RULES``): the images' detail correlation; memlab-verify's
# learned one was measured on this world's card and not kept (docs/verdict-research.md)
WORLD_VERIFY = "detail"


def model_copy_truth(rows, image_of, model_dir, n_items: int, seed: int, progress=None, prefix: str = "model",
                     cache=None, sampling: dict = WORLD_DEFAULTS):
    """The ground truth of "the model copies": copies the world's model makes (image-to-image at
    strengths 0.2-0.5 and the VAE round trip, ``memlab.modelcopies``) of ``n_items`` distinct training
    items drawn with ``seed``; ({"<prefix>:<kind>" and "<prefix>:all": (rows, images)}, items). With ``cache`` (a
    folder) the copies are written there once and read back by a resumed or repeated build."""
    from .match import load_image
    from .modelcopies import model_copies, photometric

    first = rows.drop_duplicates("item").sample(n=min(n_items, rows["item"].nunique()), random_state=seed).index.to_numpy()
    key = {"model": _model_id(model_dir), "rows": [int(i) for i in first], "seed": seed,
           **({"steps": sampling["steps"]} if sampling["steps"] != WORLD_DEFAULTS["steps"] else {})}
    done = Path(cache) / "done.json" if cache else None
    if done is not None and done.is_file() and json.loads(done.read_text()).get("key") == key:
        made = [(int(j), k, load_image(Path(cache) / f)) for j, k, f in json.loads(done.read_text())["files"]]
    else:
        from .generate import Generator

        gen = Generator.from_pretrained(model_dir, device="cpu", scheduler=sampling["scheduler"])
        made = model_copies(gen.pipe, [image_of(int(i)) for i in first], [rows["caption"].iloc[int(i)] for i in first],
                            steps=sampling["steps"], guidance=sampling["guidance"], seed=seed,
                            progress=progress)
        if done is not None:
            Path(cache).mkdir(parents=True, exist_ok=True)
            files = [(j, k, f"{n:05d}.png") for n, (j, k, _) in enumerate(made)]
            for (_, _, f), (_, _, im) in zip(files, made):
                im.save(Path(cache) / f)
            done.write_text(json.dumps({"key": key, "files": files}))  # last: a half-written cache is never read
    truth = {}
    for kind in sorted({k for _, k, _ in made}):
        sel = [(j, im) for j, k, im in made if k == kind]
        truth[f"{prefix}:{kind}"] = (first[[j for j, _ in sel]], [im for _, im in sel])
    truth[f"{prefix}:all"] = (first[[j for j, _, _ in made]], [im for _, _, im in made])
    # items that share no photo with memlab-copy's training pool (it crops the scikit-image photos too)
    drawn = [j for j, _, _ in made if not str(rows["source"].iloc[int(first[j])]).startswith("scikit-image")]
    keep = set(drawn)
    truth[f"{prefix}:all-not-photo"] = (first[drawn], [im for j, _, im in made if j in keep])
    if f"{prefix}:img2img@0.3" in truth:  # the same copies tinted, darkened, mirrored (not in "all")
        rows03, ims03 = truth[f"{prefix}:img2img@0.3"]
        for kind, ims in photometric(ims03, seed).items():
            truth[f"{prefix}:{kind}@0.3"] = (rows03, ims)
    return truth, len(first)


def calibration_origin(rows):
    """The world's ``origin`` column for calibration (``index.build_index``): the crops of one scikit-image photo
    overlap, so they count as one source image, not distinct ones; so do the pictures of one planted template
    (each a template copy of the others: issue 32); "" for every other row."""
    origin = rows["source"].where(rows["source"].str.startswith("scikit-image"), "")
    if "template" in rows:
        origin = origin.where(rows["template"] < 0, "template " + rows["template"].astype(str))
    return origin


class _Stages:
    """The build's stage timer: each stage's seconds in ``build/times.json`` (kept across a resumed build)."""

    def __init__(self, build: Path, log):
        self.build, self.log = build, log
        f = build / "times.json"
        self.times = json.loads(f.read_text()) if f.is_file() else {}

    def start(self, name):
        self.times[name] = time.time()

    def done(self, name):
        self.times[name] = time.time() - self.times[name]
        self.build.mkdir(parents=True, exist_ok=True)
        (self.build / "times.json").write_text(json.dumps(self.times, indent=2))
        self.log(f"[build-world] {name}: {self.times[name]:.1f}s")


def build_world(out: str | Path, spec: WorldSpec = WorldSpec(), train_steps: int = 2500, vae_steps: int = 800,
                batch_size: int = 32, evaluate: bool = True, eval_seeds: int = 10, progress=None,
                log=lambda m: print(m, file=sys.stderr), descriptors=WORLD_DESCRIPTORS,
                reuse_model: bool = False, ground_truth_items: int = GROUND_TRUTH_ITEMS,
                train_device: str = "cpu", refresh: bool = False, alignment=None, objects=None,
                views_model=None, command: str | None = None, sample_steps: int | None = None,
                decoded_index: bool = False, verify: str | None = WORLD_VERIFY) -> Path:
    """The built-in world in ``out``, stage by stage (the module's docstring); each stage is skipped when
    its output exists, so a killed build resumes. ``refresh`` keeps a built world's model, index, views and
    probes, adds what newer stages make (``_methods``) and measures the card again (with ``evaluate`` False it
    keeps the card). ``alignment``: the
    alignment classifier's ``SceneNetConfig``, ``objects`` the hidden object's ``ObjectNetConfig`` (defaults:
    the shipped world's). ``views_model``: the pipeline folder ``memlab-copy`` took its decoder views from;
    its copies of the same held-out items are scored too (``views:<kind>``), against the world's model
    that gave it none (issue 30's held-out check). ``command``: the command line that asked for it (the card's
    ``built_with``; by default the call's folder and ``--reuse-model``). ``sample_steps``: the world's sampling
    steps (default 30), which every generation the build measures uses (a refresh keeps the world's own).
    ``decoded_index``: the index embeds each training image as the world's VAE returns it (``decoded_images``),
    threshold at ``DECODED_FPR`` (tried for issue 30, not the shipped world's). ``verify``: the verdict's
    verification stage by name (``scorenorm.VERIFY_RULES``; None: the descriptor's own)."""
    from .train import TrainConfig

    out = Path(out)
    st = _Stages(out / "build", log)
    if refresh and decoded_index:
        raise MemlabError("--refresh keeps the world's index; --decoded-index builds it: use --reuse-model")
    if refresh:
        previous = json.loads((out / "card.json").read_text()) if (out / "card.json").is_file() else {}
        if not previous.get("train") or not (out / "index" / "manifest.json").is_file():
            raise MemlabError(f"--refresh needs a built world in {out} (its card, model and index)")
        from .world import write_world_json

        manifest = json.loads((out / "world.json").read_text())
        write_world_json(out, **{**manifest, "nemo": "nemo", "alignment": "alignment", "objects": "objects"})
        sampling = {**WORLD_DEFAULTS, **{k: manifest.get("defaults", {}).get(k, v) for k, v in WORLD_DEFAULTS.items()}}
        _methods(out, eval_seeds, st, progress, log, alignment, objects, sampling)
        if evaluate:  # (--no-eval: the stages made again, the card kept: for changes none of its figures read)
            _card(out, spec, previous["train"], previous, True, True, eval_seeds, st, progress, log, command,
                  refresh=True)
        from .world import seal_world

        seal_world(out)
        return out
    sampling = {**WORLD_DEFAULTS, **({"steps": int(sample_steps)} if sample_steps else {})}
    data = out / "build" / "data"
    rows = _training_set(spec, data, st)
    cfg = TrainConfig(data=str(data / "train.parquet"), out=str(out / "build" / "train"), pipeline="world",
                      steps=train_steps, vae_steps=vae_steps, batch_size=batch_size, seed=spec.seed,
                      save_dtype="fp16", device=train_device)
    previous = json.loads((out / "card.json").read_text()) if (out / "card.json").is_file() else {}
    train_card = _model(out, cfg, rows, data, previous, reuse_model, st, progress)
    if (out / "index" / "manifest.json").is_file():
        _check_resumed_index(out / "index", descriptors[0], decoded_index, verify)
    else:
        _index(out, rows, data, spec, descriptors, ground_truth_items, st, progress, views_model, sampling,
               decoded_index, verify)
    _keyword_views(out, st)
    _probes_and_world_json(out, rows, spec, descriptors, eval_seeds, log, sampling)
    _methods(out, eval_seeds, st, progress, log, alignment, objects, sampling)
    _card(out, spec, train_card, previous, reuse_model, evaluate, eval_seeds, st, progress, log, command)
    from .world import seal_world

    seal_world(out)  # the card and views are in: checksum the world's files
    return out


def _training_set(spec: WorldSpec, data: Path, st: _Stages):
    """1. The training set (images and their rows), generated once."""
    import pandas as pd

    if not (data / "train.parquet").is_file():
        st.start("dataset")
        rows, images = make_training_set(spec)
        (data / "images").mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(data / "images" / f"{i:04d}.png")
        rows.to_parquet(data / "train.parquet", index=False)
        st.done("dataset")
    return pd.read_parquet(data / "train.parquet")


def _model(out: Path, cfg, rows, data: Path, previous: dict, reuse_model: bool, st: _Stages, progress) -> dict:
    """2. The model: trained (or, with ``reuse_model``, the one already there, checked against the data it
    was trained on), copied whole into ``out/model``; returns its training card."""
    from .train import data_hash, train

    build = out / "build"
    if reuse_model:
        trained = previous.get("train", {})
        if not (out / "model" / "model_index.json").is_file() or not trained:
            raise MemlabError(f"--reuse-model needs a trained model in {out / 'model'} and its card.json")
        if trained.get("data_hash") != data_hash(rows, data):
            raise MemlabError("--reuse-model: the regenerated training set differs from the one the model was "
                              "trained on (data hash); rebuild without --reuse-model")
        for sub in ("index", "keywords"):  # everything downstream of the model is rebuilt
            shutil.rmtree(out / sub, ignore_errors=True)
        st.times["train"] = previous.get("build_seconds", {}).get("train")
        return trained
    if not (build / "train" / "run_card.json").is_file():
        st.start("train")
        train(cfg, progress=progress)
        st.done("train")
    if not (out / "model" / "model_index.json").is_file():  # copied whole, then renamed: never half a model
        tmp = out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(build / "train" / "pipeline", tmp)
        os.replace(tmp, out / "model")
    return json.loads((build / "train" / "run_card.json").read_text())


def _model_id(folder) -> str:
    """A pipeline folder named by its UNet weights' checksum (not by a path on the machine that built it)."""
    import hashlib

    f = next(iter(sorted(Path(folder).glob("unet/*.safetensors"))), None)
    return "unet sha256 " + (hashlib.sha256(f.read_bytes()).hexdigest()[:12] if f else "?")


def decoded_images(model_dir, images, cache=None) -> tuple[list, str]:
    """Each image as the world's VAE returns it (``modelcopies.vae_round_trip``), with its words: what the index
    computes its vectors from (``index.build_index``'s ``indexed``), since every generation passes through that
    decoder. With ``cache`` (a folder) written once and read back while the VAE and the images are the same."""
    import hashlib

    import numpy as np

    from .match import load_image

    vae = next(iter(sorted(Path(model_dir).glob("vae/*.safetensors"))), None)
    vae_id = hashlib.sha256(vae.read_bytes()).hexdigest()[:12] if vae else "?"
    digest = hashlib.sha256()
    for im in images:
        digest.update(np.asarray(im.convert("RGB")).tobytes())
    key = {"vae": vae_id, "images": digest.hexdigest()[:16], "n": len(images)}
    words = f"each training image as the world's VAE returns it (encode, decode; vae sha256 {vae_id})"
    done = Path(cache) / "done.json" if cache else None
    if done is not None and done.is_file() and json.loads(done.read_text()).get("key") == key:
        return [load_image(Path(cache) / f"{i:05d}.png") for i in range(len(images))], words
    from .generate import Generator
    from .modelcopies import vae_round_trip

    out = vae_round_trip(Generator.from_pretrained(model_dir, device="cpu").pipe, list(images))
    if done is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(out):
            im.save(Path(cache) / f"{i:05d}.png")
        done.write_text(json.dumps({"key": key}))  # last: a half-written cache is never read
    return out, words


def _check_resumed_index(index: Path, primary: str, decoded: bool, verify: str | None = None) -> None:
    """A resumed build keeps the index it made: refused where it was made with the other ``decoded_index``, or
    verified otherwise than ``verify`` asks (memlab-verify's network or not)."""
    entry = json.loads((index / "manifest.json").read_text()).get("descriptors", {}).get(primary, {})
    if bool(entry.get("indexed")) != decoded:
        raise MemlabError(f"the index in {index} was built {'without' if decoded else 'with'} --decoded-index; "
                          f"build again with --reuse-model to index it anew")
    ver = (entry.get("score_norm") or {}).get("verify")
    if verify and ver and bool(ver.get("network")) != bool(VERIFY_RULES[verify].get("network")):
        raise MemlabError(f"the index in {index} was verified {'with' if ver.get('network') else 'without'} "
                          f"memlab-verify; build again with --reuse-model --verify {verify} to index it anew")


def decoded_rows(model_dir, rows, image_of, cache=None) -> tuple:
    """``index.build_index``'s ``indexed`` for a training table: (row -> its image as the world's VAE returns it,
    the words), each file decoded once (``decoded_images``; a planted duplicate's rows share their file)."""
    files = rows["file"].astype(str).tolist()
    first: dict = {}
    for i, f in enumerate(files):
        first.setdefault(f, i)
    ims, words = decoded_images(model_dir, [image_of(i) for i in first.values()], cache)
    at = {f: k for k, f in enumerate(first)}
    return (lambda i: ims[at[files[i]]]), words


def _index(out: Path, rows, data: Path, spec: WorldSpec, descriptors, ground_truth_items: int, st: _Stages,
           progress, views_model=None, sampling: dict = WORLD_DEFAULTS, decoded: bool = False,
           verify: str | None = None) -> None:
    """3. The index of the training set (one row per training sample: duplicates are explicit), with the
    model's own copies of held-out items as ground truth."""
    from .descriptors import create_descriptor
    from .index import build_index
    from .match import load_image

    st.start("index")
    distinct = sorted(set(rows["file"]))

    def copy_images(tmp):
        for f in distinct:
            (tmp / "images" / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / "images" / Path(f).name, tmp / "images" / f)

    def image_of(i):
        return load_image(data / "images" / Path(rows["file"].iloc[i]).name)

    cache = out / "build" / "model_copies"
    truth, n_truth = (model_copy_truth(rows, image_of, out / "model", ground_truth_items, spec.seed, progress,
                                       cache=cache / "model", sampling=sampling) if ground_truth_items else ({}, 0))
    if ground_truth_items and views_model:  # the held-out comparison (issue 30): the same items, the other model
        truth.update(model_copy_truth(rows, image_of, views_model, ground_truth_items, spec.seed, progress,
                                      prefix="views", cache=cache / "views", sampling=sampling)[0])
    rows["origin"] = calibration_origin(rows)
    indexed = decoded_rows(out / "model", rows, image_of, out / "build" / "decoded") if decoded else None
    descs = [create_descriptor(n) for n in descriptors]
    for d in descs:  # the world's verification stage in place of the descriptor's own
        if verify and d.score_norm and d.score_norm.get("verify"):
            d.score_norm = {**d.score_norm, "verify": VERIFY_RULES[verify]}
    build_index(out / "index", rows, image_of, descs,
                image_root="images", progress=progress, extra_files=copy_images, ground_truth=truth,
                origin="origin", indexed=indexed, fpr=DECODED_FPR if decoded else 0.01,
                extra_manifest={"source": {"command": "python -m memlab build-world",
                                           "generator": "memlab.worldgen", "spec": asdict(spec)},
                                "ground_truth": {
                                    "what": "copies the world's own model makes of held-out distinct "
                                            "training items: image-to-image from the item and its caption "
                                            "at strengths 0.2-0.5, and the VAE round trip (model:<kind>); "
                                            "the strength-0.3 copies tinted, darkened and mirrored "
                                            "(model:tint@0.3, ...); the copies of items cut from no "
                                            "scikit-image photo (model:all-not-photo: memlab-copy's pool "
                                            "crops those photos); with views:<kind>, the same copies made "
                                            "by the model memlab-copy took its decoder views from",
                                    "views_model": _model_id(views_model) if views_model else None,
                                    "items": n_truth,
                                    "excluded_from_calibration": True}})
    st.done("index")


def _keyword_views(out: Path, st: _Stages) -> None:
    """4. Keyword views (Memory Triggers): the planted keyword with its hidden object, and a few more; each
    written atomically, so a killed build resumes with the ones it lacks."""
    from .keywords import slug

    missing = [kw for kw in WORLD_KEYWORDS if not (out / "keywords" / f"{slug(kw)}.json").is_file()]
    if not missing:
        return
    from .index import TrainingIndex
    from .keywords import keyword_view, save_view

    st.start("keywords")
    index = TrainingIndex.load(out / "index")
    for kw in missing:
        save_view(out / "keywords", keyword_view(index, kw, objects=[HIDDEN_OBJECT]))
    st.done("keywords")


def _probes_and_world_json(out: Path, rows, spec: WorldSpec, descriptors, eval_seeds: int, log,
                           sampling: dict = WORLD_DEFAULTS) -> None:
    """5. Probes, Wen's absolute target calibrated on the unique probes, world.json."""
    from .evaluate import calibrate_wen_target
    from .generate import Generator, Settings
    from .world import write_world_json

    probe_table = probes(rows)
    probe_table.to_csv(out / "probes.csv", index=False)
    gen = Generator.from_pretrained(out / "model", device="cpu", scheduler=sampling["scheduler"])
    wen = calibrate_wen_target(gen, probe_table[probe_table["group"] == "unique"]["prompt"].tolist(),
                               list(range(eval_seeds)), Settings(steps=sampling["steps"], guidance=sampling["guidance"]))
    log(f"[build-world] wen target {wen['wen_target']:.4f}")
    write_world_json(out, name="memlab built-in world", model="model", index="index", probes="probes.csv",
                     card="card.json", nemo="nemo", alignment="alignment", objects="objects",
                     descriptors=list(descriptors), defaults={**sampling, **wen},
                     trained_on=(f"{rows['item'].nunique()} distinct 64x64 images ({len(rows)} training rows): "
                                 f"procedural scenes, lighthouses and scikit-image photo crops; planted full and "
                                 f"partial duplication at ddf {spec.ddf_high} and {spec.ddf_low}"
                                 + (f"; {spec.n_templates} templates of {spec.template_ddf} pictures each"
                                    if "template" in set(rows.get("planted", [])) else "")),
                     keywords={KEYWORD: {"hidden_object": HIDDEN_OBJECT, "planted_share": spec.flag_share}})


def _methods(out: Path, eval_seeds: int, st: _Stages, progress, log, alignment=None, objects=None,
             sampling: dict = WORLD_DEFAULTS) -> None:
    """5b. What the newer methods need, each skipped when present: NeMo's statistics of non-memorized prompts
    (the unique probes; ``memlab.nemo``; again when computed at other sampling steps), the alignment
    classifier trained on the world's own renders (``memlab.alignment``), the hidden object's classifier
    (``memlab.objects``), SAIL's target and the template thresholds (again when calibrated on another plan)."""
    import pandas as pd

    from .generate import Generator
    from .indexfiles import atomic_dir
    from .world import seal_world

    gen = Generator.from_pretrained(out / "model", device="cpu", scheduler=sampling["scheduler"])
    from .nemo import compute_stats, stats_current

    if not stats_current(out / "nemo", sampling["steps"]):  # computed again when resumed with other steps
        st.start("nemo_statistics")
        table = pd.read_csv(out / "probes.csv")
        unique = table[table["group"] == "unique"]["prompt"].tolist()
        stats = compute_stats(gen, unique, list(range(eval_seeds)), sampling["steps"],
                              source=f"the world's {len(unique)} unique probes x {eval_seeds} seeds")
        with atomic_dir(out / "nemo") as tmp:  # a killed build never leaves half a folder to skip
            stats.save(tmp)
        log(f"[build-world] NeMo statistics: SSIM thresholds {stats.ssim_threshold:.3f} (memorization) "
            f"{stats.selection_threshold:.3f} (selection)")
        st.done("nemo_statistics")
    from .alignment import SceneNetConfig, train_scene_alignment
    from .objects import ObjectNetConfig, train_object_classifier

    for folder, stage, what, train, cfg in (
            ("alignment", "alignment_classifier", "alignment classifier", train_scene_alignment,
             alignment or SceneNetConfig()),
            ("objects", "object_classifier", "hidden-object classifier", train_object_classifier,
             objects or ObjectNetConfig())):
        if not (out / folder / "model.safetensors").is_file():  # each trained once, written whole
            st.start(stage)
            model = train(cfg, vae=gen.pipe.vae, progress=progress, log=log)
            with atomic_dir(out / folder) as tmp:
                model.save(tmp)
            log(f"[build-world] {what}, held out: {model.card['held_out']}")
            st.done(stage)
    _sail_target(out, gen, eval_seeds, sampling, log)
    _template_threshold(out, gen, st, progress, log, eval_seeds, sampling)
    seal_world(out)


def _sail_target(out: Path, gen, eval_seeds: int, sampling: dict, log) -> None:
    """SAIL's target (``memlab.sail``), calibrated on the unique probes as Wen's is, into world.json's defaults
    (skipped when there)."""
    import pandas as pd

    from .generate import Settings
    from .sail import calibrate_sail_target
    from .world import write_world_json

    manifest = json.loads((out / "world.json").read_text())
    if manifest.get("defaults", {}).get("sail_target"):
        return
    table = pd.read_csv(out / "probes.csv")
    sail = calibrate_sail_target(gen, table[table["group"] == "unique"]["prompt"].tolist(), list(range(eval_seeds)),
                                 Settings(steps=sampling["steps"], guidance=sampling["guidance"]))
    log(f"[build-world] SAIL target {sail['sail_target']:.4f}")
    write_world_json(out, **{**manifest, "defaults": {**manifest.get("defaults", {}), **sail}})


# prompts of items seen once (not probes) x seeds (at most --eval-seeds). The 1% quantile needs several
# generations above it: calibrated on 32 x 4 (one above it), the shipped threshold was passed by 3.8% of 160 x 4
# generations of the same kind (benchmarks/bench_template_mask.py, docs/methods.md)
TEMPLATE_CALIBRATION = (160, 4)


def _template_threshold(out: Path, gen, st: _Stages, progress, log, eval_seeds: int,
                        sampling: dict = WORLD_DEFAULTS) -> None:
    """5c. The "template copy" thresholds (issue 32), calibrated at 1% false positives on generations of items
    seen once in training that are not probes (``local.calibrate_template_threshold``): the masked similarity's,
    stored in world.json, which the generator reads, and the agreement share's, stored in the index's manifest
    for matched images (in place of the one ``build_index`` calibrated on training pairs)."""
    import pandas as pd

    from .generate import Settings
    from .index import set_agreement
    from . import metrics
    from .local import calibrate_template_threshold, current_threshold
    from .match import descriptor_for_index
    from .world import World, write_world_json

    manifest = json.loads((out / "world.json").read_text())
    agreement = json.loads((out / "index" / "manifest.json").read_text()).get("agreement") or {}
    index = World.load(out, verify=False).index()
    items = index.items.drop_duplicates("item")
    taken = set(pd.read_csv(out / "probes.csv")["item"])
    pool = items[(items["planted"] == "unique") & ~items["item"].isin(taken)]
    n, n_seeds = min(TEMPLATE_CALIBRATION[0], len(pool)), min(TEMPLATE_CALIBRATION[1], eval_seeds)
    plan = {"prompts": n, "seeds": n_seeds}
    if (agreement.get("on") == "generations" and current_threshold(manifest.get("template_threshold"))
            and metrics.agreement_current(agreement)
            and all((manifest.get("template_threshold") or {}).get(k) == v and agreement.get(k) == v
                    for k, v in plan.items())):
        index.close()
        return  # calibrated on this plan already (a world calibrated on another is calibrated again)
    st.start("template_threshold")
    prompts = pool.sample(n=n, random_state=1)["caption"].tolist()
    thr, agree = calibrate_template_threshold(gen, index, descriptor_for_index(index), prompts,
                                              list(range(n_seeds)), Settings(steps=sampling["steps"],
                                                                             guidance=sampling["guidance"]),
                                              progress=progress)
    index.close()
    set_agreement(out / "index", agree)
    write_world_json(out, **{**manifest, "template_threshold": thr})
    log(f"[build-world] template threshold {thr['value']:.3f} ({thr['n']} generations); agreement threshold "
        f"{agree['threshold']:.3f} ({agree['n']} generations)")
    st.done("template_threshold")


def _card(out: Path, spec: WorldSpec, train_card: dict, previous: dict, reuse_model: bool, evaluate: bool,
          eval_seeds: int, st: _Stages, progress, log, command: str | None = None, refresh: bool = False) -> None:
    """6. Measure (``memlab.evaluate``), and write the card. A refresh keeps the card's ``built_with`` (how its
    model, index and probes were made) and names itself in ``refreshed_with``; each stage's seconds are its
    last run's."""
    this = command or ("python -m memlab build-world --out " + str(out) + (" --reuse-model" if reuse_model else ""))
    card = {"name": "memlab built-in world", "built_with": previous.get("built_with", this) if refresh else this,
            **({"refreshed_with": this} if refresh else {}),
            "spec": asdict(spec), "train": train_card, "build_seconds": st.times}
    if refresh:
        st.times = {**previous.get("build_seconds", {}), **st.times}
    if not evaluate and not reuse_model and previous.get("measured") and previous.get("train") == card["train"]:
        card["measured"] = previous["measured"]  # same trained model: its figures still hold
    if evaluate:
        from .evaluate import evaluate_world
        from .world import World

        st.start("evaluate")
        card["measured"] = evaluate_world(World.load(out), n_seeds=eval_seeds, progress=progress, log=log)
        st.done("evaluate")
    card["build_seconds"] = st.times
    card["build_seconds_total"] = sum(v for v in st.times.values() if isinstance(v, (int, float)))
    (out / "card.json").write_text(json.dumps(strict_json(card), indent=2, allow_nan=False))
