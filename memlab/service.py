"""What the app asks of the library, without any UI code: a ``Lab`` over one world that generates and
matches in streamed batches, compares mitigations on the same seeds, searches the training set and
exports runs in the ``memlab run`` format. Thread-safe: model calls run one at a time on one thread
(``memlab.compute``).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .compute import on_compute_thread
from .gpu import host_work
from .errors import MemlabError
from .jsonfiles import read_json
from .tables import read_table
from .validate import check_card, check_probes
from .generate import Settings, check_prompt, parse_seeds
from .headstart import HEAD_START
from .limits import APP_MAX_SEEDS, LIMITS, MAX_CHUNK, number, text
from .match import descriptor_for_index, load_image, match_images, match_paths
from .mitigations import parse_strategy
from .scorenorm import words as score_words
from .preprocess import open_rgb
from .records import APP_MATCHES, RunState, collapse_matches, probe_group_name
from .streams import Streams
from .trainingset import TrainingSet
from .world import World

__all__ = ["Lab", "RunState", "LIMITS", "APP_MAX_SEEDS", "MAX_CHUNK", "APP_MATCHES", "collapse_matches",
           "number", "text", "probe_group_name", "HEAD_START"]


class Lab(Streams, TrainingSet):
    """The app's service over one world (its streams: ``memlab.streams``; its training-set and keyword views:
    ``memlab.trainingset``). Every method that runs a model (loading included) runs on one thread
    (``memlab.compute``): a server's many threads would each start their own OpenMP team."""

    @on_compute_thread
    def __init__(self, world: World, device: str | None = None):
        self.world = world
        self.index = world.index()
        self.descriptor = descriptor_for_index(self.index)  # the world's verdict (index default)
        self._descriptors = {self.descriptor.name: self.descriptor}
        self.device = device
        self._gen = None
        self._caption_vecs = None
        self._captions = None  # the index's caption vectors (memlab.captions), False where it has none
        self._n_captions = None  # distinct captions (distinct_captions)
        self._lean = None  # a large index's item columns the training-set views read (_table)
        self._words = None  # the captions' posting lists (memlab.words), read at the app's start or first use
        self._ids = None  # item id -> row (item_row), built on the first lookup
        self._groups = None  # the near-duplicate groups table (duplicate_groups), computed once
        self._background: dict = {}
        self._step_times: dict = {}  # {images in a batch: seconds a step took here} (estimate_seconds)
        self._kept_rows: dict = {}  # the lesson's rows, kept for the next visitor (streams.compare_stream's keep)
        self.views = self._load_views()  # prebuilt keyword views, kept for the app's life
        self._asked: OrderedDict = OrderedDict()  # views computed on request, the KEPT_VIEWS latest used

    # ------------------------------------------------------------------------------ basics
    @property
    @on_compute_thread
    def generator(self):
        if self._gen is None:
            self._gen = self.world.generator(device=self.device)
        return self._gen

    @property
    def descriptor_names(self) -> list[str]:
        """The descriptors the world's index holds; the first is the world's default verdict."""
        names = self.index.descriptor_names
        return [self.descriptor.name] + [n for n in names if n != self.descriptor.name]

    @on_compute_thread
    def get_descriptor(self, name: str | None = None):
        """A descriptor of the index (built once, with the config the index was built with)."""
        name = name or self.descriptor.name
        if name not in self.index.descriptor_names:
            raise MemlabError(f"unknown descriptor {name!r}; this world has {', '.join(self.descriptor_names)}")
        if name not in self._descriptors:
            self._descriptors[name] = descriptor_for_index(self.index, name)
        return self._descriptors[name]

    def threshold(self, name: str | None = None) -> dict:
        return self.index.threshold(name or self.descriptor.name)

    def possible(self, name: str | None = None) -> dict:
        """The "possible copy" band's lower edge (``TrainingIndex.possible``)."""
        return self.index.possible(name or self.descriptor.name)

    def descriptor_label(self, name: str | None = None) -> str:
        info = self.index.descriptor_info(name or self.descriptor.name)
        thr = info["threshold"]
        norm = info.get("score_norm")
        return (f"{info['name']} · {info['model']} · preset {info['preset']} · threshold "
                f"{thr['value']:.3f} ({thr['source']})" + (f" · score: {score_words(norm)}" if norm else "")
                + (f" · indexed: {info['indexed']}" if info.get("indexed") else ""))

    def score_axis(self, name: str | None = None) -> str:
        """What a chart's score axis shows: the cosine, or the normalized score (``memlab.scorenorm``)."""
        norm = self.index.descriptor_info(name or self.descriptor.name).get("score_norm")
        if not norm:
            return "similarity"
        return ("verified " if norm.get("verify") else "") + (
            f"normalized score (cosine less the mean of the {norm['k']} nearest other images'"
            + (f", plus {norm['verify']['weight']:g} x the images' detail correlation"
               + (f" and {norm['verify']['network_weight']:g} x memlab-verify's probability of a copy"
                  if norm["verify"].get("network") else "") + ")" if norm.get("verify") else ")"))

    def background(self, name: str | None = None) -> np.ndarray:
        """The background of distinct training images (one row per near-duplicate group against the
        nearest row of another group; read once per descriptor, every histogram draws it)."""
        name = name or self.descriptor.name
        if name not in self._background:
            bg = self.index.background(name, distinct=True)
            self._background[name] = bg[np.isfinite(bg)]
        return self._background[name]

    def probes(self) -> pd.DataFrame:
        """The world's probe prompts (read once): prompt, group (how the app names the set), and for a
        world made by ``memlab world create`` label, url, training_image, training_id, published figures."""
        if getattr(self, "_probes", None) is None:
            f = self.world.file("probes")
            self._probes = check_probes(read_table(f, "the world's probes", dtype={"training_id": str}), f) if f \
                else pd.DataFrame(columns=["prompt", "group"])
        return self._probes

    def settings(self, steps=None, guidance=None) -> Settings:
        """Sampling settings of a request; None means the world's default."""
        d = self.world.defaults
        steps = d["steps"] if steps is None else number(steps, "steps", 1, LIMITS["steps"], integer=True)
        guidance = d["guidance"] if guidance is None else number(guidance, "guidance", 0, LIMITS["guidance"])
        return Settings(steps=int(steps), guidance=float(guidance)).validate()

    def seeds(self, n_seeds=None, seed_list: str | None = None, limit: int = APP_MAX_SEEDS) -> list[int]:
        """An explicit list ("0-3,9") wins over a count; at most ``limit`` per request."""
        seed_list = text(seed_list, "the seed list", 2_000, required=False)
        if seed_list:
            seeds = parse_seeds(seed_list)
        else:
            n = number(n_seeds, "the number of seeds", 1, limit, integer=True)
            seeds = range(n)
        if len(seeds) > limit:
            raise MemlabError(f"{len(seeds)} seeds is too many for the app (at most {limit}); "
                              f"use `python -m memlab run` for larger batches")
        return list(seeds)

    @staticmethod
    def strategy_spec(mitigations: Sequence[str], k: int = 4, lam: float = 0.1) -> str:
        """Checked mitigations with their parameters -> one composed strategy spec."""
        if isinstance(mitigations, str):  # one name, or "rna,gni"
            mitigations = [m for m in re.split(r"[,+\s]+", mitigations) if m]
        parts = []
        for m in mitigations or []:
            if not isinstance(m, str):
                raise MemlabError(f"a mitigation is named by text (got {m!r})")
            if m in ("rna", "rt", "cwr"):
                parts.append(f"{m}:k={number(k, 'k', 1, LIMITS['k'], integer=True)}")
            elif m == "gni":
                parts.append(f"gni:lam={number(lam, 'λ (gni)', 0, LIMITS['lam'])}")
            else:
                parts.append(m)
        spec = "+".join(parts) or "none"
        parse_strategy(spec)  # validates names and ranges
        return spec

    # ------------------------------------------------------------------- the world, for the page
    @property
    def name(self) -> str:
        return self.world.name

    @property
    def trained_on(self) -> str:
        return self.world.trained_on

    def template_threshold_note(self) -> str | None:
        """Why the world calls no template copy although it has a template threshold (``World``), or None."""
        return self.world.template_threshold_note()

    def alignment_info(self) -> dict | None:
        """How this world measures prompt alignment (``World.aligner``), or None."""
        a = self.world.aligner()
        return a.info() if a is not None else None

    @property
    def defaults(self) -> dict:
        """The world's sampling defaults (steps, guidance, ...)."""
        return self.world.defaults

    def model_name(self) -> str:
        """The model as the page names it: the folder's name for a world's own model, else its Hub id."""
        return Path(str(self.world.model)).name if self.world.path else str(self.world.model)

    def model_description(self) -> str:
        """The model in words: a Hub id at the commit the world was made with, or where its folder is (with the
        fingerprint the world was made with, ``pipeload``)."""
        w = self.world
        if not w.path:
            return str(w.model)
        if Path(str(w.model)).resolve().is_relative_to(Path(w.path).resolve()):
            return f"its own model, in the world's folder `{Path(str(w.model)).relative_to(w.path)}/`"
        rev, fp = w.manifest.get("model_revision"), w.manifest.get("model_fingerprint")
        which = f" at commit `{rev[:12]}`" if rev else f" (its files' fingerprint `{fp[:12]}`)" if fp else ""
        return (f"the local pipeline `{Path(str(w.model)).name}`" if Path(str(w.model)).exists() else str(w.model)) + which

    def served_folders(self) -> list[str]:
        """The folders whose files the app may serve (the world's, and its index's)."""
        w = self.world
        return sorted({str(p) for p in (w.path or w.index_path, w.index_path) if p is not None})

    def image_folders(self) -> list[str]:
        """The folders of the training images the app may serve (the index's image folder)."""
        root = self.index.image_root()
        return [str(root)] if root is not None and root.is_dir() else []

    def is_training_image(self, path) -> bool:
        """Whether ``path`` (resolved) is one of the files the index's item table names under its image folder:
        the app's file route serves those alone there, so an index whose image folder is another (an absolute
        ``image_root`` in a manifest from elsewhere, such as ``/``) hands out its training images, not the
        machine's other pictures. The names are read once (the item table's ``file`` column)."""
        root = self.index.image_root()
        if root is None:
            return False
        root = root.resolve()
        if not Path(path).is_relative_to(root):
            return False
        if getattr(self, "_image_files", None) is None:
            files = self.index.column("file")
            self._image_files = frozenset() if files is None else frozenset(
                os.path.normpath(str(f)) for f in files.dropna().astype(str))
        return os.path.normpath(Path(path).relative_to(root).as_posix()) in self._image_files

    def card(self) -> dict | None:
        """The world's card (``card.json``: how it was built, what was measured), if it has one."""
        if not hasattr(self, "_card"):  # read once: estimates and About read it
            f = self.world.file("card")
            self._card = check_card(read_json(f), f) if f else None
        return self._card

    def index_summary(self) -> dict:
        """How many training items the index holds and when it was built."""
        return {"items": int(self.index.manifest["item_count"]), "created": self.index.manifest["created"]}

    def descriptor_info(self, name: str | None = None) -> dict:
        """A descriptor's entry in the index (model, preset, dim, threshold, backgrounds)."""
        return self.index.descriptor_info(name or self.descriptor.name)

    def item(self, row: int) -> dict:
        """A training row's id, file, caption, duplicates and group."""
        return self.index.item(int(row))

    def item_group(self, row: int) -> int:
        """The near-duplicate group of a training row."""
        return int(self.index.item(int(row))["group"])

    def item_caption(self, row: int) -> str:
        return str(self.index.item(int(row))["caption"])

    def probe_row(self, prompt: str) -> int | None:
        """The row of a probe's own training image (its ``training_id``, or the built-in world's ``id``), if the
        prompt is a probe of this world and its image is in the index."""
        p = self.probe(prompt) or {}
        tid = p.get("training_id") if p.get("training_id") not in (None, "") else p.get("id")
        if tid in (None, ""):
            return None
        try:
            return self.item_row(str(int(tid)) if isinstance(tid, float) and float(tid).is_integer() else str(tid))
        except MemlabError:
            return None

    # ---------------------------------------------------------------------------- generate
    def check_prompt(self, prompt) -> tuple[str, str | None]:
        """The prompt as the pipeline will read it, and a warning if it is truncated (or a MemlabError)."""
        return check_prompt(prompt, self.generator.tokenizer)

    def lesson_prompts(self) -> dict | None:
        """The guided lesson's two prompts, from the world's probes: a heavily duplicated one (a verbatim
        memorized prompt whose training image was fetched, or the built-in world's full duplication at its
        highest ddf) and one seen once in training (a control, or the built-in world's unique set); None
        when the world has no such probes."""
        p = self.probes()
        if p.empty or "prompt" not in p:
            return None
        if "training_image" in p:  # a created world: prefer prompts whose training image is in the index
            p = p.sort_values("training_image", key=lambda c: c.astype(str) != "indexed", kind="stable")
        key = (p["label"] if "label" in p else p["group"]).astype(str)
        full = sorted((g for g in key.unique() if re.fullmatch(r"full_ddf\d+", g)), key=lambda g: -int(g[8:]))
        dup = next((g for g in ["verbatim", "memorized", *full, "template"] if (key == g).any()), None)
        uni = next((g for g in ["control", "unique"] if (key == g).any()), None)
        if dup is None or uni is None:
            return None
        name = lambda g: str(p[key == g]["group"].iloc[0]) if "label" in p else probe_group_name(g)  # noqa: E731
        plan = {"duplicated": str(p[key == dup]["prompt"].iloc[0]), "duplicated_group": name(dup),
                "unique": str(p[key == uni]["prompt"].iloc[0]), "unique_group": name(uni)}
        if "template" in p and (key == "template").any() and self.template_threshold() is not None:
            plan.update(template=str(p[key == "template"]["prompt"].iloc[0]), template_group=name("template"))
        return plan

    def template_threshold(self) -> dict | None:
        """The world's threshold for the masked score (a "template copy"), if it calibrated one (issue 32)."""
        from .local import current_threshold

        return current_threshold(self.world.manifest.get("template_threshold"))

    def probe_template(self, prompt: str) -> int | None:
        """The template a probe of the built-in world's template group names (None elsewhere)."""
        row = self.probe(prompt)
        return _template_number(None if row is None else row.get("template"))

    def item_template(self, row: int) -> int | None:
        """The template of training row ``row`` (worlds with planted templates; None elsewhere)."""
        return _template_number(self.index.value(int(row), "template"))

    def probe(self, prompt: str) -> dict | None:
        """The world's probe row for ``prompt`` (its label, training image, published figures), if any."""
        p = self.probes()
        if "prompt" not in p or p.empty:
            return None
        hit = p[p["prompt"].astype(str).str.strip() == str(prompt).strip()]
        return None if hit.empty else {k: (None if pd.isna(v) else v) for k, v in hit.iloc[0].to_dict().items()}

    @host_work(lambda self, prompt, seeds, settings=None: (min(4, len(seeds)) * 2, 1))  # a step forward and back
    @on_compute_thread
    def token_attribution(self, prompt: str, seeds: Sequence[int], settings: Settings | None = None) -> list[dict]:
        """Wen et al.'s per-token attribution of the prompt (first step, the first 4 seeds)."""
        gen = self.generator
        prompt, _ = check_prompt(prompt, gen.tokenizer)
        return gen.token_attribution(prompt, seeds=list(seeds)[:4], settings=settings or self.settings())

    @host_work(lambda self, *a, **kw: (1, 1))
    @on_compute_thread
    def match_image(self, path, k: int = 5, descriptor: str | None = None) -> dict:
        """An uploaded image against the training set (the ``memlab match`` result for one image); the
        file is checked against the byte and pixel caps before it is decoded."""
        if not path or not isinstance(path, (str, os.PathLike)):
            raise MemlabError("upload an image first")
        k = number(k, "k", 1, 20, integer=True)
        desc = self.get_descriptor(descriptor)
        return match_images(self.index, desc, [load_image(path)], names=[Path(path).name], k=k)

    def match_batch(self, paths, k: int = 1, descriptor: str | None = None) -> dict:
        """Several uploads against the training set at once: ``memlab match`` on them with ``--skip-unreadable``
        (the batch's replication % and dataset similarity in its ``summary``), at most ``LIMITS["match_batch"]``
        files, each checked against the caps before it is decoded; a file that does not read is left out and
        named in ``skipped``. Each is named by its file name alone (the server's folders are not the caller's)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise MemlabError("upload some images first")
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in paths):
            raise MemlabError("the batch must be a list of uploaded image files")
        if len(paths) > LIMITS["match_batch"]:
            raise MemlabError(f"{len(paths)} images is too many for one batch (at most {LIMITS['match_batch']})")
        k = number(k, "k", 1, 20, integer=True)
        try:
            # one image decoded at a time: 16 uploads of 40 megapixels each compress to a few MiB (a flat field)
            # yet decode to gigabytes together; one at a time, a batch holds no more than a single upload does
            res = match_paths(self.index, self.get_descriptor(descriptor), list(paths), k=k, chunk=1,
                              skip_unreadable=True)
        except MemlabError as e:  # every file refused: said without the server's folders
            raise MemlabError(_named(str(e), paths)) from None
        for q in res["queries"]:
            q["image"] = Path(q["image"]).name
        res["skipped"] = [{"image": Path(s["image"]).name, "error": _named(s["error"], paths)}
                          for s in res.get("skipped", [])]
        return res

    # ----------------------------------------------------------------------------- training set
    def item_file(self, row: int) -> str | None:
        """A training image's file, for galleries: handing Gradio a path (copied into its cache under a
        temporary name, then renamed) rather than a PIL image (re-encoded and rewritten in place on every
        request) keeps concurrent requests for the same image from reading a half-written file."""
        p = self.index.image_path(row)
        return str(p) if p is not None and p.is_file() else None

    def item_image(self, row: int) -> Image.Image | None:
        p = self.index.image_path(row)
        if p is None or not p.is_file():
            return None
        return open_rgb(p)

    # ------------------------------------------------------------------------------ export
    EXPORT_MATCHES = 5  # near-duplicate groups kept per seed in an export, each with its training image

    def export(self, state: RunState, path: Path) -> Path:
        """A zip a researcher can open offline (``memlab.export.write_export``)."""
        from .export import write_export

        return write_export(self, state, path, self.EXPORT_MATCHES)


def _named(message: str, paths) -> str:
    """``message`` with each of ``paths`` written as its file name alone."""
    for p in sorted(map(str, paths), key=len, reverse=True):
        message = message.replace(p, Path(p).name)
    return message


def _template_number(t) -> int | None:
    """A ``template`` cell as the template's number: None where it is missing, NaN or -1 (no template)."""
    return int(t) if t is not None and t == t and int(t) >= 0 else None
