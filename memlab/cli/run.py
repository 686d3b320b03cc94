"""Generate images for prompts over seeds, with and without mitigations, match every image against the
world's training index, and write JSONL records (one per seed, one summary per prompt and mitigation)
with the images beside them. With two or more mitigations, every one uses the same seeds and the
summaries state the change against `none`.

    python -m memlab run --prompt "a painting of sunflowers" --seeds 0-9 --mitigation none \\
        --mitigation rna:k=4 --mitigation gni:lam=0.1 --out runs/sunflowers.jsonl
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

from .. import metrics
from ..errors import MemlabError
from . import device
from ..mitigations import MITIGATIONS, strategy_label
from ..records import strict_json


def add_arguments(p):
    p.add_argument("--world", default=None, help="world folder (default: $MEMLAB_WORLD or the built-in world)")
    p.add_argument("--model", default=None, help="pipeline: Hub id or diffusers folder (with --index)")
    p.add_argument("--index", default=None, help="index folder (with --model)")
    p.add_argument("--revision", default=None,
                   help="with --model, the Hub id's branch, tag or commit (default: main); records name the commit")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", action="append", help="a prompt; repeatable (each on the same seeds)")
    g.add_argument("--prompts", help="file: one prompt per line, or CSV/parquet with a caption column")
    p.add_argument("--prompt-column", default=None, help="column of --prompts (default: caption/prompt)")
    p.add_argument("--seeds", default=None, help="'0-9' or '1,2,3' (default: the world's, else 0-7)")
    p.add_argument("--mitigation", action="append", default=None,
                   help="NAME[:k=v,...], repeatable; 'none' is the baseline; compose with '+' "
                        f"(known: {', '.join(MITIGATIONS)})")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--scheduler", default=None, help="ddim (default) or dpm")
    p.add_argument("--detect-steps", type=int, default=1, help="average the detection norm over n steps")
    p.add_argument("--descriptor", default=None, help="descriptor of the index (default: its default)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--attribution", action="store_true",
                   help="add Wen et al.'s per-token attribution of each prompt (first --detect-steps steps, "
                        "the run's first 4 seeds) to its summary records as token_attribution")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", required=True, help="results.jsonl (images are written beside it)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even where a stopped run of the same arguments left results.jsonl.part "
                        "(by default it resumes after the prompts it finished)")


def read_prompts(path: str, column: str | None) -> list[str]:
    """The prompts of a file: one reader of prompt lists everywhere (``memlab.prompts.read_prompt_list``: text,
    CSV/TSV/parquet, NeMo's lists, Wen et al.'s JSONL), or a table's ``column``."""
    from ..prompts import read_prompt_list
    from ..tables import read_table

    f = Path(path)
    if column:
        df = read_table(f, "prompts file", sniff=f.suffix == ".csv")
        if column not in df.columns:
            raise MemlabError(f"{f} has no {column!r} column (columns: {', '.join(map(str, df.columns))})")
        prompts = [str(x).strip() for x in df[column].dropna() if str(x).strip()]
    else:
        prompts = [p for p in read_prompt_list(f)["prompt"] if p]
    if not prompts:
        raise MemlabError(f"{f} holds no prompts (a list of URLs alone names no prompt)")
    return prompts


def run(args) -> int:
    from ..generate import Settings, check_prompt, parse_seeds
    from ..match import descriptor_for_index
    from ..mitigations import parse_strategy
    from ..runner import run_prompt
    from ..world import World

    t0 = time.perf_counter()
    if bool(args.model) != bool(args.index):
        raise MemlabError("--model and --index go together (or use --world)")
    if args.world and args.model:
        raise MemlabError("use either --world or --model/--index")
    if args.revision is not None and not args.model:
        raise MemlabError("--revision goes with --model (a world loads the revision it was made with)")
    if not 1 <= args.k <= 100:
        raise MemlabError("--k must be between 1 and 100")
    if Path(args.out).is_dir():
        raise MemlabError(f"--out {args.out} is a folder: name the results file, e.g. {Path(args.out) / 'results.jsonl'}")
    prompts = list(args.prompt) if args.prompt is not None else read_prompts(args.prompts, args.prompt_column)
    if any(not p.strip() for p in prompts):
        raise MemlabError("the prompt is empty")
    strategies = [parse_strategy(s) for s in (args.mitigation or ["none"])]
    if len({s.spec() for s in strategies}) != len(strategies):
        raise MemlabError("the same mitigation is given twice")
    world = World.from_parts(args.model, args.index, revision=args.revision) if args.model else World.load(args.world)
    d = world.defaults
    home = Path(args.index).resolve().parent if args.model else None
    if home is not None and (home / "world.json").is_file() and (args.steps is None or args.guidance is None):
        print(f"note: {args.index} is the index of the world {home}; --model/--index sample with the generic "
              f"settings ({d['steps']} steps, guidance {d['guidance']:g}, where not given) and none of the world's "
              f"calibrations (its template threshold, Wen's target): --world {home} runs it as its card does",
              file=sys.stderr)
    seeds = parse_seeds(args.seeds or d["seeds"])
    settings = Settings(steps=args.steps if args.steps is not None else d["steps"],
                        guidance=args.guidance if args.guidance is not None else d["guidance"],
                        height=args.height, width=args.width, detect_steps=args.detect_steps).validate()
    index = world.index()
    descriptor = descriptor_for_index(index, args.descriptor)
    gen = world.generator(device=args.device, scheduler=args.scheduler)
    if note := world.template_threshold_note():
        print(f"warning: {note}", file=sys.stderr)
    aligner = world.aligner()
    for p in prompts:
        _, warning = check_prompt(p, gen.tokenizer)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    load_s = time.perf_counter() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    job = {"prompts": prompts, "seeds": list(seeds), "strategies": [s.spec() for s in strategies],
           "settings": settings.to_dict(), "world": args.world, "model": args.model, "index": args.index,
           "descriptor": descriptor.name, "k": args.k, "attribution": args.attribution, "device": args.device,
           "scheduler": args.scheduler, "batch_size": args.batch_size,
           "model_identity": gen.identity}  # a resumed run's records come from the very same model
    job = json.loads(json.dumps(job))  # as the sidecar reads back
    kept = [] if args.no_resume else finished(tmp, job, len(strategies) * (len(seeds) + 1))
    done = len(kept) // (len(strategies) * (len(seeds) + 1))
    if done:
        print(f"resuming {tmp}: {done} of {len(prompts)} prompts were finished by a stopped run of these arguments "
              f"(--no-resume starts over)", file=sys.stderr)
    from ..indexfiles import atomic_save

    atomic_save(tmp.with_name(tmp.name + ".json"), lambda t: t.write_text(json.dumps(job)))
    from tqdm import tqdm

    info = index.descriptor_info(descriptor.name)
    print(f"scores: {descriptor.name} (model {info['model']}, preset {info['preset']}), threshold "
          f"{info['threshold']['value']:.3f} ({info['threshold']['source']}); {settings.steps} steps, guidance "
          f"{settings.guidance:g}; generated by {model_words(gen)}", file=sys.stderr)  # what every line below is from
    bar = tqdm(total=(len(prompts) - done) * len(strategies) * len(seeds) * settings.steps, desc="generate",
               unit="step", file=sys.stderr, disable=None)
    last = {"key": None, "done": 0}

    def progress(name, done, total):
        if last["key"] != (i, name):
            last.update(key=(i, name), done=0)
        bar.update(done - last["done"])
        last["done"] = done

    every = [r for r in map(json.loads, kept) if r["type"] == "summary"]
    try:
        with open(tmp, "w") as f:
            f.writelines(kept)
            for i, p in enumerate(prompts):
                if i < done:
                    continue
                recs = run_prompt(gen, index, descriptor, p, seeds, strategies, settings, out_dir=out.parent,
                                  k=args.k, prompt_id=i, batch_size=args.batch_size, progress=progress,
                                  aligner=aligner, judge=world.object_classifier())
                every += [r for r in recs if r["type"] == "summary"]
                att = None
                if args.attribution:
                    att = {"tokens": gen.token_attribution(p, seeds=seeds[:4], settings=settings,
                                                           steps=settings.detect_steps),
                           "seeds": seeds[:4], "steps": settings.detect_steps,
                           "definition": "Wen et al.: L2 norm of the gradient of ||eps(x_t,c) - eps(x_t,empty)|| "
                                         "w.r.t. each token's input embedding, mean over steps and seeds; "
                                         "of the prompt as given (no mitigation)"}
                for r in recs:
                    if r["type"] == "summary":
                        r["timing"]["load_s"] = load_s
                        if att is not None:
                            r["token_attribution"] = att
                    f.write(json.dumps(strict_json(r), allow_nan=False) + "\n")
                f.flush()  # a prompt's records are whole on disk before the next begins: a stop resumes after it
                os.fsync(f.fileno())
                done = i + 1
                for r in recs:
                    if r["type"] == "summary":
                        ch = r.get("change_vs_none")
                        pc = metrics.paired_text((ch or {}).get("paired"))
                        chs = (f" (change vs none: {ch['replication_rate']:+.0%}" + (f", {pc}" if pc else "")
                               + f"; dataset similarity {ch['dataset_similarity']:+.3f})") if ch else ""
                        ci = metrics.interval_text(r.get("replication_interval"))
                        tqdm.write(f"[{strategy_label(r['mitigation'])}] {textwrap.shorten(p, 60)!r}: replication "
                                   f"{r['replication_rate']:.0%} of {r['n_seeds']} seeds"
                                   + (f" ({ci})" if ci else "") + ", dataset similarity "
                                   f"{r['dataset_similarity']['p95']:.3f}, detection {r['detection_mean']:.3f}{chs}"
                                   + _hidden_words(r.get("hidden_object_share")), file=sys.stderr)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped: {done} of {len(prompts)} prompts finished, kept in {tmp}; the same command resumes after them",
              file=sys.stderr)
        raise
    bar.close()
    tmp.replace(out)
    tmp.with_name(tmp.name + ".json").unlink(missing_ok=True)
    if len(strategies) > 1 or len(prompts) > 1:  # the methods side by side (memlab.compare)
        from ..compare import comparison, format_comparison

        cmp = comparison(every)
        cmp["alignment"] = aligner.info() if aligner is not None else None
        side = out.with_name(out.stem + ".comparison.json")
        side.write_text(json.dumps(strict_json(cmp), indent=2, allow_nan=False))
        print(format_comparison(cmp), file=sys.stderr)
        print(f"wrote {side}", file=sys.stderr)
    print(f"wrote {out} ({len(prompts)} prompts x {len(strategies)} strategies x {len(seeds)} seeds) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def model_words(gen) -> str:
    """The model a run generates with, as its records name it: the Hub id at its commit, or a folder and its
    fingerprint."""
    ident = gen.identity
    if ident.get("revision"):
        return f"{gen.source} at commit {ident['revision'][:12]}"
    return gen.source + (f" (fingerprint {ident['fingerprint'][:12]})" if ident.get("fingerprint") else "")


def finished(part: Path, job: dict, block: int) -> list[str]:
    """The lines of the prompts a stopped run finished (each prompt's ``block`` of seed and summary records,
    written whole), where ``part`` was left by a run of the same ``job`` (its arguments, in ``part``.json);
    else none. A line cut by the stop, and a prompt's records cut short, are left out."""
    sidecar = part.with_name(part.name + ".json")
    try:
        if not part.is_file() or json.loads(sidecar.read_text()) != job:
            return []
    except (OSError, json.JSONDecodeError):
        return []
    lines = []
    with open(part) as f:
        for line in f:
            try:
                rec = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or rec.get("type") not in ("seed", "summary"):
                break
            lines.append(line)
    return lines[:len(lines) // block * block]


def _hidden_words(h: dict | None) -> str:
    """A summary's hidden-object share in words (Memory Triggers), or nothing."""
    return f"; the hidden {h['object']} in {h['k']} of {h['n']} seeds ({metrics.interval_text(h)})" if h else ""
