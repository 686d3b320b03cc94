"""Files memlab loads from a folder someone else may have made (an index's manifest, a world's world.json,
keyword views, a pipeline's model_index.json), checked at load: types, shapes, finite numbers and paths that
stay inside their folder. Each problem is one ``MemlabError`` naming the file and the field, so a command
says ``error:`` and exits 2 and the app refuses to start with the same line; nothing reaches a traceback."""
from __future__ import annotations

import math
import re
from pathlib import Path

from .errors import MemlabError
from .scorenorm import check as check_score_norm


class Checker:
    """Field checks against one file, each failure naming ``file: field``."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, field: str, what: str):
        raise MemlabError(f"{self.file}: {field} {what}")

    def obj(self, value, field: str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"must be an object (got {type(value).__name__})")
        return value

    def get(self, d: dict, key: str, kind, field: str, optional: bool = False):
        if key not in d:
            if optional:
                return None
            self.fail(field, "is missing")
        v = d[key]
        if optional and v is None:
            return None
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(field, f"must be a finite number (got {v!r:.40})")
        elif kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(field, f"must be a whole number (got {v!r:.40})")
        elif not isinstance(v, kind):
            self.fail(field, f"must be {getattr(kind, '__name__', kind)} (got {type(v).__name__})")
        return v

    def relative(self, folder: Path, rel: str, field: str, must_exist: bool = False) -> Path:
        """A path the file names relative to its folder: no absolute path, no ``..``, inside ``folder``."""
        from .paths import inside

        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts \
                or not inside(folder, folder / rel):
            self.fail(field, f"points outside {folder} ({rel!r:.80})")
        if must_exist and not (folder / rel).exists():
            self.fail(field, f"names {rel!r}, which is not in {folder}")
        return folder / rel


def check_manifest(m, path: Path) -> dict:
    """An index's manifest.json (``memlab.index``)."""
    c = Checker(path / "manifest.json")
    m = c.obj(m, "the manifest")
    n = c.get(m, "item_count", int, "item_count")
    if n < 0:
        c.fail("item_count", "must not be negative")
    descs = c.obj(c.get(m, "descriptors", dict, "descriptors"), "descriptors")
    if not descs:
        c.fail("descriptors", "names no descriptor")
    default = c.get(m, "default_descriptor", str, "default_descriptor")
    if default not in descs:
        c.fail("default_descriptor", f"{default!r} is not among the descriptors ({', '.join(descs)})")
    c.relative(path, c.get(m, "metadata", str, "metadata"), "metadata")
    for f in c.obj(m.get("files", {}), "files"):
        c.relative(path, f, f"files[{f!r}]")
    c.get(m, "image_root", str, "image_root", optional=True)
    for name, info in descs.items():
        where = f"descriptors.{name}"
        info = c.obj(info, where)
        c.get(info, "dim", int, f"{where}.dim", optional=True)
        thr = c.obj(c.get(info, "threshold", dict, f"{where}.threshold"), f"{where}.threshold")
        c.get(thr, "value", float, f"{where}.threshold.value")
        c.get(thr, "high", float, f"{where}.threshold.high", optional=True)
        truth = c.get(thr, "ground_truth", dict, f"{where}.threshold.ground_truth", optional=True)
        for kind, got in (truth or {}).items():  # recall on held-out copies by kind (About this world draws them)
            at = f"{where}.threshold.ground_truth[{kind!r:.40}]"
            got = c.obj(got, at)
            if c.get(got, "n", int, f"{at}.n") < 0 or not 0 <= c.get(got, "recall", float, f"{at}.recall") <= 1:
                c.fail(at, f"needs n >= 0 and 0 <= recall <= 1 (got {got.get('n')!r:.20}, {got.get('recall')!r:.20})")
        files = c.obj(c.get(info, "files", dict, f"{where}.files"), f"{where}.files")
        for key in ("vectors", "background"):
            c.relative(path, c.get(files, key, str, f"{where}.files.{key}"), f"{where}.files.{key}")
        for key in ("index", "background_distinct", "knn"):
            if files.get(key) is not None:
                c.relative(path, c.get(files, key, str, f"{where}.files.{key}"), f"{where}.files.{key}")
        c.get(info, "factory", str, f"{where}.factory")
        c.get(info, "indexed", str, f"{where}.indexed", optional=True)  # words: what the vectors were computed from
        norm = c.get(info, "score_norm", dict, f"{where}.score_norm", optional=True)
        if norm is not None:  # the rule as memlab.scorenorm checks it
            try:
                check_score_norm(norm)
            except MemlabError as e:
                c.fail(f"{where}.score_norm", str(e))
    caps = c.get(m, "captions", dict, "captions", optional=True)
    if caps is not None:  # memlab.captions: the caption vectors' entry
        if c.get(caps, "descriptor", str, "captions.descriptor") not in descs:
            c.fail("captions.descriptor", "is not among the descriptors")
        for key in ("count", "items", "dim"):
            c.get(caps, key, int, f"captions.{key}")
        c.get(caps, "factory", str, "captions.factory")
        _sealed_files(c, m, path, caps, "captions", ("vectors", "rows", "index"))
    words = c.get(m, "words", dict, "words", optional=True)
    if words is not None:  # memlab.words: the captions' posting lists
        for key in ("items", "words", "postings"):
            c.get(words, key, int, f"words.{key}")
        _sealed_files(c, m, path, words, "words", ("vocab", "rows", "starts"))
    return m


def _sealed_files(c, m: dict, path, entry: dict, name: str, keys) -> None:
    """An entry's ``files``: each named key a path inside the folder, among the manifest's checksummed files."""
    files = c.obj(c.get(entry, "files", dict, f"{name}.files"), f"{name}.files")
    for key in keys:
        rel = c.get(files, key, str, f"{name}.files.{key}")
        c.relative(path, rel, f"{name}.files.{key}")
        if rel not in m.get("files", {}):
            c.fail(f"{name}.files.{key}", "is not among the checksummed files")


SCHEDULERS = ("ddim", "dpm")
COMMIT, SHA256 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")  # (``pipeload``'s)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_world(m, path: Path) -> dict:
    """A world's world.json (``memlab.world``): its model a folder inside the world, a local diffusers folder
    named by an absolute path (``world create --model FOLDER``) or a Hub id; index, probes and card inside the
    world; defaults of the right types."""
    c = Checker(path / "world.json")
    m = c.obj(m, "world.json")
    c.get(m, "name", str, "name")
    model = c.get(m, "model", str, "model")
    if Path(model).is_absolute():
        if not (Path(model) / "model_index.json").is_file():
            c.fail("model", f"names {model!r}, which is not a diffusers pipeline folder")
    elif (path / model).exists() or ".." in Path(model).parts or not HUB_ID.fullmatch(model):
        c.relative(path, model, "model", must_exist=True)
    for key, pattern, what in (("model_revision", COMMIT, "a Hub commit (40 hex digits)"),
                               ("model_fingerprint", SHA256, "a sha256 (64 hex digits)")):
        value = c.get(m, key, str, key, optional=True)
        if value is not None and not pattern.fullmatch(value):
            c.fail(key, f"must be {what} (got {value!r:.60})")
    c.relative(path, c.get(m, "index", str, "index"), "index")
    for key, kind in (("probes", ".csv"), ("card", ".json")):
        if m.get(key) is not None:
            rel = c.get(m, key, str, key)
            c.relative(path, rel, key)
            if Path(rel).suffix.lower() != kind:  # pandas would decompress a .csv.gz (.bz2, .xz, .zip, .zst) whole
                c.fail(key, f"must name a {kind} file, as memlab writes it (got {rel!r:.60})")
    d = c.obj(m.get("defaults", {}), "defaults")
    if "steps" in d and (c.get(d, "steps", int, "defaults.steps") < 1):
        c.fail("defaults.steps", "must be at least 1")
    for key in ("guidance", "wen_target", "sail_target"):
        c.get(d, key, float, f"defaults.{key}", optional=True)
    if "scheduler" in d and d["scheduler"] not in SCHEDULERS:
        c.fail("defaults.scheduler", f"must be one of {', '.join(SCHEDULERS)} (got {d['scheduler']!r:.40})")
    c.get(d, "seeds", str, "defaults.seeds", optional=True)
    c.get(d, "k", int, "defaults.k", optional=True)
    for rel, rec in c.obj(m.get("files") or {}, "files").items():
        c.relative(path, rel, f"files[{rel!r}]")
        rec = c.obj(rec, f"files[{rel!r}]")
        c.get(rec, "bytes", int, f"files[{rel!r}].bytes")
        c.get(rec, "sha256", str, f"files[{rel!r}].sha256")
    return m


def check_card(card, file: Path) -> dict:
    """A world's card (``card.json``): an object, with the fields the app reads from it beside the About tab's
    report (the build's command and time; the measured time of 8 seeds and its steps, which estimate a run's
    length; the bright-ending and token-attribution figures the page quotes) of the right types. The report
    itself reads the rest (``app.cardview.world_card_markdown``)."""
    c = Checker(Path(file))
    card = c.obj(card, "the card")
    c.get(card, "built_with", str, "built_with", optional=True)
    c.get(card, "build_seconds_total", float, "build_seconds_total", optional=True)
    m = c.obj(card.get("measured") or {}, "measured")
    c.get(m, "seconds_8_seeds", float, "measured.seconds_8_seeds", optional=True)
    c.get(c.obj(m.get("settings") or {}, "measured.settings"), "steps", int, "measured.settings.steps", optional=True)
    cov = c.obj(m.get("bright_ending_coverage") or {}, "measured.bright_ending_coverage")
    c.get(cov, "median_inside_over_outside", float, "measured.bright_ending_coverage.median_inside_over_outside",
          optional=True)
    c.get(cov, "group", str, "measured.bright_ending_coverage.group", optional=True)
    t = c.obj(m.get("token_attribution") or {}, "measured.token_attribution")
    for key in ("probes", "distinctive_above_template", "control_unique_probes", "control_distinctive_above_template"):
        c.get(t, key, int, f"measured.token_attribution.{key}", optional=True)
    return card


def check_probes(probes, file: Path):
    """A world's probes (``probes.csv``, read by ``tables.read_table``): a ``prompt`` column and a ``group`` or
    ``label`` column (the app groups the examples and the lesson picks its prompts by them); a ``template`` column
    (a template's number, or -1 for none) and a list's published SSCD figures, where there are any, numbers."""
    import pandas as pd

    c = Checker(Path(file))
    if "prompt" not in probes or not ({"group", "label"} & set(probes.columns)):
        c.fail("columns", f"must include prompt and group (or label); got {', '.join(map(str, probes.columns))[:120]}")
    for col in ("template", "published_mean_sscd", "published_max_sscd"):
        if col in probes and not pd.api.types.is_numeric_dtype(probes[col]):
            c.fail(col, "must hold numbers" + (" (a template's number, or -1 for none)" if col == "template" else ""))
    return probes


PIPELINE_LIBRARIES = ("diffusers", "transformers")


def check_pipeline(path: Path) -> dict:
    """A diffusers pipeline folder's model_index.json: each component names a class of diffusers or
    transformers, or none. diffusers imports whatever module a component names before it looks for the class
    (``"feature_extractor": ["antigravity", "Fly"]`` would import that module); memlab loads no other. The
    weights are safetensors (``pipeload.load_pipeline`` passes ``use_safetensors``: no file is unpickled)."""
    from .jsonfiles import read_json

    c = Checker(Path(path) / "model_index.json")
    m = c.obj(read_json(c.file), "model_index.json")
    for key, value in m.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2 or not all(v is None or isinstance(v, str) for v in value):
            c.fail(key, f"must be [library, class] (got {value!r:.80})")
        if value[0] is not None and value[0] not in PIPELINE_LIBRARIES:
            c.fail(key, f"names the library {value[0]!r:.40}; memlab loads {' and '.join(PIPELINE_LIBRARIES)} "
                        f"components only")
    return m


def check_view(v, file: Path, n_items: int | None = None) -> dict:
    """A keyword view (``memlab.keywords``): the fields the app reads, of the right types, rows in the index."""
    c = Checker(file)
    v = c.obj(v, "the view")
    c.get(v, "keyword", str, "keyword")
    for key in ("n_before", "n_after", "n_too_long", "miscellaneous_size"):
        c.get(v, key, int, key)
    c.get(v, "cluster_threshold", float, "cluster_threshold")
    c.obj(c.get(v, "descriptor", dict, "descriptor"), "descriptor")
    share = c.obj(c.get(v, "share_in_top", dict, "share_in_top"), "share_in_top")
    for key in ("top1", "top3", "top5"):
        c.get(share, key, float, f"share_in_top.{key}")
    for i, cl in enumerate(c.get(v, "clusters", list, "clusters")):
        where = f"clusters[{i}]"
        cl = c.obj(cl, where)
        for key in ("rank", "size", "distinct_images"):
            c.get(cl, key, int, f"{where}.{key}")
        c.get(cl, "miscellaneous", bool, f"{where}.miscellaneous")
        c.get(cl, "top_words", list, f"{where}.top_words")
        for key in ("representatives", "rows"):  # (the rows: a cluster's variants and whose works read them all)
            for r in c.get(cl, key, list, f"{where}.{key}"):
                if isinstance(r, bool) or not isinstance(r, int) or r < 0 or (n_items is not None and r >= n_items):
                    c.fail(f"{where}.{key}", f"holds {r!r:.20}, not a row of the index")
    c.obj(v.get("objects", {}), "objects")
    if "related" in v:  # whose works (``keywords.related_share``), where the view was written with it: what the page reads
        rel = c.obj(v["related"], "related")
        for key, kind in (("keyword", str), ("rule", str), ("items", int), ("captions_naming", int)):
            c.get(rel, key, kind, f"related.{key}")
        for key in ("share", "captions_share"):
            c.get(rel, key, float, f"related.{key}", optional=True)
        for i, r in enumerate(c.get(rel, "related_ranks", list, "related.related_ranks")):
            if isinstance(r, bool) or not isinstance(r, int):
                c.fail(f"related.related_ranks[{i}]", f"holds {r!r:.20}, not a rank")
        per = c.get(rel, "clusters", list, "related.clusters")
        if len(per) != len(v["clusters"]):
            c.fail("related.clusters", f"has {len(per)} entries for the view's {len(v['clusters'])} clusters")
        for i, cl in enumerate(per):
            cl = c.obj(cl, f"related.clusters[{i}]")
            for key in ("naming", "captions"):
                c.get(cl, key, int, f"related.clusters[{i}].{key}")
            c.get(cl, "related", bool, f"related.clusters[{i}].related")
    return v
