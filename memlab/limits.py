"""What one web request may ask for, and the checks of a caller's fields (docs/app.md, "Limits"): past a
limit the caller gets a message, never a silently changed value."""
from __future__ import annotations

import math

from .errors import MemlabError
from .generate import MAX_PROMPT_CHARS
from .match import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

APP_MAX_SEEDS = 64  # a web request; the CLI allows up to 1,000
MAX_CHUNK = 8  # seeds per streamed chunk at most (on ZeroGPU one call each, which Stop waits for)
KEPT_VIEWS = 32  # keyword views computed on a visitor's request and kept in memory (the latest used)
KEPT_ROWS = 16  # rows of the lesson's runs kept for the next visitor (its steps: 5 rows; the latest used)
KEYWORD_MAX_ITEMS = 10_000  # captions a keyword view clusters on a visitor's request (all pairs compared: a common
# word on a LAION-scale index, hundreds of thousands of captions, would hold the app for hours; prebuilt views have none)
CAPTION_SEARCH_MAX = 20_000  # distinct captions the app embeds (once, on the compute thread) for its text search:
# minutes for SD's text encoder on a CPU; a LAION-scale index (millions) would hold every request for hours. An
# index that keeps its caption vectors (memlab.captions, built offline) is searched at any size instead.

# What one web request may ask for (README: "Limits"). Past each, the caller gets a message, never a
# silently changed value.
LIMITS = {
    "seeds": APP_MAX_SEEDS,           # seeds per request (generate, attribution)
    "compare_seeds": 16,              # seeds per request in Compare (each runs once per strategy)
    "variant_seeds": 16,              # seeds per request in a keyword's prompt variants (each runs once per variant)
    "steps": 200,                     # denoising steps per image
    "guidance": 20.0,
    "prompt_chars": MAX_PROMPT_CHARS,  # refused past it; past 77 CLIP tokens a prompt is truncated (warned)
    "query_chars": 200,               # caption search, keyword, item id
    "k": 10, "lam": 1.0,              # mitigation parameters in the page
    "upload_bytes": MAX_IMAGE_BYTES,  # an uploaded image (Match an image); Gradio refuses larger files
    "upload_pixels": MAX_IMAGE_PIXELS,  # declared in the image's header: refused before decoding
    "match_batch": 16,                # images in one batch (Match a batch; all in one upload, upload_bytes together)
    "queue": 64,                      # requests waiting in the app's queue; past it: "Queue is full"
}


def number(value, name: str, lo: float, hi: float, integer: bool = False):
    """A finite number in [lo, hi] from whatever a caller sent (str, float, None...), or a MemlabError
    that names the field and the range. Never clamps: an out-of-range value is refused."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise MemlabError(f"{name}: a number is needed (got {value!r})")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise MemlabError(f"{name}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(x):
        raise MemlabError(f"{name}: {x} is not a finite number")
    def fmt(v):
        return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"
    if integer and not x.is_integer():
        raise MemlabError(f"{name}: a whole number is needed (got {x:g})")
    if not lo <= x <= hi:
        raise MemlabError(f"{name} must be between {fmt(lo)} and {fmt(hi)} (got {fmt(x)})")
    return int(x) if integer else x


def text(value, name: str, max_chars: int, required: bool = True) -> str:
    """A caller's text field: a string of at most ``max_chars`` characters (numbers are read as text)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise MemlabError(f"{name} is empty")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise MemlabError(f"{name}: text is needed (got {type(value).__name__})")
    value = str(value)
    if len(value) > max_chars:
        raise MemlabError(f"{name} is {len(value):,} characters long; at most {max_chars:,}")
    return value.strip()


