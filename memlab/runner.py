"""Generate-and-match runs: for a prompt, each strategy (``none`` and mitigations) on the same seeds,
every image matched against the world's index, per-seed records and a summary record.

Record shape (scripts depend on it; extend, don't rename). Every line has "type" ("seed" or
"summary"), "prompt", "mitigation" (name, spec, parameters). Seed records add "seed",
"effective_prompt", "image", "matches" (as in ``memlab match``), "replicated", "threshold",
"detection", "verdict", "detections" (by method), "alignment", "bright_ending" (the map), "masked_score",
"masked_threshold", "agreement_share", "agreement_threshold" (a ``template copy`` passes both thresholds);
summary records add "replication_rate" (0..1), "dataset_similarity", "n_seeds", "timing",
"detections_mean", "alignment_mean", "template_copy_rate", "replication_interval" (the rate's Wilson
interval), and (``memlab run``, two seeds or more) "generation_clique"; a mitigation's "change_vs_none" adds
"paired" (the seeds it stopped and made copying, with the exact McNemar test).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .generate import Generator, Settings, check_prompt, parse_seeds
from .match import agreement, descriptor_summary, masked_score, match_vectors, query_vectors
from .scorenorm import is_mirrored
from .mitigations import Strategy, parse_strategy
from .records import SeedRecord, Summary, image_stems


def run_prompt(generator: Generator, index, descriptor, prompt: str, seeds: Sequence[int] | str,
               strategies: Sequence[Strategy | str] = ("none",), settings: Settings | None = None,
               out_dir: str | Path | None = None, k: int = 5, prompt_id: int = 0,
               batch_size: int | None = None, progress: Callable[[str, int, int], None] | None = None,
               on_seed: Callable[[dict, object], None] | None = None, head: int = 0,
               aligner=None, judge=None) -> list[dict]:
    """Run every strategy on the same seeds; return seed records then one summary per strategy.

    ``out_dir``: where images are written (records name them relative to it); ``on_seed(record,
    image)`` is called as each seed's record is ready (for streaming UIs; a head start's first seeds
    come from a second thread, before the rest); ``head``: ``Generator.generate``'s head start;
    ``aligner``: scores each image against the prompt (``memlab.alignment``; the seed's ``alignment``); ``judge``:
    tells whether each image features the world's hidden object (``memlab.objects``; the seed's ``hidden_object``,
    the summary's ``hidden_object_share``: Memory Triggers' share of generations featuring it), for a prompt
    holding its keyword (``ObjectClassifier.applies``) and without a mitigation: trained on the world's renders,
    it knows lighthouses, and with RNA (k=4) it found the flag in 16 of 16 generations that mostly show none."""
    settings = (settings or Settings()).validate()
    seeds = parse_seeds(seeds)
    strategies = [parse_strategy(s) if isinstance(s, str) else s for s in strategies]
    prompt, _ = check_prompt(prompt, generator.tokenizer)
    thr = index.threshold(descriptor.name)
    desc = descriptor_summary(index, descriptor.name)
    masked_thr = (getattr(generator, "template_threshold", None) or {}).get("value")  # the world's, if calibrated
    judge = judge if judge is not None and judge.applies(prompt) else None  # a prompt of its keyword (``applies``)
    records, summaries, rows = [], [], []  # rows: each summary's seed records
    baseline, baseline_records = None, None
    stems = image_stems([s.name for s in strategies])
    for strat, stem in zip(strategies, stems):
        mit = strat.to_dict()
        timing = {"generate_s": 0.0, "embed_s": 0.0, "search_s": 0.0, "metrics_s": 0.0}
        seed_records, generation_vectors = [], []

        def handle(batch):
            t0 = time.perf_counter()
            vecs, views = query_vectors(index, descriptor, [r.image for r in batch])
            generation_vectors.append(vecs)
            align = aligner.score([r.image for r in batch], prompt) if aligner is not None else [None] * len(batch)
            seen = hidden_object(judge if strat.is_baseline else None, [r.image for r in batch])  # (``judge``)
            t1 = time.perf_counter()
            matched = match_vectors(index, descriptor, vecs, k, views=views, images=[r.image for r in batch])
            t2 = time.perf_counter()
            timing["embed_s"] += t1 - t0
            timing["search_s"] += t2 - t1
            for j, (r, m) in enumerate(zip(batch, matched)):
                be = r.extra.get("bright_ending_map")
                top, mirrored = m["matches"][0]["row"], is_mirrored(m.get("view"))
                masked = masked_score(index, top, r.image, be, mirrored) if be is not None else None
                agree = None
                if masked is not None and masked_thr is not None:  # a template copy: both regions must agree
                    agree = agreement(index, top, r.image, mirrored)
                    m["verdict"] = metrics.verdict(m["score"], m["threshold"], m["possible_threshold"], masked,
                                                   masked_thr, *((agree["share"], agree["threshold"]) if agree else ()))
                rec = SeedRecord(prompt=prompt, mitigation=mit, seed=r.seed, effective_prompt=r.effective_prompt,
                                 image=None, matches=m["matches"], score=m["score"], replicated=m["replicated"],
                                 high_confidence=m["high_confidence"], threshold=m["threshold"], descriptor=desc,
                                 detection=r.detection, settings=settings.to_dict(), model=generator.info(),
                                 verdict=m["verdict"], possible_threshold=m["possible_threshold"],
                                 detections=r.extra.get("detections"), alignment=align[j],
                                 mitigation_state={k: v for k, v in r.extra.items()
                                                   if k not in ("detections", "bright_ending_map")} or None,
                                 bright_ending=be, masked_score=masked,
                                 masked_threshold=masked_thr if masked is not None else None,
                                 view=m.get("view"), agreement_share=agree["share"] if agree else None,
                                 agreement_threshold=agree["threshold"] if agree else None, hidden_object=seen[j])
                if out_dir is not None:
                    rel = Path("images") / f"p{prompt_id:03d}-{stem}-s{r.seed}.png"
                    (Path(out_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                    r.image.save(Path(out_dir) / rel, format="PNG")
                    rec.image = str(rel)
                rec = rec.to_dict()
                seed_records.append(rec)
                if on_seed:
                    on_seed(rec, r.image)

        t_start = time.perf_counter()
        generator.generate(prompt, seeds, strat, settings, batch_size=batch_size,
                           progress=(lambda d, t, n=strat.name: progress(n, d, t)) if progress else None,
                           on_batch=handle, head=head)
        timing["generate_s"] = time.perf_counter() - t_start - timing["embed_s"] - timing["search_s"]
        t0 = time.perf_counter()
        stats = summarize_records(seed_records, thr, judge)
        if len(seed_records) > 1:
            stats.update(generation_clique(np.concatenate(generation_vectors), descriptor, stats["detections_mean"]))
        timing["metrics_s"] = time.perf_counter() - t0
        summary = Summary(**stats, prompt=prompt, mitigation=mit, descriptor=desc, timing=timing,
                          seeds=list(seeds)).to_dict()
        if strat.is_baseline:
            baseline, baseline_records = summary, seed_records
        records += seed_records
        summaries.append(summary)
        rows.append(seed_records)
    if baseline is not None:
        for s, row in zip(summaries, rows):
            if s is not baseline:
                s["change_vs_none"] = change_vs_none(s, baseline, row, baseline_records)
                if s.get("alignment_mean") is not None and baseline.get("alignment_mean") is not None:
                    s["alignment_change_vs_none"] = s["alignment_mean"] - baseline["alignment_mean"]
    return records + summaries


def generation_clique(vectors: np.ndarray, descriptor, detections_mean: dict | None) -> dict:
    """Carlini et al.'s membership inference on one strategy's generations (``metrics.largest_clique``): the largest
    clique of generations near-identical by the descriptor's own near-duplicate cut (the cosine that joins training
    rows into one group), as a share of the seeds; the summary's ``detections_mean["carlini"]`` (a prompt's score,
    from no seed alone) and ``generation_clique`` (its size, the seeds, the cut and the descriptor)."""
    v = np.asarray(vectors, np.float32)
    cut = float(descriptor.duplicate_threshold)
    size = metrics.largest_clique(v @ v.T, cut)
    return {"detections_mean": {**(detections_mean or {}), "carlini": size / len(v)},
            "generation_clique": {"largest": int(size), "seeds": int(len(v)), "cut": cut,
                                  "descriptor": descriptor.name, "score": "cosine of the generations as given"}}


def change_vs_none(summary: dict, baseline: dict, records: list[dict] | None = None,
                   baseline_records: list[dict] | None = None) -> dict:
    """A strategy's summary minus the unmitigated one's, on the same seeds (DCR's comparison of a
    mitigation: replication rate, dataset similarity (p95) and Wen et al.'s detection score); with both sides'
    seed records, ``paired``: seed by seed, how many it stopped and made copying and the exact McNemar test
    (``metrics.paired_change``)."""
    out = {"replication_rate": summary["replication_rate"] - baseline["replication_rate"],
           "dataset_similarity": summary["dataset_similarity"]["p95"] - baseline["dataset_similarity"]["p95"],
           "detection": summary["detection_mean"] - baseline["detection_mean"]}
    if records is not None and baseline_records is not None:
        out["paired"] = metrics.paired_change({r["seed"]: r["replicated"] for r in baseline_records},
                                              {r["seed"]: r["replicated"] for r in records})
    return out


def summarize_records(seed_records: list[dict], threshold: dict, judge=None) -> dict:
    """Multi-seed replication rate, dataset similarity and mean detection of a strategy's seeds; where they were
    judged for the world's hidden object, its share (``hidden_object_share``, named by ``judge``)."""
    scores = np.array([r["score"] for r in seed_records])
    flags, high = metrics.replication_flags(scores, threshold["value"], threshold.get("high"))
    det = np.array([r["detection"] for r in seed_records])
    methods = sorted({k for r in seed_records for k in (r.get("detections") or {})})
    align = [r["alignment"] for r in seed_records if r.get("alignment") is not None]
    return {"n_seeds": len(seed_records), "replication_rate": metrics.replication_rate(flags),
            "high_confidence_rate": metrics.replication_rate(high),
            "dataset_similarity": metrics.dataset_similarity(scores, threshold["value"]),
            "detection_mean": float(det.mean()) if det.size else None,
            "threshold": float(threshold["value"]),
            "possible_copy_rate": float(np.mean([r.get("verdict") == "possible copy" for r in seed_records]))
            if seed_records else 0.0,
            "detections_mean": {m: float(np.mean([r["detections"][m] for r in seed_records])) for m in methods}
            or None,
            "alignment_mean": float(np.mean(align)) if align else None,
            "template_copy_rate": float(np.mean([r.get("verdict") == "template copy" for r in seed_records]))
            if seed_records else 0.0,
            "replication_interval": metrics.rate_interval(flags),
            "hidden_object_share": hidden_object_share(seed_records, judge)}


def hidden_object(judge, images) -> list:
    """Each image's ``hidden_object``: the object, whether the world's classifier finds it (probability above
    0.5), and the probability; None for each where the world has no classifier."""
    if judge is None:
        return [None] * len(images)
    p = judge.probabilities(images)
    return [{"object": judge.object, "features": bool(x > 0.5), "probability": round(float(x), 4)} for x in p]


def hidden_object_share(seed_records: list[dict], judge=None) -> dict | None:
    """Memory Triggers' share of generations featuring the hidden object (their US flag), with Wilson's interval,
    named by the classifier that decided (``judge``: its held-out accuracy); None where no seed was judged."""
    judged = [r["hidden_object"] for r in seed_records if r.get("hidden_object")]
    if not judged:
        return None
    seen = [bool(h["features"]) for h in judged]
    return {"object": judged[0]["object"], "share": float(np.mean(seen)), **metrics.rate_interval(seen),
            "by": judge.info() if judge is not None else None}
