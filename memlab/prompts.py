"""Published prompt lists, read into one table: which prompts are known to be memorized, the training
image each names, and the figures the list publishes.

Formats (docs/methods.md, "Prompt lists"):
- NeMo (Hintersdorf et al. 2024): ``;``-separated ``Caption;URL;type;mean_sscd;max_sscd;Index``; ``type`` is
  ``VM`` (verbatim memorization) or ``TM`` (template memorization); the unmemorized control list has
  ``Caption;URL;Index``.
- Wen et al. (ICLR 2024): JSONL with ``caption``, ``url``, ``index``.
- MemAttn: one prompt a line (text).
- LAION-style tables: CSV/TSV/parquet with a URL column and a caption column (``URL``/``TEXT``,
  ``url``/``caption``).

The table: ``prompt``, ``url`` ("" when the list has none), ``label`` (``verbatim``, ``template``,
``memorized`` or ``control``), ``published_mean_sscd``, ``published_max_sscd``
(NeMo's, else NaN), ``laion_index`` (-1 when unknown) and ``list`` (the file's name).
"""
from __future__ import annotations

from pathlib import Path

from .errors import MemlabError
from .jsonfiles import parse_json
from .tables import one_line, read_table

LABELS = {  # label -> how the app names it
    "verbatim": "known memorized, verbatim",
    "template": "known memorized, template",
    "memorized": "known memorized",
    "control": "control (not memorized)",
}
NEMO_TYPES = {"VM": "verbatim", "TM": "template"}
COLUMNS = ["prompt", "url", "label", "published_mean_sscd", "published_max_sscd", "laion_index", "list"]
_PROMPT_COLS = ("caption", "prompt", "text")
_URL_COLS = ("url",)


def _column(df, names) -> str | None:
    lower = {str(c).lower(): c for c in df.columns}
    return next((lower[n] for n in names if n in lower), None)


def read_prompt_list(path: str | Path, label: str | None = None):
    """The table above from any of the formats above. ``label`` overrides the list's own labels (e.g.
    ``control`` for a list of unmemorized prompts); otherwise NeMo's type gives verbatim/template and a
    list without types is ``memorized`` (the lists are published as memorized prompts)."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MemlabError(f"prompt list {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise MemlabError(f"cannot read {path} as JSON lines: {one_line(e)}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append(parse_json(line, f"{path}, line {n},"))
        if not all(isinstance(r, dict) for r in rows):
            raise MemlabError(f"{path}: every line must be a JSON object")
        df = pd.DataFrame(rows)
    elif path.suffix.lower() in (".csv", ".tsv", ".parquet"):
        df = read_table(path, "prompt list", sniff=path.suffix.lower() == ".csv")
    else:  # text: one prompt (or one URL) a line
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise MemlabError(f"cannot read {path} as UTF-8 text: {one_line(e)}") from None
        is_url = [ln.lower().startswith(("http://", "https://")) for ln in lines]
        if sum(is_url) * 2 >= len(lines) and not all(is_url):  # a list of URLs with odd lines: never prompts
            n = next(i for i, u in enumerate(is_url) if not u)
            raise MemlabError(f"{path}: {sum(is_url)} of {len(lines)} lines are URLs, but line {n + 1} is not "
                              f"({lines[n][:60]!r}); a URL list holds one http(s) URL a line")
        df = (pd.DataFrame({"url": lines, "caption": [""] * len(lines)}) if lines and all(is_url)
              else pd.DataFrame({"caption": lines}))
    prompt_col, url_col = _column(df, _PROMPT_COLS), _column(df, _URL_COLS)
    if prompt_col is None and url_col is None:
        raise MemlabError(f"{path} has neither a caption/prompt/text column nor a url column "
                          f"(columns: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame({
        "prompt": df[prompt_col].fillna("").astype(str).str.strip() if prompt_col else "",
        "url": df[url_col].fillna("").astype(str).str.strip() if url_col else "",
    })
    type_col = _column(df, ("type",))
    if label is not None:
        if label not in LABELS:
            raise MemlabError(f"unknown label {label!r}; known: {', '.join(LABELS)}")
        out["label"] = label
    elif type_col is not None:
        out["label"] = df[type_col].map(lambda t: NEMO_TYPES.get(str(t).strip().upper(), "memorized"))
    else:
        out["label"] = "memorized"
    for ours, theirs in (("published_mean_sscd", "mean_sscd"), ("published_max_sscd", "max_sscd")):
        col = _column(df, (theirs,))
        out[ours] = pd.to_numeric(df[col], errors="coerce") if col else np.nan
    idx = _column(df, ("index", "laion_index", "key"))
    out["laion_index"] = (pd.to_numeric(df[idx], errors="coerce").fillna(-1).astype("int64") if idx else -1)
    out["list"] = path.name
    out = out[(out["prompt"] != "") | (out["url"] != "")].reset_index(drop=True)
    if out.empty:
        raise MemlabError(f"{path} holds no prompts")
    return out[COLUMNS]
