"""Paths a user names: checked once, here, for every verb and builder."""
from __future__ import annotations

from pathlib import Path

from .errors import MemlabError


def out_folder(path, flag: str = "--out") -> Path:
    """The folder a verb or build writes to: refused up front when the path is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MemlabError(f"{flag} {p} is a file, not a folder")
    return p
