"""Where a matched image agrees with its training image: Webster's masked matching as an agreement share, and
the share's threshold for an index (``index.build_index`` calibrates it; ``index.calibrate_agreement`` adds it
to an index built before it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import metrics
from .indexfiles import MANIFEST, json_default


def _agreement_calibration(v, distinct, reps, load_image, n: int, seed: int, fpr: float, name: str) -> dict | None:
    """The partial-copy ("template copy") threshold for matched images: the agreement share
    (``metrics.agreement_mask``, Webster's masked matching) of up to ``n`` distinct items with their nearest
    item of another distinct image (by ``name``'s cosine), at ``fpr`` false positives, as the global threshold
    is calibrated. None for an index of a single distinct image."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(reps, size=min(n, len(reps)), replace=False))
    other = metrics.nearest_distinct(v, distinct, rows)
    shares = [agreement_of(load_image(int(a)), load_image(int(b)))["share"] for a, b in zip(rows, other) if b >= 0]
    if not shares:
        return None
    return {"threshold": float(np.quantile(shares, 1.0 - fpr, method="higher")), "fpr": fpr, "n": len(shares),
            **metrics.AGREEMENT, "on": "training pairs",
            "source": (f"{1 - fpr:.0%} quantile of the agreement share ({agreement_words()}) of {len(shares)} distinct "
                       f"training items with their nearest item of another distinct image by {name}")}


def agreement_words() -> str:
    """How the agreement share is measured, in words (its calibrations' ``source``)."""
    a = metrics.AGREEMENT
    return (f"{a['window']}-px windows at {a['side']} px whose detail at {a['detail_sigma']:g} px correlates above "
            f"{a['cutoff']}; Webster's masked matching")


def set_agreement(path, cal: dict | None) -> dict | None:
    """Write an agreement calibration into an index's manifest (atomically; the files it lists are unchanged):
    ``calibrate_agreement``'s, or one made on generations (``local.calibrate_template_threshold``)."""
    from .indexfiles import atomic_save

    manifest = {**json.loads((Path(path) / MANIFEST).read_text()), "agreement": cal}
    atomic_save(Path(path) / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=json_default)))
    return cal


def agreement_of(image, other) -> dict:
    """Where ``image`` agrees with ``other`` (``metrics.agreement_mask``, both at ``metrics.MASK_SIDE``): the
    mask as lists of booleans and its share."""
    from PIL import Image

    side = metrics.MASK_SIDE
    a, b = (np.asarray(im.convert("RGB").resize((side, side), Image.LANCZOS), np.float64) for im in (image, other))
    mask = metrics.agreement_mask(a, b)
    return {"mask": mask.tolist(), "share": float(mask.mean())}
