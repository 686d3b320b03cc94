"""Paths a user names or a file hands memlab: checked once, here, for every verb and builder. The one rule
for anything read from a shard or a listing: a name that is absolute, has ``..``, or resolves outside its
folder is refused for that sample, reported and skipped; nothing is written outside the staging folder."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import MemlabError


def out_folder(path, flag: str = "--out") -> Path:
    """The folder a verb or build writes to: refused up front when the path is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MemlabError(f"{flag} {p} is a file, not a folder")
    return p


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (its folder made), else copy it (another file system)."""
    import os
    import shutil

    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


_UNSAFE = re.compile(r"[^\w.-]+")


def member_name(key: str, max_len: int = 120) -> str | None:
    """A shard member's key (or a listed path) as one safe file name, or None when it is refused: an absolute
    name, a ``..`` component, an empty one or a NUL byte. Folders are kept in the name (``imgs/0000`` ->
    ``imgs__0000``), characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, a leading dot
    is kept from hiding the file, and a name over ``max_len`` characters is cut and given a hash of the whole
    (two long names never meet)."""
    if not key or "\x00" in key:
        return None
    key = key.replace("\\", "/")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        return None
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    name = "__".join(_UNSAFE.sub("_", p) for p in parts)
    if name.startswith("."):
        name = "_" + name
    if len(name) > max_len:
        name = name[:max_len - 17] + "-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return name


class Skipped:
    """Samples a build skipped, counted by reason, with a few examples of each (the build's report)."""

    def __init__(self, examples: int = 5):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self._n = examples

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self._n:
            ex.append(where)

    def merge(self, other: "Skipped") -> None:
        """Count ``other``'s skips here too (a worker's, in the order the samples came)."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.examples.get(reason, [])[:max(0, self._n - len(ex))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}

    def summary(self) -> str:
        return ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items(), key=lambda t: -t[1])) or "none"
