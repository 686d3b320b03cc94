"""A world: a folder naming a text-to-image pipeline and the index of its training set.

    world.json   name, what the model was trained on, model (a diffusers folder inside the world, or a
                 Hub id), index (an index_builder output inside the world), descriptors, defaults
    model/       diffusers folder (save_pretrained)           [optional when "model" is a Hub id]
    index/       memlab index (python -m index_builder)

The unit that ``memlab run`` and the app load, like a diffusers model folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MemlabError

WORLD_FILE = "world.json"
ASSETS_WORLD = Path(__file__).resolve().parents[1] / "assets" / "world"
DEFAULTS = {"steps": 50, "guidance": 7.5, "scheduler": "ddim", "seeds": "0-7", "k": 5}


def default_world_path() -> Path:
    """$MEMLAB_WORLD, else the built-in world in assets/."""
    return Path(os.environ.get("MEMLAB_WORLD") or ASSETS_WORLD)


@dataclass
class World:
    path: Path | None
    name: str
    model: str
    index_path: Path
    trained_on: str = ""
    descriptors: list = field(default_factory=list)
    defaults: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    _index: object = None
    _generator: object = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> "World":
        path = Path(path) if path else default_world_path()
        f = path / WORLD_FILE
        if not f.is_file():
            hint = (" (the built-in world: rebuild it with `python -m memlab build-world --out assets/world`)"
                    if path.resolve() == ASSETS_WORLD.resolve() else "")
            raise MemlabError(f"{path} is not a memlab world (no {WORLD_FILE}){hint}")
        try:
            m = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise MemlabError(f"{f} is not valid JSON: {e}") from e
        for key in ("name", "model", "index"):
            if key not in m:
                raise MemlabError(f"{f} has no {key!r} entry")
        model = m["model"]
        if (path / model).exists():
            model = str(path / model)
        return cls(path=path, name=m["name"], model=model, index_path=path / m["index"],
                   trained_on=m.get("trained_on", ""), descriptors=m.get("descriptors", []),
                   defaults={**DEFAULTS, **m.get("defaults", {})}, manifest=m)

    @classmethod
    def from_parts(cls, model: str, index: str | Path, name: str | None = None) -> "World":
        """A world assembled from a model (Hub id or folder) and an index folder."""
        return cls(path=None, name=name or Path(str(model)).name, model=str(model), index_path=Path(index),
                   defaults=dict(DEFAULTS))

    def index(self):
        if self._index is None:
            from .index import TrainingIndex

            self._index = TrainingIndex.load(self.index_path)
        return self._index

    def generator(self, device: str | None = None, scheduler: str | None = None):
        if self._generator is None:
            from .generate import Generator

            self._generator = Generator.from_pretrained(self.model, device=device,
                                                        scheduler=scheduler or self.defaults["scheduler"])
            self._generator.wen_target = self.defaults.get("wen_target")  # calibrated at build, if any
        return self._generator

    def file(self, name: str) -> Path | None:
        """A file the world names in world.json (e.g. "probes", "card"), if present."""
        rel = self.manifest.get(name)
        if rel and self.path is not None and (self.path / rel).is_file():
            return self.path / rel
        return None


def write_world_json(path: Path, **entries) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / WORLD_FILE).write_text(json.dumps(entries, indent=2))
    return path / WORLD_FILE
