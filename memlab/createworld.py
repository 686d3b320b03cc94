"""A world from a published list of prompts: the training images the prompts name are fetched
(img2dataset, webdataset shards), indexed with the given descriptors, and the prompts become the
world's probes with their labels and published figures.

Stages, each resumed when a run is repeated (``python -m memlab world create ... --out WORLD``):
1. ``build/shards``: the prompts' training URLs (and the controls'), fetched once
   (``index_builder.download``; a finished shard is never fetched again);
2. ``index``: the fetched images and any further ``--training`` source (shards, image folders, listings)
   indexed (``index_builder``), images kept in the index; rebuilt only when its sources changed;
3. ``probes.csv``: one row per prompt: label (verbatim / template / memorized / control), its training
   URL, whether that image was fetched (and why not), the index item it became, the list's published
   mean and max SSCD (NeMo);
4. ``keywords/``: keyword-cluster views over the training captions (Memory Triggers); NeMo's statistics, Wen's
   and SAIL's targets and the template threshold from the controls' generations; ``probe_scores.csv``: the verbatim and template
   probes generated on a few seeds and scored both ways, the global verdict and the masked one (issue 32),
   summarized by label in the card;
5. ``world.json`` with the model's sampling defaults (SD v1.x: 50 DDIM steps, guidance 7.5, or the ``--steps``
   and ``--guidance`` given, which every generation of stage 4 uses too; the size is the model's own) and
   ``card.json`` with the fetch report.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from .errors import MemlabError
from .jsonfiles import read_object
from .records import strict_json
from .sources import build_sources
from .prompts import LABELS, read_prompt_list

SD_DEFAULTS = {"steps": 50, "guidance": 7.5, "scheduler": "ddim", "seeds": "0-7", "k": 5}


def model_size(model: str) -> int | None:
    """The pixel size a diffusers model generates by default (UNet sample size x the VAE's scale), read
    from a local folder's configs; None for a Hub id (the pipeline then uses its own)."""
    p = Path(model)
    try:
        unet, vae = read_object(p / "unet" / "config.json"), read_object(p / "vae" / "config.json")
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (MemlabError, KeyError, ValueError, TypeError):  # not a config it can read: the pipeline's own size
        return None


def check_model(model: str) -> str:
    """A local diffusers folder (absolute path) or a Hub id, refused up front when it is neither."""
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise MemlabError(f"--model {p} is not a diffusers pipeline folder (no model_index.json)")
        return str(p.resolve())
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise MemlabError(f"--model {model!r} is neither a folder nor a Hugging Face Hub id (owner/name)")
    return model


def suggest_keywords(captions, n: int = 5, min_items: int = 3) -> list[str]:
    """The ``n`` content words that occur in the most training captions (at least ``min_items``)."""
    from .keywords import STOP_WORDS

    df = Counter(w for c in captions for w in set(re.findall(r"[a-z][a-z'-]{2,}", str(c).lower()))
                 if w not in STOP_WORDS)
    return [w for w, k in sorted(df.items(), key=lambda t: (-t[1], t[0])) if k >= min_items][:n]


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _option_args(options: dict | None) -> list[str]:
    """The index options as the command-line flags they were before (the index's rebuild key keeps them)."""
    return [x for k, v in (options or {}).items() if v is not None and k != "command"
            for x in ("--" + k.replace("_", "-"), str(v))]


def _fetch_images(table, shards: Path, log, **settings) -> dict | None:
    """1. Fetch the training images the prompts name (``memlab.fetch``); None when they name no URL."""
    from .fetch import fetch, summary, url_table

    urls = url_table(table)
    if not len(urls):
        return None
    log(f"[world create] fetching {len(urls)} training images named by {len(table)} prompts")
    rep = fetch(urls, shards, **settings)
    log("[world create] " + summary(rep, shards))
    if rep["pending"]:
        raise MemlabError(f"{rep['pending']} URLs are still pending (a shard failed); run the same command "
                          f"again to resume")
    return rep


def _index_sources(out: Path, sources: list[str], rep, descriptors, index_options, progress, log):
    """2. The index, rebuilt only when its inputs (sources, fetched shards, descriptors, options) changed."""
    from .index import TrainingIndex

    index_dir = out / "index"
    key = _fingerprint({"sources": sources, "shards": rep and rep["shards"], "fetched": rep and rep["fetched"],
                        "descriptors": list(descriptors), "args": _option_args(index_options)})
    stamp = out / "build" / "index.key"
    if not ((index_dir / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == key):
        log(f"[world create] indexing {', '.join(sources)} with {', '.join(descriptors)}")
        build_sources(sources, index_dir, progress, descriptors=[",".join(descriptors)], **(index_options or {}))
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)
    return TrainingIndex.load(index_dir)


def _probes(table, items, shards: Path, rep):
    """3. The probes: the prompts with their labels, training image (indexed, or why not) and published
    figures."""
    import pandas as pd

    fetched = {}
    if rep:
        failures = pd.read_csv(shards / rep["failures"])
        fetched.update({u: f"not fetched: {r}" for u, r in zip(failures["url"], failures["reason"])})
    by_url = {u: i for i, u in zip(items["id"], items["url"])} if "url" in items else {}
    probes = table.copy()
    probes["group"] = probes["label"].map(LABELS)
    probes["training_id"] = [by_url.get(u, "") for u in probes["url"]]
    probes["training_image"] = ["indexed" if by_url.get(u, "") != "" else fetched.get(u, "no URL" if not u else
                                "not fetched") for u in probes["url"]]
    return probes


def _keyword_views(kw_dir: Path, index, words) -> None:
    """4. Keyword views over the training captions (the old ones replaced)."""
    from .keywords import keyword_view, save_view

    if kw_dir.is_dir():
        for f in kw_dir.glob("*.json"):
            f.unlink()
    from .words import for_index

    postings = for_index(index) if len(words) else None  # (read once for every keyword)
    for w in words:
        save_view(kw_dir, keyword_view(index, w, words=postings))


def _nemo_statistics(out: Path, generator, table, seeds: int, log, steps: int) -> bool:
    """4b. NeMo's statistics of non-memorized prompts (``memlab.nemo``) from the control list, with the world's
    model, once (skipped when present for the same sampling steps); none without controls or with ``seeds`` 0."""
    from .nemo import compute_stats, stats_current

    if stats_current(out / "nemo", steps):
        return True
    controls = table[table["label"] == "control"]["prompt"]
    controls = [p for p in controls if p]
    if not controls or seeds < 2:
        return False
    gen = generator()
    stats = compute_stats(gen, controls, list(range(seeds)), steps,
                          source=f"the world's {len(controls)} control prompts x {seeds} seeds")
    stats.save(out / "nemo")
    log(f"[world create] NeMo statistics from {len(controls)} controls: SSIM thresholds "
        f"{stats.ssim_threshold:.3f} (memorization), {stats.selection_threshold:.3f} (selection)")
    return True


def _mitigation_targets(out: Path, generator, table, seeds: int, log, sampling: dict) -> dict:
    """4c. Wen's and SAIL's absolute targets, calibrated on the control prompts as the built-in world calibrates
    them on its unique probes (``evaluate.calibrate_wen_target``, ``sail.calibrate_sail_target``), so both run
    in the app without a target given; none without controls or with ``seeds`` under 2. A resumed run keeps the
    targets its world.json holds for the same controls, seeds and sampling."""
    from .evaluate import calibrate_wen_target
    from .generate import Settings
    from .sail import calibrate_sail_target

    controls = [p for p in table[table["label"] == "control"]["prompt"] if p]
    if not controls or seeds < 2:
        return {}
    keys = ("wen_target", "wen_target_source", "sail_target", "sail_target_source")
    try:
        before = json.loads((out / "world.json").read_text()).get("defaults", {})
    except (OSError, ValueError):
        before = {}
    plan = f"{len(controls)} control prompts x {seeds} seeds at {sampling['steps']} steps"
    if all(k in before for k in keys) and plan in str(before["sail_target_source"]) \
            and f"guidance {sampling['guidance']}" in str(before["wen_target_source"]):
        return {k: before[k] for k in keys}
    gen, settings = generator(), Settings(steps=sampling["steps"], guidance=sampling["guidance"])
    out = {**calibrate_wen_target(gen, controls, list(range(seeds)), settings),
           **calibrate_sail_target(gen, controls, list(range(seeds)), settings)}
    for key in ("wen_target_source", "sail_target_source"):
        out[key] = out[key].replace("unique probes", "control prompts")
    log(f"[world create] targets from {len(controls)} controls: wen {out['wen_target']:.4f}, "
        f"sail {out['sail_target']:.4f}")
    return out


TEMPLATE_SEEDS = 4  # seeds per control prompt for the template threshold


def _template_threshold(out: Path, generator, table, index, log, sampling: dict) -> dict | None:
    """4c. The "template copy" threshold (issue 32): the masked similarity of the control prompts'
    generations to their top-1 training image, at 1% (``local.calibrate_template_threshold``), kept in
    ``template_threshold.json`` (skipped when present for the same ``sampling``, steps and guidance, and masked
    score); none without controls or training images."""
    from .local import current_threshold

    f = out / "template_threshold.json"
    kept = json.loads(f.read_text()) if f.is_file() else None
    if kept and kept.get("sampling") == sampling and current_threshold(kept):  # (an older score's: made again)
        return kept
    controls = [p for p in table[table["label"] == "control"]["prompt"] if p]
    if not controls or index.image_path(0) is None:
        return None
    from .generate import Settings
    from .index import set_agreement
    from .local import calibrate_template_threshold
    from .match import descriptor_for_index

    gen = generator()
    thr, agree = calibrate_template_threshold(gen, index, descriptor_for_index(index), controls,
                                              list(range(TEMPLATE_SEEDS)), Settings(**sampling))
    thr["sampling"] = sampling
    set_agreement(index.path, agree)  # uploads' partial-copy threshold, on the same generations
    f.write_text(json.dumps(thr, indent=1))
    log(f"[world create] template threshold {thr['value']:.3f} from {thr['n']} control generations; agreement "
        f"threshold {agree['threshold']:.3f}")
    return thr


PROBE_SEEDS = 4  # seeds per probe in the probe table (``--probe-seeds``)


def _probe_table(out: Path, generator, probes, index, template, seeds: int, log, sampling: dict) -> dict | None:
    """4d. The list's verbatim and template probes scored both ways (``local.probe_table``): the global
    verdict and the masked one, per probe, in ``probe_scores.csv`` (kept when present for the same seeds and
    threshold); none without a template threshold or with ``seeds`` 0. Returns the summary by label."""
    import pandas as pd

    from .local import PROBE_LABELS, probe_table, probe_table_summary

    f = out / "probe_scores.csv"
    if not template or seeds < 1 or not probes["label"].isin(PROBE_LABELS).any():
        return None
    stamp = out / "build" / "probe_scores.json"
    key = {"seeds": seeds, "template_threshold": template["value"], **sampling}
    if f.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        table = pd.read_csv(f)
    else:
        from .generate import Settings
        from .match import descriptor_for_index

        gen = generator()
        gen.template_threshold = template
        table = probe_table(gen, index, descriptor_for_index(index), probes, list(range(seeds)), Settings(**sampling))
        table.to_csv(f, index=False)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(key))
    summary = probe_table_summary(table)
    for label, s in summary.items():
        log(f"[world create] {label} probes ({s['probes']} x {seeds} seeds): the masked verdict calls "
            f"{s['masked_calls_copy']} copies, the global one {s['global_calls_copy']} (at least half their seeds)")
    return {"seeds": seeds, "file": f.name, "by_label": summary,
            "definition": "a probe counts as called when at least half its seeds are: the global verdict "
                          "(top-1 score above the threshold) or the masked score (inside the bright-ending map) "
                          "above the template threshold"}


def create_world(model: str, prompts: str, out: str | Path, *, controls: str | None = None,
                 training: list[str] = (), descriptors: list[str] = ("sscd", "clip"), name: str | None = None,
                 keywords: list[str] | None = None, image_size: int = 512, processes: int = 1, threads: int = 32,
                 timeout: float = 10, retries: int = 1, shard_size: int = 1000, index_options: dict | None = None,
                 fetch_policy: dict | None = None, progress=None, log=print, nemo_seeds: int = 10,
                 probe_seeds: int = PROBE_SEEDS, device: str | None = None, command: str | None = None,
                 steps: int = SD_DEFAULTS["steps"], guidance: float = SD_DEFAULTS["guidance"],
                 revision: str | None = None) -> Path:
    """Write the world described in the module docstring to ``out``; returns ``out``. ``command``: the command
    line that asked for it (the card's ``built_with``). ``steps`` and ``guidance``: the world's sampling
    defaults, which NeMo's statistics, the template threshold and the probe table are measured at. The model is
    found first (a Hub id at ``revision``, default its main branch, resolved to its commit) and every stage uses
    that commit; world.json records it (or a local folder's fingerprint), so the world loads what it was
    calibrated on."""
    import pandas as pd

    from .pipeload import identity, locate
    from .world import write_world_json

    out = Path(out)
    model = check_model(model)
    src = locate(model, revision)  # before any fetch: a model that cannot be found is refused at once
    pinned = identity(src)
    table = read_prompt_list(prompts)
    if controls:
        table = pd.concat([table, read_prompt_list(controls, label="control")], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    shards = out / "build" / "shards"
    rep = _fetch_images(table, shards, log, image_size=image_size, processes=processes, threads=threads,
                        timeout=timeout, retries=retries, shard_size=shard_size, **(fetch_policy or {}))
    sources = ([str(shards)] if rep and rep["fetched"] else []) + [str(s) for s in training]
    if not sources:
        raise MemlabError("no training images: none of the prompts' URLs could be fetched and no --training "
                          "source was given" if rep else "the prompt list names no training URLs; give "
                          "--training SOURCE (shards, an image folder or a listing)")
    index = _index_sources(out, sources, rep, descriptors, index_options, progress, log)
    items = index.items
    probes = _probes(table, items, shards, rep)
    probes.to_csv(out / "probes.csv", index=False)
    words = keywords if keywords is not None else suggest_keywords(items["caption"])
    _keyword_views(out / "keywords", index, words)

    loaded = {}

    def generator():  # the world's pipeline, loaded once for the stages that generate (each may be skipped)
        if "gen" not in loaded:
            from .generate import Generator

            gen = Generator.from_pretrained(model, device=device, revision=src.revision)
            if gen.identity != pinned:
                raise MemlabError(f"the model {model} changed while the world was made (its files' fingerprint)")
            loaded["gen"] = gen
        return loaded["gen"]

    sampling = {"steps": int(steps), "guidance": float(guidance)}
    nemo = _nemo_statistics(out, generator, table, nemo_seeds, log, sampling["steps"])
    targets = _mitigation_targets(out, generator, table, nemo_seeds, log, sampling)
    template = _template_threshold(out, generator, table, index, log, sampling)
    scored = _probe_table(out, generator, probes, index, template, probe_seeds, log, sampling)

    # 5. world.json and card.json
    size = model_size(model)
    defaults = {**SD_DEFAULTS, **sampling, **({"height": size, "width": size} if size else {}), **targets}
    n_lab = probes["label"].value_counts().to_dict()
    card = {"name": name or out.name, "built_with": command or "python -m memlab world create", "model": model,
            **{f"model_{k}": v for k, v in pinned.items() if v},
            "prompts": str(prompts), "controls": controls, "training": sources, "descriptors": list(descriptors),
            "fetch": rep, "probes": {"total": len(probes), "by_label": n_lab,
                                     "training_image_indexed": int((probes["training_image"] == "indexed").sum())},
            "index": {"items": len(items)}, "keywords": words, **({"probe_scores": scored} if scored else {})}
    (out / "card.json").write_text(json.dumps(strict_json(card), indent=1, default=str, allow_nan=False))
    trained_on = (f"{len(items)} training images ({', '.join(sources)})"
                  + (f": {rep['fetched']} of the {rep['listed']} URLs that {Path(prompts).name}"
                     + (f" and {Path(controls).name}" if controls else "") + " name" if rep else ""))
    write_world_json(out, name=name or out.name, model=model, index="index", probes="probes.csv", card="card.json",
                     descriptors=list(descriptors), defaults=defaults, trained_on=trained_on,
                     probe_labels={k: int(v) for k, v in n_lab.items()}, **({"nemo": "nemo"} if nemo else {}),
                     **({"template_threshold": template} if template else {}),
                     **{f"model_{k}": v for k, v in pinned.items() if v})
    log(f"[world create] wrote {out}: {len(items)} items, {len(probes)} probes "
        f"({', '.join(f'{v} {k}' for k, v in n_lab.items())}), keywords {', '.join(words) or 'none'}")
    return out
