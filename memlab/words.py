"""Caption words to item rows: an inverted index (word -> the sorted rows whose caption holds it), so that the
Training set tab's caption search and a keyword's rows (Memory Triggers' keyword filter, ``memlab.keywords``) are
found by intersecting a few posting lists rather than by matching a pattern against every caption of the index.

A caption's words are the runs of word characters (``\\w+``) of its lower-cased text: the same words the caption
search and ``keywords.keyword_pattern`` match whole. The posting lists are therefore exact for single words, and a
superset for a multi-word keyword (its words anywhere in the caption), whose candidates the caller checks against
the keyword's own pattern. Built in memory, in chunks, the first time an index is searched.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

WORD = re.compile(r"\w+")
CHUNK = 100_000  # captions tokenized at a time (bounds the memory of the words' Python strings)


def caption_words(caption: str) -> list[str]:
    """The words of a caption: its lower-cased ``\\w+`` runs."""
    return WORD.findall(caption.lower())


class CaptionWords:
    """Posting lists of the captions' words: ``rows[starts[w]:starts[w + 1]]`` are the rows holding word ``w``."""

    def __init__(self, captions: Sequence | pd.Series, progress: Callable[[Iterable], Iterable] | None = None):
        caps = pd.Series(captions).fillna("").astype(str).str.lower().to_numpy()
        self.n = len(caps)
        vocab: dict[str, int] = {}
        codes, rows = [], []
        starts = range(0, self.n, CHUNK)
        for s in (progress(starts) if progress else starts):
            toks = [WORD.findall(c) for c in caps[s:s + CHUNK]]
            counts = np.fromiter(map(len, toks), np.int64, len(toks))
            codes.append(np.fromiter((vocab.setdefault(t, len(vocab)) for ts in toks for t in ts), np.int64,
                                     int(counts.sum())))
            rows.append(np.repeat(np.arange(s, s + len(toks), dtype=np.int64), counts))
        code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        key = np.unique(code * max(self.n, 1) + row)  # (word, row) pairs once each, by word, then row
        code, row = key // max(self.n, 1), key % max(self.n, 1)
        self.rows = row.astype(np.int32 if self.n < 2**31 else np.int64)
        self.starts = np.searchsorted(code, np.arange(len(vocab) + 1))
        self.vocab = vocab

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
