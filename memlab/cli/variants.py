"""Prompt variants of a keyword cluster (Memory Triggers, Case Study 1): five captions for the cluster's keywords
and its own training caption for reference, each generated on the same seeds and matched; per variant, the
seeds whose top-1 training match is one of the cluster's images, those also replicated, and the caption's text
similarity to the closest training caption.
Writes one JSON object (strict JSON) and the images beside it. A run stopped midway (on a GPU over hundreds of
seeds, as the paper's 500, hours) keeps each variant as it finishes in variants.json.part and, started again
with the same arguments, resumes after them (--no-resume starts over).

    python -m memlab variants --keyword Velmora --rank 1 --seeds 0-7 --out runs/velmora.json
    python -m memlab variants --keyword Velmora --variant "without=a teal circle and a blue cross" --out v.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import MemlabError
from ..records import strict_json
from . import device


def add_arguments(p):
    p.add_argument("--world", default=None, help="world folder (default: $MEMLAB_WORLD or the built-in world)")
    p.add_argument("--keyword", required=True, help="a keyword: its prebuilt view, else one clustered now")
    p.add_argument("--rank", type=int, default=1, help="the cluster's rank (1: the largest; default 1)")
    p.add_argument("--variant", action="append", default=None, metavar="KIND=PROMPT",
                   help="replace a variant's prompt (kinds: caption, keywords, short, long, irrelevant, without); repeatable; "
                        "--only runs just those given")
    p.add_argument("--only", action="store_true", help="run only the variants given with --variant")
    p.add_argument("--seeds", default=None, help="'0-9' or '1,2,3' (default: the world's, else 0-7)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--descriptor", default=None, help="descriptor of the index (default: its default)")
    p.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", required=True, help="variants.json (images are written beside it)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even where a stopped run of the same arguments left variants.json.part (by "
                        "default it keeps the variants that run finished)")


def given_variants(items) -> dict[str, str]:
    out = {}
    for it in items or []:
        kind, sep, prompt = it.partition("=")
        if not sep or not prompt.strip():
            raise MemlabError(f"--variant {it!r}: write KIND=PROMPT, e.g. 'short=a starry night by van gogh'")
        if kind.strip() in out:
            raise MemlabError(f"--variant {kind.strip()!r} is given twice")
        out[kind.strip()] = prompt.strip()
    return out


def run(args) -> int:
    from ..generate import parse_seeds
    from ..keywords import ranked_cluster
    from ..service import Lab
    from ..variants import (VARIANTS, check_variants, cluster_caption, default_variants, image_name,
                            stream_variants, study_record)
    from ..world import World

    out = Path(args.out)
    if out.is_dir():
        raise MemlabError(f"--out {args.out} is a folder: name the results file, e.g. {out / 'variants.json'}")
    given = check_variants(given_variants(args.variant)) if args.variant else {}
    if args.only and not given:
        raise MemlabError("--only runs the variants given with --variant: give at least one")
    lab = Lab(World.load(args.world), device=args.device)
    view = lab.keyword_view(args.keyword)  # prebuilt, else clustered now
    ranked_cluster(view, args.rank)  # an unknown rank is refused before the model loads
    defaults = default_variants(view["keyword"], cluster_caption(view, args.rank, lab.item_caption))
    prompts = given if args.only else {k: given.get(k, defaults[k]) for k in VARIANTS}
    seeds = parse_seeds(args.seeds or lab.world.defaults["seeds"])
    settings = lab.settings(args.steps, args.guidance)
    desc = lab.get_descriptor(args.descriptor)
    print(f"scores: {lab.descriptor_label(desc.name)}; {settings.steps} steps, guidance {settings.guidance:g}",
          file=sys.stderr)

    images = out.with_name(out.stem + "_images")
    part = out.with_name(out.name + ".part")
    job = json.loads(json.dumps({"world": str(lab.world.path), "model": lab.generator.identity, "keyword": view["keyword"],
                                 "rank": args.rank, "prompts": prompts, "seeds": list(seeds),
                                 "settings": settings.to_dict(), "descriptor": desc.name}, default=str))
    kept, before = ([], {}) if args.no_resume else resumed(part, job)
    if kept:
        print(f"resuming {part}: {len(kept)} of {len(prompts)} variants were finished by a stopped run of these "
              f"arguments (--no-resume starts over)", file=sys.stderr)
    todo = {k: p for k, p in prompts.items() if k not in {v["kind"] for v in kept}}
    images.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(todo) * len(seeds), desc="variants", unit="image", file=sys.stderr, disable=None)

    def progress(i, n, kind, done):
        if done == 0:
            bar.set_description(f"{kind} ({i + 1} of {n})")
        bar.update(i * len(seeds) + done - bar.n)

    def record(results):
        obj = study_record(view, args.rank, results, lab.threshold(desc.name), lab.descriptor_label(desc.name),
                           seeds, settings, image_dir=images.name, asked=len(prompts))
        order = list(VARIANTS)
        obj["variants"] = sorted(kept + obj["variants"], key=lambda v: order.index(v["kind"]))
        for k in ("descriptor", "model"):  # (every variant kept from a stopped run: its record names them)
            obj[k] = obj[k] or before.get(k)
        if len(obj["variants"]) >= len(prompts):
            obj.pop("partial", None)
        else:
            obj["partial"] = {"variants_done": len(obj["variants"]), "variants_asked": len(prompts)}
        return obj

    results = []
    for results in stream_variants(lab, view, args.rank, todo, seeds, settings, desc.name, progress=progress) \
            if todo else ():
        r = results[-1]  # each variant's images and the study so far, as it finishes (a stop loses the one in flight)
        for rec, img in zip(r["records"], r["images"]):
            img.save(images / image_name(r["kind"], rec["seed"]))
        _write(part, {"job": job, "study": record(results)})
    bar.close()
    obj = record(results)
    _write(out, obj)
    part.unlink(missing_ok=True)
    print(f"{'variant':<11} {'in cluster':>12} {'copies':>12} {'replicated':>12} {'keyword':>12}  text sim.  prompt")
    for v in obj["variants"]:
        f, cc = v["figures"], v["closest_caption"]
        keys = ("in_cluster", "copies", "replicated", "in_keyword")
        counts = " ".join(f"{f[k]['k']:>4} of {f[k]['n']:<4}" for k in keys)
        sim = f"{cc['text_similarity']:.3f}" if cc else "-"
        print(f"{v['kind']:<11} {counts}  {sim:<9}  {v['prompt']}")
    print(f"wrote {out} ({len(obj['variants'])} variants x {len(seeds)} seeds; cluster {args.rank} of {view['keyword']!r}, "
          f"{obj['cluster_size']} images)")
    return 0


def _write(path: Path, obj: dict) -> None:
    """``obj`` as strict JSON at ``path``, through a ``.tmp`` file renamed (``indexfiles.atomic_save`` writes
    through ``path.part``, the name the resume file holds)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict_json(obj), indent=1))
    tmp.replace(path)


def resumed(part: Path, job: dict) -> tuple[list[dict], dict]:
    """The variants a stopped run of the same ``job`` finished (its ``part`` file), each with its images on disk,
    and the study it wrote; else none."""
    try:
        saved = json.loads(part.read_text())
    except (OSError, ValueError):
        return [], {}
    if not isinstance(saved, dict) or saved.get("job") != job or not isinstance(saved.get("study"), dict):
        return [], {}
    kept = [v for v in saved["study"].get("variants", [])
            if all((part.parent / p).is_file() for p in v.get("images", []))]
    return kept, saved["study"]
