"""What a run hands the page: the growing run (``RunState``), the top-k one per near-duplicate group, and
the names of the built-in world's probe groups."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

APP_MATCHES = 50  # matches kept per generation in the app: room for k distinct groups after collapsing


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


def probe_group_name(group: str) -> str:
    """How the app names a group of the built-in world's probes (``memlab.worldgen``)."""
    m = re.fullmatch(r"(full|partial)_ddf(\d+)", group)
    if m:
        how = "the same image and caption" if m[1] == "full" else "the same image, paraphrased captions"
        return f"planted: {m[1]} duplication x{m[2]} ({how})"
    return {"unique": "seen once in training", "keyword": "keyword images (a hidden object)"}.get(group, group)


