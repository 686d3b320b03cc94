"""A world: a folder naming a text-to-image pipeline and the index of its training set.

    world.json   name, what the model was trained on, model (a diffusers folder inside the world, or a
                 Hub id), index (an index_builder output inside the world), descriptors, defaults; for a
                 model outside the world (``world create``), the one it was calibrated on: model_revision
                 (the Hub commit, loaded again) or model_fingerprint (a local folder's, checked at load)
    model/       diffusers folder (save_pretrained)           [optional when "model" is a Hub id]
    index/       memlab index (python -m index_builder)

world.json's ``files`` holds the size and sha256 of every file of the model folder, the keyword views and
the files world.json names (probes, card); the index checks its own (manifest.json). A world whose files
are missing, truncated or modified is refused at load with the file named (``seal_world`` writes them).

The unit that ``memlab run`` and the app load, like a diffusers model folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .indexfiles import sha256
from .errors import MemlabError
from .jsonfiles import read_json
from .validate import check_world

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
    _aligner: object = None
    _judge: object = None

    @classmethod
    def load(cls, path: str | Path | None = None, verify: bool = True) -> "World":
        path = Path(path) if path else default_world_path()
        f = path / WORLD_FILE
        if not f.is_file():
            hint = (" (the built-in world: rebuild it with `python -m memlab build-world --out assets/world`)"
                    if path.resolve() == ASSETS_WORLD.resolve() else "")
            raise MemlabError(f"{path} is not a memlab world (no {WORLD_FILE}){hint}")
        m = read_json(f)
        for key in ("name", "model", "index"):
            if not isinstance(m, dict) or key not in m:
                raise MemlabError(f"{f} has no {key!r} entry")
        check_world(m, path)
        if verify:
            verify_world(path, m)
        model = m["model"]
        if (path / model).exists():
            model = str(path / model)
        return cls(path=path, name=m["name"], model=model, index_path=path / m["index"],
                   trained_on=m.get("trained_on", ""), descriptors=m.get("descriptors", []),
                   defaults={**DEFAULTS, **m.get("defaults", {})}, manifest=m)

    @classmethod
    def from_parts(cls, model: str, index: str | Path, name: str | None = None,
                   revision: str | None = None) -> "World":
        """A world assembled from a model (Hub id, at ``revision``, or folder) and an index folder."""
        return cls(path=None, name=name or Path(str(model)).name, model=str(model), index_path=Path(index),
                   defaults=dict(DEFAULTS), manifest={"model_revision": revision} if revision is not None else {})

    def index(self):
        if self._index is None:
            from .index import TrainingIndex

            self._index = TrainingIndex.load(self.index_path)
        return self._index

    def generator(self, device: str | None = None, scheduler: str | None = None):
        if self._generator is None:
            from .generate import Generator
            from .local import current_threshold

            gen = Generator.from_pretrained(self.model, device=device, scheduler=scheduler or self.defaults["scheduler"],
                                            revision=self.manifest.get("model_revision"))
            want, got = self.manifest.get("model_fingerprint"), gen.identity["fingerprint"]
            if want and got != want:
                raise MemlabError(f"world {self.path}: its model {self.model} is not the one it was calibrated on (its "
                                  f"files' fingerprint {(got or 'none: not a local folder')[:30]}, world.json's "
                                  f"{want[:12]}); make the world again with `python -m memlab world create`, or restore "
                                  f"the model")
            self._generator = gen
            self._generator.wen_target = self.defaults.get("wen_target")  # calibrated at build, if any
            self._generator.sail_target = self.defaults.get("sail_target")
            # the masked ("template copy") threshold, calibrated at build where the world has one (issue 32)
            self._generator.template_threshold = current_threshold(self.manifest.get("template_threshold"))
            folder = self.folder("nemo")
            if folder is not None:
                from .nemo import NeMoStats

                self._generator.nemo_stats = NeMoStats.load(folder)
        return self._generator

    def template_threshold_note(self) -> str | None:
        """Why this world calls no seed a ``template copy`` although it has a template threshold: the threshold
        was calibrated on another masked score or bright-ending map than memlab measures now (``local.MASKED_SCORE``,
        issue 32). None where the threshold is current or the world has none."""
        from .local import current_threshold

        thr = self.manifest.get("template_threshold")
        if not thr or current_threshold(thr) is not None:
            return None
        return ("this world's template threshold was calibrated on another masked score or bright-ending map than "
                "memlab measures now, so no seed is called a template copy until it is calibrated again: "
                "`python -m memlab build-world --out WORLD --refresh` for a world memlab built, `python -m memlab "
                "world create` run again for a world made from a list")

    def folder(self, name: str) -> Path | None:
        """A folder the world names in world.json (e.g. "nemo", "alignment"), if present."""
        rel = self.manifest.get(name)
        if isinstance(rel, str) and self.path is not None and (self.path / rel).is_dir():
            return self.path / rel
        return None

    def aligner(self):
        """How this world measures prompt alignment: its own scene classifier (the built-in world), else the
        index's CLIP descriptor (CLIP score), else None (records then carry no alignment)."""
        if self._aligner is None:
            from .alignment import ClipAlignment, SceneAlignment

            folder = self.folder("alignment")
            if folder is not None:
                self._aligner = SceneAlignment.load(folder)
            else:
                from .match import descriptor_for_index

                index = self.index()
                clip = next((n for n in index.descriptor_names if index.descriptor_info(n).get("kind") == "clip"),
                            None)
                self._aligner = ClipAlignment(descriptor=descriptor_for_index(index, clip)) if clip else False
        return self._aligner or None

    def object_classifier(self):
        """The classifier that tells whether a generation features the keyword's hidden object (the built-in
        world's ``objects/``: ``memlab.objects``), or None; loaded once, with the planted keywords whose hidden
        object it judges (``keywords``: the prompts it applies to)."""
        if self._judge is None:
            folder = self.folder("objects")
            if folder is None:
                self._judge = False
            else:
                from .objects import ObjectClassifier

                self._judge = ObjectClassifier.load(folder)
                self._judge.keywords = [k for k, v in (self.manifest.get("keywords") or {}).items()
                                        if (v or {}).get("hidden_object") == self._judge.object]
        return self._judge or None

    def file(self, name: str) -> Path | None:
        """A file the world names in world.json (e.g. "probes", "card"), if present."""
        rel = self.manifest.get(name)
        if rel and self.path is not None and (self.path / rel).is_file():
            return self.path / rel
        return None


def sealed_files(path: Path, m: dict) -> list[str]:
    """The world's own files under checksum: the model folder (when inside the world), the keyword views
    and the files world.json names; relative paths, sorted."""
    out = []
    inside = m.get("model") and not Path(m["model"]).is_absolute() and (path / m["model"]).is_dir()
    named = [m[k] for k in ("nemo", "alignment") if isinstance(m.get(k), str)]
    for folder in ([m["model"]] if inside else []) + ["keywords"] + named:  # (a model elsewhere is not sealed)
        if (path / folder).is_dir():
            out += [str(f.relative_to(path)) for f in (path / folder).rglob("*") if f.is_file()]
    out += [m[k] for k in ("probes", "card") if m.get(k) and (path / m[k]).is_file()]
    return sorted(set(out))


def seal_world(path: str | Path) -> Path:
    """Write the size and sha256 of the world's own files into world.json (atomically)."""
    path = Path(path)
    f = path / WORLD_FILE
    m = read_json(f)
    m["files"] = {r: {"bytes": (path / r).stat().st_size, "sha256": sha256(path / r)} for r in sealed_files(path, m)}
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m, indent=2))
    os.replace(tmp, f)
    return f


def verify_world(path: Path, m: dict) -> None:
    """Refuse a world whose sealed files are missing, truncated or modified, naming the file."""
    for rel, rec in (m.get("files") or {}).items():
        p = path / rel
        if not p.is_file():
            raise MemlabError(f"world {path}: {rel} is missing (world.json lists it); rebuild or restore the world")
        if p.stat().st_size != rec["bytes"]:
            raise MemlabError(f"world {path}: {rel} is {p.stat().st_size} bytes, world.json says {rec['bytes']} "
                              f"(truncated or replaced); rebuild or restore the world")
        if sha256(p) != rec["sha256"]:
            raise MemlabError(f"world {path}: {rel} does not match its checksum in world.json (modified); "
                              f"rebuild or restore the world")


def write_world_json(path: Path, **entries) -> Path:
    """world.json with ``entries``, sealed over the files already in the world."""
    path.mkdir(parents=True, exist_ok=True)
    (path / WORLD_FILE).write_text(json.dumps(entries, indent=2))
    return seal_world(path)
