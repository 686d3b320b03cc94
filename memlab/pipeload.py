"""Loading a diffusers text-to-image pipeline, and naming exactly what was loaded.

A Hub id is named by the commit it resolved to (``revision``: the Hub's snapshot, which never changes once
made; diffusers' ``from_pretrained(revision=...)`` loads it again), a local folder by the sha256 of the files
the pipeline loads (``fingerprint``): the same name, the same weights. Records, exports and world.json carry
both, with the versions of the libraries that ran them (``records.software``): a figure measured on one model is
known not to describe another, and a world calibrated on one revision loads that revision.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MemlabError, ModelFileMissing
from .validate import COMMIT

REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")  # a branch, tag or commit as a user names one
# what a pipeline folder's components load: configs, tokenizer files and safetensors weights (not another format)
LOADED_SUFFIXES = (".json", ".txt", ".model", ".safetensors")


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline is: ``folder`` holds its model_index.json (a local folder, or a Hub snapshot)."""
    model: str  # as named: a Hub id or a folder
    folder: Path
    hub: bool
    local_only: bool

    @property
    def revision(self) -> str | None:
        """The Hub commit the id resolved to (its snapshot folder's name); None for a local folder."""
        return self.folder.name if self.hub and COMMIT.fullmatch(self.folder.name) else None


def check_revision(revision: str | None) -> str | None:
    """A revision a user or a world.json names: a branch, tag or commit, never a path out of the cache."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not REVISION.fullmatch(revision) or ".." in revision.split("/"):
        raise MemlabError(f"revision must name a branch, tag or commit of a Hub repository (got {revision!r:.60})")
    return revision


def hub_model_index(model_id: str, local_only: bool, revision: str | None = None) -> Path:
    """The folder holding a Hub pipeline's model_index.json at ``revision`` (fetched alone, or from the cache), so
    that it is checked (``validate.check_pipeline``) before diffusers imports the modules it names: a world.json
    from elsewhere may name any Hub id. The folder is the revision's snapshot, named by its commit."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model_id, "model_index.json", revision=revision,
                                    local_files_only=local_only)).parent
    except (OSError, ValueError) as e:  # (huggingface_hub's errors: not found, offline and not cached)
        at = f" at revision {revision}" if revision else ""
        raise ModelFileMissing(f"cannot load the pipeline {model_id}{at}: {str(e).splitlines()[0][:300]}") from e


def locate(model: str | Path, revision: str | None = None, local_files_only: bool | None = None) -> ModelSource:
    """Find a pipeline without loading it: a local folder as it is, a Hub id at ``revision`` (default: the main
    branch) resolved to its commit; its model_index.json checked (components of diffusers and transformers only)."""
    from .descriptors import offline
    from .validate import check_pipeline

    p = Path(str(model))
    if p.exists():
        if revision is not None:
            raise MemlabError(f"{p} is a local folder: a revision names a commit of a Hub repository")
        if not (p / "model_index.json").is_file():
            raise ModelFileMissing(f"{p} is not a diffusers pipeline folder (no model_index.json)")
        src = ModelSource(str(model), p, hub=False, local_only=True)
    else:
        local_only = bool(local_files_only or offline())
        src = ModelSource(str(model), hub_model_index(str(model), local_only, check_revision(revision)), hub=True,
                          local_only=local_only)
    check_pipeline(src.folder)
    return src


def loaded_files(folder: Path) -> list[Path]:
    """The files a pipeline folder's components load (``LOADED_SUFFIXES``; a weights variant such as
    ``*.fp16.safetensors`` is left out, as memlab loads none): model_index.json first, then by path."""
    from .jsonfiles import read_json

    index = read_json(folder / "model_index.json")
    parts = sorted(k for k, v in index.items()  # (a component is a subfolder: a key naming a path is no component)
                   if not k.startswith("_") and isinstance(v, list) and v[0] and re.fullmatch(r"[\w-]+", k))
    files = []
    for part in parts:
        d = folder / part
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):  # is_file: a regular file (a device or a pipe is never read)
            variant = f.suffix == ".safetensors" and "." in f.stem
            if f.suffix in LOADED_SUFFIXES and not variant and not f.name.startswith(".") and f.is_file():
                files.append(f)
    return [folder / "model_index.json"] + files


def fingerprint(folder: Path) -> str:
    """The sha256 of a pipeline folder's loaded files: over each file's path (relative) and its own sha256, so
    a changed weight, config or tokenizer file, or a renamed one, changes it."""
    from .indexfiles import sha256

    h = hashlib.sha256()
    for f in loaded_files(Path(folder)):
        h.update(f"{f.relative_to(folder).as_posix()}\t{sha256(f)}\n".encode())
    return h.hexdigest()


def identity(src: ModelSource) -> dict:
    """What names a loaded pipeline: the Hub commit (``revision``) or the local folder's ``fingerprint``."""
    return {"revision": src.revision, "fingerprint": None if src.hub else fingerprint(src.folder)}


def load_pipeline(model: str | Path, dtype, local_files_only: bool | None = None, revision: str | None = None,
                  source: ModelSource | None = None, **kw):
    """A StableDiffusionPipeline from a Hub id (at ``revision``) or a local diffusers folder, the one way memlab
    loads one (the generator and the trainer): its model_index.json checked first (``locate``), its weights read
    from safetensors alone (a .bin or .ckpt is a pickle, which runs code when loaded); a Hub id is loaded at the
    very commit ``locate`` resolved. Each failure is a ``ModelFileMissing`` that says why."""
    from diffusers import StableDiffusionPipeline
    from safetensors import SafetensorError

    from .jsonfiles import NESTED

    src = source or locate(model, revision, local_files_only)
    at = {"revision": src.revision} if src.revision else {}
    try:
        return StableDiffusionPipeline.from_pretrained(str(src.model), dtype=dtype, local_files_only=src.local_only,
                                                       use_safetensors=True, **at, **kw)
    except RecursionError:  # a component's JSON nested past Python's parser (``memlab.jsonfiles``)
        raise ModelFileMissing(f"cannot load the pipeline {model}: a config or tokenizer file is not valid JSON: "
                               f"{NESTED}") from None
    # (TypeError, KeyError, AttributeError: a component's config of other types, e.g. a list, which diffusers and
    # transformers pass on as keyword arguments; SafetensorError: a damaged weights file transformers reads itself)
    except (OSError, ValueError, EnvironmentError, TypeError, KeyError, AttributeError, SafetensorError) as e:
        why = str(e).splitlines()[0][:300]
        raise ModelFileMissing(f"cannot load the pipeline {model}: {why}" + (
            " (memlab loads safetensors weights only and never unpickles a model file: save the pipeline "
            "with save_pretrained, which writes safetensors)" if "safetensors" in why else "")) from e
