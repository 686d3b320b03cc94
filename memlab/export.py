"""A run or comparison as a zip a researcher can open offline: ``results.jsonl`` (the ``memlab run`` format;
each seed's top matches one per near-duplicate group, each pointing at its training image inside the zip),
``summary.csv`` (a row per seed), the generations under ``generations/`` and the matched training images
under ``training/``; no path of the server (docs/cli.md, "The app's exports")."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

from PIL import Image

from .errors import MemlabError
from .indexfiles import atomic_save
from .paths import member_name
from .records import RunState, collapse_matches, image_stems, strict_json


def write_export(lab, state: RunState, path: Path, k: int = 5) -> Path:
    """The zip at ``path`` (``lab``: the ``Lab`` whose training images and model name it holds); written to a
    temporary name and renamed, so a failed or killed export leaves no half-written zip."""
    if not state or not state.records:
        raise MemlabError("nothing to export yet: generate first")
    path = Path(path)
    atomic_save(path, lambda part: _write_zip(lab, state, part, k))
    return path


def _write_zip(lab, state: RunState, path: Path, k: int) -> None:
    buf, table = io.StringIO(), io.StringIO()
    rows = csv.writer(table)
    rows.writerow(["strategy", "seed", "verdict", "score", "threshold", "match id", "copies in training",
                   "match image", "generation"])
    partial = {} if state.finished else {"partial": True, "seeds_requested": state.requested,
                                           "seeds_done": len(state.records)}
    written: set = set()
    strategies = {r["mitigation"]["spec"]: r["mitigation"]["name"] for r in state.records}  # in run order
    names = dict(zip(strategies, image_stems(list(strategies.values()))))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for r, im in zip(state.records, state.images):
            name = f"generations/{names[r['mitigation']['spec']]}-s{r['seed']}.png"
            z.writestr(name, _png(im))
            matches = []
            for m in collapse_matches(r["matches"], k):
                m = {k: v for k, v in m.items() if k != "copies"}
                m["file"] = f"training/{_safe_id(m['id'])}.png"
                m["copies_in_training"] = int(m.get("duplicates", 0)) + 1
                if m["file"] not in written and (im_t := lab.item_image(m["row"])) is not None:
                    z.writestr(m["file"], _png(im_t))
                    written.add(m["file"])
                matches.append(m)
            model = {**r.get("model", {}), "model": lab.model_name()}
            buf.write(json.dumps(strict_json({**r, "image": name, "matches": matches, "model": model}),
                                 allow_nan=False) + "\n")
            top = matches[0]
            rows.writerow([r["mitigation"]["spec"], r["seed"],
                           r.get("verdict") or ("replicated" if r["replicated"] else "novel"),
                           f"{r['score']:.3f}", f"{r['threshold']:.3f}", spreadsheet_text(top["id"]),
                           top["copies_in_training"],
                           top["file"], name])
        for s in state.summaries:
            buf.write(json.dumps(strict_json({**s, **partial}), allow_nan=False) + "\n")
        z.writestr("results.jsonl", buf.getvalue())
        z.writestr("summary.csv", table.getvalue())


def _png(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value):
    """A text cell of summary.csv as a spreadsheet shows it, never as a formula: a training id comes from the
    index's listing, which may come from elsewhere, and a spreadsheet runs a cell that starts with = + - @
    (OWASP's CSV injection advice: a leading apostrophe). Numbers are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _safe_id(item_id) -> str:
    """A training id as a file name inside an export (``memlab.paths.member_name``)."""
    return member_name(str(item_id)) or f"item-{abs(hash(str(item_id)))}"


def write_variants_zip(path: Path, study: dict, results) -> Path:
    """A prompt-variant study (``memlab.variants.study_record`` with ``image_dir="images"``) as a zip:
    ``variants.json`` and each generation under ``images/``; written to a temporary name and renamed."""
    if not results:
        raise MemlabError("nothing to export yet: run the variants first")
    def write(part: Path) -> None:
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("variants.json", json.dumps(strict_json(study), indent=1))
            for v, r in zip(study["variants"], results):
                for name, im in zip(v["images"], r["images"]):
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    z.writestr(name, buf.getvalue())

    path = Path(path)
    atomic_save(path, write)
    return path


KEYWORD_IMAGES = 4  # training images exported per cluster (the tab's thumbnails show as many)


def write_keyword_zip(lab, view: dict, related: dict | None, path: Path, top: int = 30) -> Path:
    """A keyword view as the Keyword clusters tab shows it, as a zip: ``view.json`` (the view, whose works when
    asked, and the world it came from: its descriptor, cut and rule are the view's), ``clusters.csv`` (a row per
    cluster) and, for the ``top`` largest clusters and the miscellaneous images, up to ``KEYWORD_IMAGES`` of their
    training images under ``images/``; written to a temporary name and renamed."""
    clusters = [c for c in view["clusters"] if not c["miscellaneous"]][:top] + \
        [c for c in view["clusters"] if c["miscellaneous"]]
    per = {c["rank"]: c for c in (related or {}).get("clusters", [])}

    def write(part: Path) -> None:
        table = io.StringIO()
        rows = csv.writer(table)
        rows.writerow(["rank", "size", "miscellaneous", "distinct images"]
                      + ([spreadsheet_text(f"captions naming {related['keyword']}")] if related else [])
                      + ["frequent words", "images"])
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for c in clusters:
                folder = "images/miscellaneous" if c["miscellaneous"] else f"images/cluster-{c['rank']:03d}"
                files = []
                for r in c["representatives"][:KEYWORD_IMAGES]:
                    im = lab.item_image(r)
                    if im is not None:
                        files.append(f"{folder}/{_safe_id(lab.index.item(int(r))['id'])}.png")
                        z.writestr(files[-1], _png(im))
                rank = 0 if c["miscellaneous"] else c["rank"]
                named = per.get(rank)
                rows.writerow([rank, c["size"], c["miscellaneous"], c["distinct_images"]]
                              + ([f"{named['naming']} of {named['captions']}"] if related and named else
                                 [""] if related else [])
                              + [spreadsheet_text(", ".join(f"{w} ({n})" for w, n in c["top_words"])), " ".join(files)])
            z.writestr("view.json", json.dumps(strict_json({"world": lab.world.name, "view": view, "related": related}),
                                               indent=1))
            z.writestr("clusters.csv", table.getvalue())

    path = Path(path)
    atomic_save(path, write)
    return path
