"""Reading the tables a user hands memlab (listings, prompt lists, training tables): CSV, TSV or parquet,
with every way a file can be wrong turned into one clear MemlabError that names the file."""
from __future__ import annotations

from pathlib import Path

from .errors import MemlabError


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, capped (pandas and pyarrow messages run over many)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def read_table(path: str | Path, what: str = "table", sniff: bool = False):
    """A DataFrame from ``path`` (.parquet, else CSV; ``sniff`` guesses the CSV separator)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise MemlabError(f"{what} {path} does not exist")
    if not path.is_file():
        raise MemlabError(f"{what} {path} is not a file")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if sniff:
            return pd.read_csv(path, sep=None, engine="python")
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as e:  # noqa: BLE001 - a malformed file raises many types (ParserError, ArrowInvalid, ...)
        raise MemlabError(f"cannot read {what} {path}: {one_line(e)}") from None


def require_columns(df, path, columns, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MemlabError(f"{path} has no {missing[0]!r} column (columns: {', '.join(map(str, df.columns))})"
                          + (f"; {hint}" if hint else ""))
