"""PCA whitening of memlab-copy's vectors against SSCD's score normalization alone, on the validation copies and
generations (issue 30's twenty-first pass; tried, not shipped).

Two distinct scenes of the built-in world often share a background, and their vectors share its directions: the
directions along which the training images vary most (a background's colour, a texture) are the ones two distinct
images can agree on. PCA whitening, learned on the training set's own distinct images (no copy seen), scales each
principal direction by its eigenvalue to the power ``-s / 2`` (``s`` the shrinkage: 0 leaves the vectors as they
are, 1 whitens fully; Radenovic et al.'s ``pcawhitenlearn_shrinkage``), then unit length again; a small
regularizer (``eps`` x the mean eigenvalue) keeps the weakest directions from being blown up. The index's vectors,
the copies' and the generations' are whitened alike, then scored with SSCD's score normalization (k 2, beta 1) as
given, with the threshold at 1% of the distinct images' background, and also at the scores that flag N unique
seeds (``--matched``: rules compared at equal false alarms on the generations). The baseline, measured in the same
run, is the unwhitened vectors under the same rule (``bench_local_centring``'s first line).

    python -m benchmarks.bench_whitening --world PREVIOUS_WORLD [--items 96] [--seeds 10] [--matched 6,10]
        [--dims 64,128,256] [--shrinkage 0.25,0.5,1] [--eps 0.01] [--fit-world-seed 2]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def learn_whitening(x: np.ndarray, shrinkage: float, eps: float, dims: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening learned on the rows of ``x``: (mean, projection), each principal direction scaled by
    ``(eigenvalue + eps * mean eigenvalue) ** (-shrinkage / 2)``; ``dims``: only the strongest that many directions
    kept (fewer rows than dimensions leave the rest unmeasured). Computed from the rows' SVD."""
    m = x.mean(0)
    _, sv, vt = np.linalg.svd(x - m, full_matrices=False)
    lam = sv ** 2 / max(len(x) - 1, 1)  # the covariance's eigenvalues, strongest first
    keep = len(lam) if dims is None else min(dims, len(lam))
    lam, u = lam[:keep], vt[:keep].T
    return m, u * (lam + eps * max(lam.mean(), 1e-12)) ** (-shrinkage / 2)


def whiten(x: np.ndarray, m: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Rows of ``x`` centred, projected and made unit length again."""
    y = (x - m) @ p
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def other_world_vectors(d, world: Path, work: Path, seed: int) -> tuple[np.ndarray, str]:
    """``d``'s vectors of each distinct image of another world's training set, drawn from ``world``'s spec with
    ``seed`` (``bench_verdict_choice.training_set``, cached under ``work``), and a line naming them."""
    import json

    from benchmarks.bench_verdict_choice import training_set
    from memlab.worldgen import WorldSpec

    card = json.loads((world / "card.json").read_text())
    spec = WorldSpec(**{"n_templates": 0, **card["spec"], "seed": seed})
    rows, image_of = training_set(spec, work / f"fit-world{seed}" / "data")
    first = np.unique(rows["file"].to_numpy(), return_index=True)[1]
    return (np.asarray(d.embed([image_of(int(i)) for i in sorted(first)]), np.float64),
            f"another world's distinct training images (its spec, seed {seed})")


def main():
    from benchmarks.bench_local_centring import RULES, load_validation, measure
    from benchmarks.bench_verdict_choice import validation_parser

    ap = validation_parser(__doc__, 10)
    ap.add_argument("--matched", default="6,10")
    ap.add_argument("--shrinkage", default="0.25,0.5,1")
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--dims", default="64,128,256", help="comma-separated: the strongest directions kept")
    ap.add_argument("--fit-world-seed", type=int, default=None,
                    help="learn the whitening on another world drawn from the previous world's spec with this seed "
                         "(images neither the index nor its background holds) instead of the index's own images")
    a = ap.parse_args()
    val = load_validation(a)
    matched = [int(x) for x in a.matched.split(",") if x]
    label, form, k, beta = RULES[0]
    measure(val, label, form, k, beta, matched)
    fit, source = val.v[val.reps], "the index's own distinct training images"  # each once
    if a.fit_world_seed is not None:
        fit, source = other_world_vectors(val.d, Path(a.world), Path(a.work), a.fit_world_seed)
    print(f"whitening learned on {len(fit)} {fit.shape[1]}-d vectors of {source}, eps {a.eps:g}", flush=True)
    for dims in [int(x) for x in a.dims.split(",") if x]:
        for s in [0.0] + [float(x) for x in a.shrinkage.split(",") if x]:  # 0: the projection alone
            m, p = learn_whitening(fit, s, a.eps, dims)
            copies = {kind: (o, whiten(c, m, p)) for kind, (o, c) in val.copies.items()}
            measure(val, f"{dims} strongest directions, shrinkage {s:g}, then SSCD normalization", form, k, beta,
                    matched, v=whiten(val.v, m, p), copies=copies, gen_vec=whiten(val.gen_vec, m, p))


if __name__ == "__main__":
    main()
