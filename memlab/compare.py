"""The methods side by side, from a run's records (``memlab run`` with several prompts and strategies):

- **detectors** (Wen et al.'s noise norm, Ren et al.'s attention entropy, Asthana and Belagiannis's
  anisotropy, Chen et al.'s localized score, Jeon et al.'s sharpness, Carlini et al.'s clique of near-identical
  generations): ROC AUC by outcome, probes whose unmitigated seeds replicate at least half the time against
  probes that never replicate, from each probe's mean score over its ``none`` seeds; higher = memorized,
  as each paper scores it (an AUC under 0.5 is reported as it is), with a stratified bootstrap interval
  (``metrics.auc_interval``) and its paired difference from Wen's on the same prompts (``metrics.auc_difference``);
  their cost in UNet passes;
- **mitigations**: on the same prompts and seeds as ``none``, replication, dataset similarity (mean of the
  prompts' p95), alignment and generation seconds per image, each beside ``none``'s; the change in replication
  with a bootstrap interval over prompts (two prompts or more) and the seeds it stopped and made copying.

Pure functions over record dicts (docs/cli.md); ``evaluate`` and ``benchmarks/bench_methods.py`` use them.
"""
from __future__ import annotations

import numpy as np

from . import metrics
from .mitigations import strategy_label

DETECTORS = {
    "wen": {"paper": "Wen et al., ICLR 2024", "statistic": "||eps(x_T, c) - eps(x_T, empty)||, first step",
            "unet_passes": "1 (the first step's, shared with generation)"},
    "ren": {"paper": "Ren et al., ECCV 2024", "statistic": "entropy of the cross-attention over the 77 tokens, "
            "first step, mean over layers", "unet_passes": "1 (the first step's attention, shared)"},
    "asthana": {"paper": "Asthana and Belagiannis, ICLR 2026", "statistic": "norm + 2 x cosine(eps_u, eps_c - "
                "eps_u) at the third-to-last timestep, on the starting noise", "unet_passes": "2 (the first "
                "step's + one at a low-noise timestep)"},
    "bright_ending": {"paper": "Chen et al., ICLR 2025", "statistic": "||m (eps(x_T, c) - eps(x_T, empty))|| / "
                      "mean(m), first step, m the end token's attention at the last step (the bright ending)",
                      "unet_passes": "2 (the first step's and the last step's, both shared with generation)"},
    "jeon": {"paper": "Jeon et al., ICML 2025", "statistic": "||H_c ds - H_u ds|| on the starting noise, first step, "
             "ds = s(x_T, c) - s(x_T, empty) (the Hessians' product by central difference for a float32 UNet, "
             "forward-mode AD for a half-precision one)",
             "unet_passes": "3 (the first step's, shared with generation, and two at x_T +- h ds; in half "
             "precision a forward-mode pass instead of those two)"},
    "carlini": {"paper": "Carlini et al., USENIX Security 2023", "statistic": "the largest clique of the prompt's "
                "generations whose pairwise cosine (the verdict descriptor's, the images as given) reaches the "
                "descriptor's near-duplicate cut, as a share of the seeds (a prompt's score, from its seeds together)",
                "unet_passes": "0 (the generations' vectors, made for matching)"},
}


def outcome_auc(records: list[dict], replicate_at: float = 0.5) -> dict:
    """Per detection method: AUC of the per-prompt mean score, prompts replicating at least ``replicate_at``
    of their ``none`` seeds against prompts replicating none; with the counts of both."""
    summ = [r for r in records if r["type"] == "summary" and r["mitigation"]["name"] == "none"]
    pos = [s for s in summ if s["replication_rate"] >= replicate_at]
    neg = [s for s in summ if s["replication_rate"] == 0]
    methods = sorted({m for s in summ for m in (s.get("detections_mean") or {}) if m in DETECTORS})
    out = {}
    for m in methods:
        p = [s["detections_mean"][m] for s in pos if m in (s.get("detections_mean") or {})]
        n = [s["detections_mean"][m] for s in neg if m in (s.get("detections_mean") or {})]
        iv = metrics.auc_interval(p, n)
        out[m] = {"auc": metrics.roc_auc(np.array(p), np.array(n)) if p and n else None,
                  "auc_interval": None if iv is None else [iv["low"], iv["high"]],
                  "positives": len(p), "negatives": len(n), **DETECTORS.get(m, {})}
        both = [s for s in pos + neg if {m, "wen"} <= set(s.get("detections_mean") or {})]
        d = None if m == "wen" else metrics.auc_difference(
            [s["detections_mean"][m] for s in both], [s["detections_mean"]["wen"] for s in both],
            [s["replication_rate"] >= replicate_at for s in both])
        out[m]["minus_wen"] = None if d is None else [d["difference"], d["low"], d["high"]]  # paired, same prompts
    return out


def mitigation_table(records: list[dict]) -> dict:
    """Per strategy label: prompts, replication, dataset similarity, alignment, seconds per image, and the
    differences from ``none`` on the same prompts (when ``none`` ran)."""
    summ = [r for r in records if r["type"] == "summary"]
    rows: dict = {}
    for s in summ:
        rows.setdefault(strategy_label(s["mitigation"]), []).append(s)
    base_by_prompt = {s["prompt"]: s for s in rows.get("none", [])}
    out = {}
    for label, ss in rows.items():
        align = [s["alignment_mean"] for s in ss if s.get("alignment_mean") is not None]
        secs = [s["timing"]["generate_s"] / s["n_seeds"] for s in ss if s.get("timing") and s["n_seeds"]]
        row = {"prompts": len(ss), "replication_rate": float(np.mean([s["replication_rate"] for s in ss])),
               "dataset_similarity": float(np.mean([s["dataset_similarity"]["p95"] for s in ss])),
               "alignment": float(np.mean(align)) if align else None,
               "seconds_per_image": float(np.mean(secs)) if secs else None}
        base = [base_by_prompt[s["prompt"]] for s in ss if s["prompt"] in base_by_prompt]
        if base and label != "none":
            b_rate = float(np.mean([b["replication_rate"] for b in base]))
            b_align = [b["alignment_mean"] for b in base if b.get("alignment_mean") is not None]
            b_secs = [b["timing"]["generate_s"] / b["n_seeds"] for b in base if b.get("timing") and b["n_seeds"]]
            pairs = [(base_by_prompt[s["prompt"]], s) for s in ss if s["prompt"] in base_by_prompt]
            paired = [(s.get("change_vs_none") or {}).get("paired") for _, s in pairs]
            if all(paired):  # seed by seed, summed over prompts (the counts; the test is per prompt's seeds)
                row["paired"] = {"fewer": sum(p["fewer"] for p in paired), "more": sum(p["more"] for p in paired)}
            row["change_interval"] = metrics.prompt_bootstrap([b["replication_rate"] for b, _ in pairs],
                                                              [s["replication_rate"] for _, s in pairs])
            row.update(none_replication_rate=b_rate,
                       relative_cut=(1 - row["replication_rate"] / b_rate) if b_rate else None,
                       alignment_ratio=(row["alignment"] / float(np.mean(b_align)))
                       if align and b_align and np.mean(b_align) else None,
                       added_seconds_per_image=(row["seconds_per_image"] - float(np.mean(b_secs)))
                       if secs and b_secs else None)
        out[label] = row
    return out


def comparison(records: list[dict]) -> dict:
    return {"detectors": outcome_auc(records), "mitigations": mitigation_table(records),
            "definition": __doc__.split("\n\n")[0].strip()}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell (a name longer than a fixed width pushed its row out of line): the
    first left-aligned, the rest right-aligned but the last, left-aligned."""
    w = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    cell = lambda r, i: r[i].ljust(w[i]) if i in (0, len(r) - 1) else r[i].rjust(w[i])  # noqa: E731
    return ["  ".join(cell(r, i) for i in range(len(r))).rstrip() for r in [header] + rows]


def _change(ci: dict | None) -> str:
    return "-" if not ci else f"{100 * ci['change']:+.1f} pts ({100 * ci['low']:+.1f} to {100 * ci['high']:+.1f})"


def format_comparison(c: dict) -> str:
    lines = _table(["detector", "AUC by outcome (95% interval)", "minus wen (paired 95%)",
                    "prompts (replicating >= half vs never)", "cost (UNet passes)"],
                   [[m, _f(d["auc"], ".3f") + (f" ({d['auc_interval'][0]:.2f}-{d['auc_interval'][1]:.2f})"
                                               if d.get("auc_interval") else ""),
                     "-" if not d.get("minus_wen") else "{:+.3f} ({:+.2f} to {:+.2f})".format(*d["minus_wen"]),
                     f"{d['positives']} vs {d['negatives']}", str(d.get("unet_passes", ""))]
                    for m, d in c["detectors"].items()])
    lines += _table(["strategy", "prompts", "replicated", "cut", "change (95% CI over prompts)", "seeds fewer/more",
                     "data sim", "alignment (x none)", "s/image (+ vs none)"],
                    [[label, str(r["prompts"]), f"{r['replication_rate']:.1%}", _f(r.get("relative_cut"), ".0%"),
                      _change(r.get("change_interval")),
                      f"{r['paired']['fewer']}/{r['paired']['more']}" if r.get("paired") else "-",
                      f"{r['dataset_similarity']:.3f}",
                      f"{_f(r['alignment'], '.3f')} ({_f(r.get('alignment_ratio'), '.2f')})",
                      f"{_f(r['seconds_per_image'], '.3f')} ({_f(r.get('added_seconds_per_image'), '+.3f')})"]
                     for label, r in c["mitigations"].items()])
    return "\n".join(lines)
