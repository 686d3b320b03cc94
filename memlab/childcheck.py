"""Files memlab did not write, tried first in a child process under a memory cap, so that a file built to crash
a reader or to ask it for more memory than the machine has ends the child, not the app.

- FAISS files: ``memlab.faisscheck`` (its own checks, run by ``run_capped``).
- Parquet tables (an index's items, its caption words, a listing, ``--embeddings`` metadata): a parquet column is
  compressed and may be dictionary-encoded, so a small file can decode to gigabytes (a 211,734-byte file whose
  2,000,000 rows repeat one 1,000-character caption took pandas' reader 3.0 GiB; ``benchmarks/bench_parquet_files.py``).
  ``check_parquet`` decodes the file once in a child, batch by batch, under a memory cap, and refuses it when what it
  decodes to passes ``RATIO`` times the file plus ``FLOOR`` (the honest tables measured decode to 1.3-7.9 times
  their file). A file that passed, or one this process wrote (``trust``), is remembered by inode, size and time for
  the process's life.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import MemlabError, one_line

__all__ = ["check_parquet", "check_parquets", "run_capped", "set_cap", "trust"]

RATIO = 100  # decoded bytes per byte of the file, at most (plus FLOOR)
FLOOR = 256 << 20
SLACK = 1 << 30  # the child's cap above its budget: the interpreter, pyarrow and one batch
BATCH = 65536  # rows a batch (pyarrow's own); a batch past the cap is the memory limit's to stop
_checked: set = set()


def _key(path: Path) -> tuple:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def trust(path: str | Path) -> None:
    """Mark a file this process has just written as checked (a rename keeps it so)."""
    _checked.add(_key(Path(path)))


def set_cap(limit: int) -> None:
    """In the child, before the reader is imported: cap its data (no preexec_fn: the app has threads)."""
    if os.name == "posix":
        import resource

        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def run_capped(module: str, args: list, timeout: float, reader: str) -> tuple[dict, str | None]:
    """Run ``python -m module *args`` (which caps itself and prints one JSON line); what it said, and why it
    failed where it printed nothing (the signal that stopped ``reader``, an exit status with the end of its
    stderr), else None."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    said = json.loads(lines[-1]) if lines else {}
    if r.returncode == 0 and said.get("ok") or said.get("error"):
        return said, None
    if r.returncode < 0:
        return said, f"{reader} stopped the process reading it ({signal.Signals(-r.returncode).name})"
    return said, f"{reader} failed reading it ({' '.join(r.stderr.split())[-160:] or f'exit {r.returncode}'})"


def budget(path: Path) -> int:
    """The most a table from ``path`` may decode to: ``RATIO`` times the file plus ``FLOOR``."""
    return FLOOR + RATIO * path.stat().st_size


def check_parquet(path: str | Path, what: str = "table", error: type = MemlabError) -> None:
    """Refuse (``error``, one line naming the file) a parquet file whose decoding, tried in a child process
    under a memory cap, passes its ``budget`` or fails; a file checked or written here before passes."""
    check_parquets({Path(path): what}, error)


def check_parquets(tables: dict, error: type = MemlabError) -> None:
    """``check_parquet`` for several files ({path: what it is}) in one child, one after another (an index's
    tables at its load: one interpreter started, not one a table)."""
    todo = [(Path(p), what) for p, what in tables.items()
            if Path(p).is_file() and _key(Path(p)) not in _checked]  # a missing file: its reader says so
    if not todo:
        return
    limits = [budget(p) for p, _ in todo]
    timeout = 60 + sum(limits) / 50e6
    args = [max(limits) + SLACK] + [a for (p, _), most in zip(todo, limits) for a in (p, most)]
    try:
        said, failed = run_capped("memlab.childcheck", args, timeout, "pyarrow")
    except subprocess.TimeoutExpired:
        names = ", ".join(f"{what} {p}" for p, what in todo)
        raise error(f"cannot read {names}: decoding took over {timeout:.0f} s") from None
    if failed or not said.get("ok"):
        p, what = todo[said.get("file", 0)]
        raise error(f"cannot read {what} {p}: {said.get('error') or failed}")
    _checked.update(_key(p) for p, _ in todo)


def _decode(path: str, limit: int, cap: int) -> str | None:
    """The child's work (capped at ``cap``): None when every column of ``path`` decodes within ``limit`` bytes."""
    import pyarrow.parquet as pq

    size = os.path.getsize(path)
    try:
        f = pq.ParquetFile(path)
        total = 0
        for batch in f.iter_batches(batch_size=BATCH):
            total += batch.nbytes
            if total > limit:
                return (f"its {size:,} bytes decode to more than {limit / 2**20:,.0f} MiB ({RATIO} times the file "
                        f"plus {FLOOR >> 20} MiB), as a decompression bomb does")
    except MemoryError:
        return (f"decoding its {size:,} bytes asked for more memory than the reader's cap "
                f"({cap / 2**30:.1f} GiB), as a decompression bomb does")
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        return f"it is not a readable parquet file ({one_line(e, 160)})"
    return None


if __name__ == "__main__":  # CAP PATH BUDGET [PATH BUDGET ...]
    set_cap(int(sys.argv[1]))
    for i, (p, most) in enumerate(zip(sys.argv[2::2], sys.argv[3::2])):
        err = _decode(p, int(most), int(sys.argv[1]))
        if err:
            print(json.dumps({"ok": False, "error": err, "file": i}))
            sys.exit(1)
    print(json.dumps({"ok": True}))
