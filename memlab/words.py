"""Caption words to item rows: an inverted index (word -> the sorted rows whose caption holds it), so that the
Training set tab's caption search and a keyword's rows (Memory Triggers' keyword filter, ``memlab.keywords``) are
found by intersecting a few posting lists rather than by matching a pattern against every caption of the index.

A caption's words are the runs of word characters (``\\w+``) of its lower-cased text: the same words the caption
search and ``keywords.keyword_pattern`` match whole. The posting lists are therefore exact for single words, and a
superset for a multi-word keyword (its words anywhere in the caption), whose candidates the caller checks against
the keyword's own pattern. Index builds write them beside the items (``words.*``: the vocabulary as parquet, the rows
and each word's start as npy, like clip-retrieval's stages pass files); for an index built before them the app builds
them in memory at its start, from the item table read a block of rows at a time (up to ``MAX_ITEMS`` items).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .childcheck import check_parquet, trust
from .errors import IndexMismatchError, MemlabError
from .indexfiles import load_array

WORD = re.compile(r"\w+")
SEP = "\x00"
WORD_OR_SEP = re.compile(r"\w+|\x00")
CHUNK = 100_000  # captions tokenized at a time (bounds the memory of the words' Python strings)
FILES = {"vocab": "words.vocab.parquet", "rows": "words.rows.npy", "starts": "words.starts.npy"}
MAX_ITEMS = 10_000_000  # items whose posting lists are built (in memory: about 8 bytes a caption word, twice)


def caption_words(caption: str) -> list[str]:
    """The words of a caption: its lower-cased ``\\w+`` runs."""
    return WORD.findall(caption.lower())


class CaptionWords:
    """Posting lists of the captions' words: ``rows[starts[w]:starts[w + 1]]`` are the rows holding word ``w`` (the
    ``w``-th of ``vocab``), in row order."""

    def __init__(self, vocab: dict[str, int], rows: np.ndarray, starts: np.ndarray, n: int):
        self.vocab, self.rows, self.starts, self.n = vocab, rows, starts, int(n)

    @classmethod
    def build(cls, captions: Sequence | pd.Series | Iterable[Sequence],
              progress: Callable[[Iterable], Iterable] | None = None) -> "CaptionWords":
        """From the captions in row order: a sequence, or an iterable of blocks of them (an item table read row group
        by row group)."""
        if isinstance(captions, (pd.Series, np.ndarray, list, tuple)):
            whole = captions
            captions = (whole[s:s + CHUNK] for s in range(0, len(whole), CHUNK))
        vocab: dict[str, int] = {}
        codes, rows, n = [], [], 0
        for block in (progress(captions) if progress else captions):
            chunk = [str(c).replace(SEP, " ") for c in pd.Series(block, dtype=object).fillna("")]
            # one pass of the pattern over the block, its captions joined by SEP (not a word character, and matched
            # on its own): each caption's words follow as many SEPs as captions before it
            local, uniq = pd.factorize(np.array(WORD_OR_SEP.findall(SEP.join(chunk).lower()), object))
            sep = [i for i, w in enumerate(uniq) if w == SEP]  # (numpy's own == drops a trailing NUL)
            is_sep = local == sep[0] if len(sep) else np.zeros(len(local), bool)
            row = np.cumsum(is_sep)[~is_sep]
            ids = np.fromiter((vocab.setdefault(w, len(vocab)) if w != SEP else -1 for w in uniq), np.int64,
                              len(uniq))
            key = np.sort(ids[local[~is_sep]] * max(len(chunk), 1) + row)  # by word, then caption
            key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key  # each pair once
            codes.append((key // max(len(chunk), 1)).astype(np.int32))
            rows.append((key % max(len(chunk), 1) + n).astype(np.int32))
            n += len(chunk)
        if n >= 2**31:
            raise MemlabError(f"{n:,} captions: the caption words hold rows as 32-bit integers")
        counts = sum((np.bincount(c, minlength=len(vocab)) for c in codes), np.zeros(len(vocab), np.int64))
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out, fill = np.empty(int(starts[-1]), np.int32), starts[:-1].copy()
        for c, r in zip(codes, rows):  # block after block, each word's rows placed after its earlier blocks' ones
            if len(c):
                first = np.concatenate([[0], np.flatnonzero(np.diff(c)) + 1])  # where each word's run starts
                rank = np.arange(len(c)) - np.repeat(first, np.diff(np.concatenate([first, [len(c)]])))
                out[fill[c] + rank] = r
                fill[c[first]] += np.diff(np.concatenate([first, [len(c)]]))
        return cls(vocab, out, starts, n)

    def save(self, folder: Path) -> dict:
        """Write the posting lists into an index folder; returns their manifest entry."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"word": pa.array(list(self.vocab), pa.string())}), Path(folder) / FILES["vocab"])
        trust(Path(folder) / FILES["vocab"])
        np.save(Path(folder) / FILES["rows"], self.rows)
        np.save(Path(folder) / FILES["starts"], self.starts)
        return {"items": self.n, "words": len(self.vocab), "postings": int(len(self.rows)), "files": dict(FILES),
                "words_are": "the lower-cased \\w+ runs of each caption, each caption's rows in row order"}

    @classmethod
    def load(cls, folder: Path, entry: dict, n: int) -> "CaptionWords":
        """An index's posting lists (their files were checked against its manifest), checked against its ``n``
        items: every row an item, each word's rows in increasing order."""
        import pyarrow.parquet as pq

        folder = Path(folder)
        check_parquet(folder / entry["files"]["vocab"], "caption words", IndexMismatchError)
        words = pq.read_table(folder / entry["files"]["vocab"], columns=["word"]).column(0).to_pylist()
        rows = load_array(folder / entry["files"]["rows"], IndexMismatchError)
        starts = load_array(folder / entry["files"]["starts"], IndexMismatchError)
        vocab = {w: i for i, w in enumerate(words)}
        bad = None
        if entry.get("items") != n:
            bad = f"they cover {entry.get('items')} items, the index holds {n}"
        elif rows.ndim != 1 or rows.dtype.kind not in "iu" or starts.ndim != 1 or starts.dtype.kind not in "iu":
            bad = "their rows or starts are not integer vectors"
        elif len(vocab) != len(words) or any(not isinstance(w, str) for w in words):
            bad = "their words are not distinct strings"
        elif len(starts) != len(words) + 1 or (len(starts) and (starts[0] != 0 or starts[-1] != len(rows))) \
                or np.any(starts[1:] < starts[:-1]):
            bad = "their starts do not split the rows word by word"
        elif len(rows) and (rows.min() < 0 or rows.max() >= n):
            bad = f"a row is not an item row (0 to {n - 1})"
        else:
            up = rows[1:] > rows[:-1]
            up[starts[1:-1][(starts[1:-1] > 0) & (starts[1:-1] < len(rows))] - 1] = True  # (a new word may go down)
            if not up.all():
                bad = "a word's rows are not in increasing order"
        if bad:
            raise MemlabError(f"index {folder}: its caption words ({', '.join(FILES.values())}) are refused: {bad}")
        return cls(vocab, rows, starts, n)

    def rows_of(self, word: str) -> np.ndarray:
        """The sorted rows whose caption holds ``word`` (one word, lower-case) as a whole word."""
        w = self.vocab.get(word)
        return self.rows[self.starts[w]:self.starts[w + 1]] if w is not None else self.rows[:0]

    def rows_with_all(self, words: Sequence[str]) -> np.ndarray:
        """The sorted rows whose caption holds every one of ``words`` (lower-case words) as a whole word; every
        row for no word."""
        if not len(words):
            return np.arange(self.n)
        lists = sorted((self.rows_of(w) for w in set(words)), key=len)
        out = lists[0]
        for other in lists[1:]:
            if not len(out):
                break
            at = np.minimum(np.searchsorted(other, out), len(other) - 1)  # both sorted: a binary search each
            out = out[other[at] == out] if len(other) else out[:0]
        return np.asarray(out, np.int64)


def for_index(index, captions=None) -> CaptionWords | None:
    """A loaded index's posting lists: the ones its build wrote (``words`` in its manifest), else built here from
    ``captions`` (its item table's caption column, row group by row group, unless given); None for an index past
    ``MAX_ITEMS`` without them."""
    entry, n = index.manifest.get("words"), int(index.manifest["item_count"])
    if isinstance(entry, dict):
        return CaptionWords.load(index.path, entry, n)
    if n > MAX_ITEMS:
        return None
    return CaptionWords.build(caption_blocks(index.path / index.manifest["metadata"]) if captions is None
                              else captions)


def caption_blocks(items: Path) -> Iterable[list]:
    """The caption column of an item table (parquet), ``CHUNK`` rows at a time (empty captions where it has none)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(items)
    if "caption" not in f.schema_arrow.names:
        n = f.metadata.num_rows
        yield from ([""] * min(CHUNK, n - s) for s in range(0, n, CHUNK))
        return
    for batch in f.iter_batches(batch_size=CHUNK, columns=["caption"]):
        yield batch.column(0).to_pylist()


def write(folder: Path, captions, n: int, log=print) -> dict | None:
    """Build the posting lists of ``captions`` (an index's ``n`` items in row order: a sequence, or blocks of it)
    into ``folder``; their manifest entry, or None past ``MAX_ITEMS`` (said in ``log``)."""
    if n > MAX_ITEMS:
        log(f"caption words not kept: {n:,} items, over the {MAX_ITEMS:,} whose posting lists are built in memory "
            f"(the app's caption search and keyword views refuse on this index)")
        return None
    return CaptionWords.build(captions).save(folder)
