"""User-facing errors: a clear message instead of a traceback."""


class MemlabError(Exception):
    """Bad input or a missing/inconsistent file. The message says what to do."""


class IndexMismatchError(MemlabError):
    """An index directory whose files do not match its manifest."""


class ModelFileMissing(MemlabError):
    """A model file (SSCD TorchScript, pipeline folder) is not where it should be."""


class Stopped(Exception):
    """A run asked to stop (Stop in the app) ended early; what finished before it stands."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, capped (pandas and pyarrow messages run over many)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"
