"""Match query images against a training index: per image its top-k training items with scores,
the replication verdict at the descriptor's threshold, and a summary with the dataset-level numbers
(dataset similarity, replication rate) beside the index's background figures."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import metrics
from ..errors import MemlabError
from . import device
from ..records import strict_json
from ..sources import IMAGE_EXTS


def add_arguments(p):
    p.add_argument("--index", required=True, help="index directory (built by python -m index_builder)")
    p.add_argument("--images", nargs="+", action="extend", required=True,
                   help="query image files or folders (repeatable: every one given is matched)")
    p.add_argument("--descriptor", default=None, help="descriptor name (default: the index's default)")
    p.add_argument("--k", type=int, default=5, help="matches per query (default 5)")
    p.add_argument("--weights", default=None, help="model weights file/folder (e.g. SSCD TorchScript)")
    p.add_argument("--weights-sha256", default=None,
                   help="confirm the sha256 of a TorchScript file memlab did not download itself")
    p.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out a file that cannot be read (named, with why, in the output's skipped) instead of "
                        "stopping before any work")


def expand_images(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        elif p.exists():
            out.append(p)
        else:
            raise MemlabError(f"query image {p} does not exist")
    if not out:
        raise MemlabError("no query images found")
    return out


def run(args) -> int:
    from ..index import TrainingIndex
    from ..match import MATCH_CHUNK, descriptor_for_index, match_paths

    if args.k < 1 or args.k > 1000:
        raise MemlabError("--k must be between 1 and 1000")
    t0 = time.perf_counter()
    index = TrainingIndex.load(args.index)
    extra = {"weights_sha256": args.weights_sha256} if args.weights_sha256 else {}
    descriptor = descriptor_for_index(index, args.descriptor, weights=args.weights, device=args.device, **extra)
    index.faiss_index(descriptor.name)
    paths = expand_images(args.images)
    load_s = time.perf_counter() - t0
    bar = None
    if len(paths) > MATCH_CHUNK:
        from tqdm.auto import tqdm

        bar = lambda it, total: tqdm(it, total=total, desc=f"matching in chunks of {MATCH_CHUNK}",  # noqa: E731
                                     file=sys.stderr, disable=None)
    result = match_paths(index, descriptor, paths, k=args.k, progress=bar, skip_unreadable=args.skip_unreadable)
    if result.get("skipped"):
        print(f"skipped {len(result['skipped'])} of {len(paths)} images that could not be read; the first: "
              f"{result['skipped'][0]['error']}", file=sys.stderr)
    result["summary"]["timing"]["load_s"] = load_s
    if args.json:
        json.dump(strict_json(result), sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print_table(result)
    return 0


def _f(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def print_table(result: dict) -> None:
    from ..agreement import agreement_words

    d = result["descriptor"]
    print(f"descriptor {d['name']} | model {d['model']} | preset {d['preset']} | "
          f"threshold {d['threshold']:.3f} ({d['threshold_source']})")
    if ix := d.get("index"):
        print(f"index {str(ix['sha256'])[:12]} (its manifest's sha256; {ix['items']} items, built {ix['built']})")
    for q in result["queries"]:
        verdict = "REPLICATED" if q["replicated"] else q.get("verdict", "novel")
        band = (f"; possible copy above {q['possible_threshold']:.3f}"
                if not q["replicated"] and q.get("possible_threshold") is not None else "")
        print(f"\n{q['image']}  ->  {verdict} (top-1 {q['score']:.3f} vs threshold {q['threshold']:.3f}{band})")
        if (ag := q.get("agreement")) is not None:
            print(f"  agrees with its top-1 in {ag['share']:.0%} of its windows ({agreement_words()}); "
                  + (f"template copy above {ag['threshold']:.0%}" if not q["replicated"] else
                     "the template check is for images not replicated as a whole"))
        print(f"  {'rank':>4}  {'score':>6}  {'copies':>6}  {'id':<12} caption")  # copies in training: the
        for r, m in enumerate(q["matches"], 1):  # image and its near-duplicates (the app's word; JSON: duplicates)
            print(f"  {r:>4}  {m['score']:6.3f}  {m['duplicates'] + 1:>6}  {str(m['id']):<12} {m['caption'][:60]}")
    s = result["summary"]
    ds, bg, cal, t = s["dataset_similarity"], s["background"], s["calibration"], s["timing"]
    ci = metrics.interval_text(s.get("replication_interval"), ".1%")
    print(f"\nqueries {s['n_queries']} | replication rate {s['replication_rate']:.1%}"
          + (f" ({ci}, Wilson)" if ci else "") + " | dataset similarity "
          f"(p95) {_f(ds['p95'])} | mean {_f(ds['mean'])} | background p95 {_f(bg['p95'])}")
    cp, bp = cal.get("copy_percentiles") or {}, cal.get("background_percentiles") or {}
    print(f"calibration: copies p5/p50/p95 {_f(cp.get('p5'))}/{_f(cp.get('p50'))}/{_f(cp.get('p95'))} | "
          f"background p5/p50/p95 {_f(bp.get('p5'))}/{_f(bp.get('p50'))}/{_f(bp.get('p95'))} | "
          f"recall {_f(cal.get('recall'))} fpr {_f(cal.get('fpr'))}")
    print(f"time: load {t['load_s']:.3f}s, " + (f"decode {t['decode_s']:.3f}s, " if "decode_s" in t else "")
          + f"embed {t['embed_s']:.3f}s, search {t['search_s']:.3f}s")
