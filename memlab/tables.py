"""Reading the tables a user hands memlab (listings, prompt lists, training tables): CSV, TSV or parquet,
with every way a file can be wrong turned into one clear MemlabError that names the file."""
from __future__ import annotations

from pathlib import Path

from .childcheck import check_parquet
from .errors import MemlabError, one_line


def read_table(path: str | Path, what: str = "table", sniff: bool = False, dtype: dict | None = None):
    """A DataFrame from ``path`` (.parquet, else CSV/TSV; ``sniff`` guesses the CSV separator; ``dtype``: a CSV's
    column types, as pandas takes them). A byte-order mark is read as one; a row whose field count differs from
    the header's is refused, naming its line (pandas would shift its columns, or fill the row with empties)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise MemlabError(f"{what} {path} does not exist")
    if not path.is_file():
        raise MemlabError(f"{what} {path} is not a file")
    try:
        if path.suffix == ".parquet":
            check_parquet(path, what)  # decoded in a child first: a few megabytes can decode to gigabytes
            return pd.read_parquet(path)
        sep = _check_fields(path, what, sniff)
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig", engine="python" if sniff else "c", dtype=dtype)
    except MemlabError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed file raises many types (ParserError, ArrowInvalid, ...)
        raise MemlabError(f"cannot read {what} {path}: {one_line(e)}") from None


def _check_fields(path: Path, what: str, sniff: bool) -> str:
    """The file's separator, after checking that every row has as many fields as the header."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        head = f.read(64 * 1024)
        sep = "\t" if path.suffix == ".tsv" else ","
        if sniff:
            try:
                sep = csv.Sniffer().sniff(head.splitlines()[0] if head else "", delimiters=",;\t|").delimiter
            except csv.Error:
                pass
        f.seek(0)
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, None)
        if header is None:
            raise MemlabError(f"{what} {path} is empty")
        for row in reader:
            if row and len(row) != len(header):
                raise MemlabError(f"{what} {path}, line {reader.line_num}: {len(row)} fields where the header has "
                                  f"{len(header)} ({sep!r}-separated); quote fields that hold the separator")
    return sep


def require_columns(df, path, columns, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MemlabError(f"{path} has no {missing[0]!r} column (columns: {', '.join(map(str, df.columns))})"
                          + (f"; {hint}" if hint else ""))
