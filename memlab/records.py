"""A run's records: a seed record and a summary (``memlab run``'s JSONL lines, docs/cli.md), the growing run
the page streams (``RunState``), the top-k one per near-duplicate group, and the names of the built-in
world's probe groups."""
from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass, field, fields
from typing import Sequence

APP_MATCHES = 50  # matches kept per generation in the app: room for k distinct groups after collapsing


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """The versions a record depends on: the generation's (the same seed, settings and model give the same image
    with torch, diffusers and transformers) and its scores' (the descriptors' preprocessing and networks)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"memlab": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "pillow", "torchvision", "open_clip_torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out  # (cached: the same for the process; a caller copies it before changing it)


def image_stems(names: Sequence[str]) -> list[str]:
    """The file-name stems of strategies' images, in order, from their mitigations' names: the name made safe, and
    where strategies share a name (a sweep, rna:k=1 and rna:k=3; jain and jain:mode=dynamic) its position added, so
    no strategy's image overwrites another's (``memlab run``'s images, the app's exports)."""
    names = list(names)
    slug = ["".join(c if c.isalnum() else "-" for c in n)[:24].strip("-") or "x" for n in names]
    return [s + (f"{i}" if names.count(n) > 1 else "") for i, (s, n) in enumerate(zip(slug, names))]


def strict_json(obj):
    """``obj`` as RFC 8259 JSON allows it: NaN and infinities (a pandas mean over nothing) as null, numpy scalars
    and arrays as numbers and lists; so a card, record or match result opens in jq or a browser's
    ``JSON.parse``, not only in Python (whose ``json`` writes a bare NaN)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def collapse_matches(matches: Sequence[dict], k: int) -> list[dict]:
    """The top ``k`` near-duplicate groups among ranked matches: each group's best match, with
    ``copies`` = how many of the matches belong to that group (the rest are its duplicates)."""
    out: dict = {}
    for m in matches:
        g = m.get("group", m.get("row"))
        if g in out:
            out[g]["copies"] += 1
        else:
            out[g] = {**m, "copies": 1}
    return list(out.values())[:k]


@dataclass
class SeedRecord:
    """One generation matched against the training set: a ``"type": "seed"`` line of ``memlab run``'s JSONL;
    ``to_dict`` writes the format's keys in the format's order (scripts depend on it: extend, don't rename)."""

    prompt: str
    mitigation: dict
    seed: int
    effective_prompt: str
    image: str | None
    matches: list
    score: float
    replicated: bool
    high_confidence: bool
    threshold: float
    descriptor: dict
    detection: float | None
    settings: dict
    model: dict
    verdict: str | None = None  # replicated, possible copy or novel (since issue 33; after the older keys)
    possible_threshold: float | None = None
    detections: dict | None = None  # by method: wen, ren, asthana (since issue 31)
    alignment: float | None = None  # does the image show what the prompt names (``memlab.alignment``)
    mitigation_state: dict | None = None  # what a mitigation decided for this seed (Jain's step, NeMo's neurons)
    bright_ending: list | None = None  # Chen et al.'s end-token map at the last step, at most 16 x 16 (issue 32)
    masked_score: float | None = None  # similarity to the top-1 match inside that map (``metrics.masked_similarity``)
    masked_threshold: float | None = None  # the world's calibrated threshold for it ("template copy"), if any
    view: str | None = None  # the view of the image the normalized verdict kept (``memlab.scorenorm``), if any
    agreement_share: float | None = None  # where it agrees with its top-1 match (Webster's masked matching) ...
    agreement_threshold: float | None = None  # ... and the index's threshold: a template copy passes both
    hidden_object: dict | None = None  # does the image feature the world's hidden object (Memory Triggers), if judged

    def to_dict(self) -> dict:
        return {"type": "seed", **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict) -> "SeedRecord":
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    @property
    def top1(self) -> dict:
        """The best training match (its id, row, caption, score, duplicates, group)."""
        return self.matches[0]


SUMMARY_STATS = ("n_seeds", "replication_rate", "high_confidence_rate", "dataset_similarity", "detection_mean",
                 "threshold")


@dataclass
class Summary:
    """A strategy's seeds summarized: DCR's multi-seed replication rate and dataset similarity, Wen et al.'s
    mean detection (``runner.summarize_records``); a ``"type": "summary"`` line of the JSONL, written by
    ``to_dict`` in the format's order. ``timing`` only where the run was timed (``memlab run``)."""

    n_seeds: int
    replication_rate: float
    high_confidence_rate: float
    dataset_similarity: dict
    detection_mean: float | None
    threshold: float
    possible_copy_rate: float = 0.0  # seeds in the "possible copy" band (``metrics.verdict``)
    detections_mean: dict | None = None  # per detection method (issue 31)
    alignment_mean: float | None = None
    template_copy_rate: float = 0.0  # seeds called "template copy" (a partial copy: issue 32)
    generation_clique: dict | None = None  # Carlini et al.'s clique of near-identical generations (runner)
    replication_interval: dict | None = None  # the rate's Wilson interval (``metrics.rate_interval``)
    hidden_object_share: dict | None = None  # the seeds featuring the world's hidden object, with Wilson's interval
    prompt: str = ""
    mitigation: dict = field(default_factory=dict)
    descriptor: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)
    timing: dict | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in SUMMARY_STATS}
        d.update({"type": "summary", "prompt": self.prompt, "mitigation": self.mitigation,
                  "descriptor": self.descriptor})
        if self.timing is not None:
            d["timing"] = self.timing
        d["seeds"] = self.seeds
        d["possible_copy_rate"] = self.possible_copy_rate  # (added by issue 33: after the older keys)
        d["detections_mean"] = self.detections_mean  # (issue 31)
        d["alignment_mean"] = self.alignment_mean
        d["template_copy_rate"] = self.template_copy_rate  # (issue 32)
        if self.generation_clique is not None:  # (Carlini et al.'s detector: where the run kept the vectors)
            d["generation_clique"] = self.generation_clique
        if self.replication_interval is not None:  # (how sure the rate is: added after the older keys)
            d["replication_interval"] = self.replication_interval
        if self.hidden_object_share is not None:  # (a world with a hidden object's classifier: after the older keys)
            d["hidden_object_share"] = self.hidden_object_share
        return d


@dataclass
class RunState:
    """One finished (or streaming) run: its records and images, ready to show or export."""

    prompt: str
    records: list = field(default_factory=list)
    images: list = field(default_factory=list)  # PIL images, aligned with the seed records
    summaries: list = field(default_factory=list)
    warning: str | None = None
    requested: int = 0  # seed records the run was asked for (0: not tracked)

    @property
    def finished(self) -> bool:
        return len(self.records) >= self.requested


def probe_group_name(group: str, short: bool = False) -> str:
    """How the app names a group of the built-in world's probes (``memlab.worldgen``); ``short``: the planted
    duplication alone ("full duplication x20"), for a sentence."""
    m = re.fullmatch(r"(full|partial)_ddf(\d+)", group)
    if m:
        how = "the same image and caption" if m[1] == "full" else "the same image, paraphrased captions"
        return f"{m[1]} duplication x{m[2]}" if short else f"planted: {m[1]} duplication x{m[2]} ({how})"
    return {"unique": "seen once in training", "keyword": "keyword images (a hidden object)",
            "template": "planted: a shared template, other content inside (template copies)"}.get(group, group)


