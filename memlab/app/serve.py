"""Serving the page: launch (queue, limits, files, middleware), the app's image files and their pruning, the
caller-facing messages Gradio leaves out, the queue's polling rate and the page's CSS."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from ..jsonfiles import NESTED
from ..limits import LIMITS
from ..sources import IMAGE_EXTS
from ..service import Lab

FILE_MAX_AGE_S = 86_400  # the app's image files and downloads (here and in Gradio's cache) are deleted after a day
DOWNLOADS = "downloads"


_last_prune = [0.0]


def app_files() -> Path:
    """The folder of the PNGs ``as_file`` writes."""
    folder = Path(tempfile.gettempdir()) / "memlab-app"
    folder.mkdir(exist_ok=True)
    return folder


def prune_app_files(max_age_s: float = FILE_MAX_AGE_S, now: float | None = None) -> int:
    """Delete the app's PNGs and downloads (``download_path``'s folders) not written or reused for ``max_age_s``
    (a hosted app would otherwise fill its disk); returns how many. Gradio serves its own copies, so a page still
    showing one, or a download already offered, loses nothing."""
    import shutil
    import time

    now = time.time() if now is None else now
    gone = 0
    for p in [*app_files().iterdir(), *downloads().iterdir()]:
        if p.name == DOWNLOADS:
            continue
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone += 1
        except FileNotFoundError:  # another request pruned it first
            pass
    return gone


def downloads() -> Path:
    """The folder of the app's downloads (exported runs, comparisons, views), one folder each."""
    folder = app_files() / DOWNLOADS
    folder.mkdir(exist_ok=True)
    return folder


def prune_hourly() -> None:
    """``prune_app_files`` when it last ran over an hour ago (each new picture or download asks)."""
    import time

    if time.time() - _last_prune[0] > 3600:
        _last_prune[0] = time.time()
        prune_app_files()


def download_path(name: str) -> Path:
    """Where a download called ``name`` is written: a folder of its own (two visitors' ``run.zip`` never meet)
    under ``downloads()``, pruned with the app's PNGs a day after it was made."""
    import uuid

    prune_hourly()
    folder = downloads() / uuid.uuid4().hex
    folder.mkdir()
    return folder / name


def as_file(im: Image.Image) -> str:
    """A PNG file for a gallery, named by its content and written under a temporary name then renamed.
    Gradio rewrites a PIL output's cache file in place on every request, so two visitors generating the
    same prompt and seeds at once could be served a half-written file; a path is copied atomically.
    A reused file is touched, and files older than ``FILE_MAX_AGE_S`` are pruned once an hour."""
    import hashlib
    import io
    import os
    import uuid

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    folder = app_files()
    prune_hourly()
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    try:
        os.utime(path)  # reused: fresh again, so a prune does not take it from under this request
    except FileNotFoundError:
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


class CallerMessages:
    """ASGI middleware saying to callers what Gradio's own answers leave out, and holding every request to
    memlab's caps before Gradio reads it:

    - a call to an endpoint the app does not have gets 404 with the list of those it has (Gradio answers
      500); a request past the queue's limit gets 503 with the limit, the number waiting, the expected wait
      and a Retry-After header (Gradio says only that the queue is full);
    - a request body over the upload cap (a file, or an image inlined as a ``data:`` URL) gets 413 naming the
      cap, before Gradio saves or decodes it; a file named by an http(s) URL (which Gradio would fetch) gets
      400: the app matches images it is sent, it fetches none;
    - the file route serves the training images alone: under a world's folders or an image folder, a file that
      is not one of the item table's images (``Lab.is_training_image``) gets 403;
    - every page and file it serves carries ``CONTENT_POLICY``: images and media from the app alone."""

    def __init__(self, app, image_folders=(), world_folders=(), training_image=None):
        self.app = app
        self.images = [Path(f).resolve() for f in image_folders]
        self.worlds = [Path(f).resolve() for f in world_folders]
        self.training_image = training_image or (lambda p: True)
        from gradio.utils import get_upload_folder

        self.caches = [Path(get_upload_folder()).resolve(), app_files().resolve()]  # Gradio's files and the app's

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and "/file=" in scope["path"]:
            if not self._serves(scope["path"].split("/file=", 1)[1]):
                return await _json(send, 403, {"detail": "this app serves the training images, no other file"})
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, _with_policy(send))
        if scope["type"] != "http" or scope["method"] != "POST" or "/gradio_api/" not in scope["path"]:
            return await self.app(scope, receive, send)
        blocks = scope["app"].get_blocks()
        m = re.search(r"/gradio_api/call/([^/]+)$", scope["path"])
        if m:
            known = {fn.api_name for fn in blocks.fns.values() if fn.api_name}
            names = sorted(fn.api_name for fn in blocks.fns.values()
                           if fn.api_name and getattr(fn, "api_visibility", "public") == "public")
            if m.group(1) not in known:
                return await _json(send, 404, {"detail": f"this app has no endpoint /{m.group(1)}; it has "
                                                         + ", ".join(f"/{n}" for n in names)})
        upload = "/upload" in scope["path"]
        body, refused = await _read_capped(receive, UPLOAD_CAP if upload else BODY_CAP)
        if refused:
            return await _json(send, 413, {"detail": f"the request is over the app's upload limit: an image of at "
                                                     f"most {LIMITS['upload_bytes'] // 2**20} MiB "
                                                     f"and {LIMITS['upload_pixels'] / 1e6:.0f} megapixels (a batch: "
                                                     f"its images together)"})
        problem = None if upload else _request_problem(body)
        if problem:
            return await _json(send, 400, {"detail": problem})
        start = {}

        async def send_(msg):
            if msg["type"] == "http.response.start" and msg["status"] == 503:
                start.update(msg)
                return
            if start and msg["type"] == "http.response.body":
                text, wait = queue_full_message(blocks._queue)
                return await _json(send, 503, {"detail": text}, {"retry-after": str(max(1, round(wait or 5)))})
            await send(msg)

        return await self.app(scope, replay(body, receive), send_)

    def _serves(self, raw: str) -> bool:
        """Whether the file route may serve ``raw`` (as it came in the URL): Gradio's cache, the app's PNGs and
        anything outside the worlds' and the image folders are Gradio's to judge; inside them, the training images
        alone (image files under an image folder that the item table names)."""
        import urllib.parse

        try:
            p = Path(urllib.parse.unquote(raw)).resolve()
        except (OSError, ValueError):
            return False
        if any(p.is_relative_to(c) for c in self.caches) or not any(p.is_relative_to(w) for w in self.worlds
                                                                     + self.images):
            return True
        return p.suffix.lower() in IMAGE_EXTS and any(p.is_relative_to(f) for f in self.images) \
            and self.training_image(p)


# The page's images and media come from the app itself (its files, data: and blob: URLs): text shown as markdown
# (a training caption, a world's name, a probe) that names a remote image, as ![..](http://..) or <img src=..>,
# is not fetched by the viewer's browser (a tracker, or a picture nobody chose shown to a class)
CONTENT_POLICY = "img-src 'self' data: blob:; media-src 'self' data: blob:"


def _with_policy(send):
    """``send`` adding the app's Content-Security-Policy to a response that has none."""
    async def send_(msg):
        if msg["type"] == "http.response.start":
            headers = list(msg.get("headers", []))
            if not any(k.lower() == b"content-security-policy" for k, _ in headers):
                headers.append((b"content-security-policy", CONTENT_POLICY.encode()))
            msg = {**msg, "headers": headers}
        await send(msg)
    return send_


BODY_CAP = LIMITS["upload_bytes"] * 4 // 3 + 2**20  # an upload's bytes as base64 in JSON, and the request around it
UPLOAD_CAP = LIMITS["upload_bytes"] + 2**16  # a file upload and its multipart headers


async def _read_capped(receive, cap: int) -> tuple[bytes, bool]:
    """The request's body, or (what was read, True) once it is over ``cap`` bytes."""
    chunks, n = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        n += len(chunks[-1])
        if n > cap:
            return b"", True
        if not msg.get("more_body"):
            break
    return b"".join(chunks), False


def replay(body: bytes, receive):
    """An ASGI ``receive`` that hands over a body already read, then the connection's own messages (its
    disconnect)."""
    sent = [False]

    async def again():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


def _request_problem(body: bytes) -> str | None:
    """Why a JSON request is refused, or None: it names a file (Gradio's FileData) by an http(s) URL for its
    path, which Gradio would fetch before the handler runs, or it nests arrays or objects past what Python's
    parser (Gradio's too) recurses through, which the app's own calls never do."""
    if b"FileData" not in body or b"http" not in body:
        return None
    try:
        data = json.loads(body)
    except RecursionError:
        return f"the request's JSON is not valid: {NESTED}"
    except ValueError:
        return None
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            meta = x.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":  # (its ``url`` is where the app
                v = x.get("path")                                                  # serves an upload; a ``path``
                if isinstance(v, str) and v.lower().startswith(("http://", "https://")):  # URL is fetched)
                    return "upload the image: this app does not fetch a file named by an http(s) URL"
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


async def _json(send, status: int, body: dict, headers: dict | None = None):
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


def queue_full_message(queue) -> tuple[str, float | None]:
    """What a caller past the queue's limit reads: the limit, how many wait, and how long the queue takes
    to move at the average time of the requests finished so far."""
    times = [p.avg_time for p in queue.process_time_per_fn.values() if getattr(p, "count", 0)]
    waiting = len(queue)
    text = f"The app's queue is full: {waiting} requests are waiting and the limit is {queue.max_size}."
    if not times:
        return text + " Try again in a little while.", None
    avg = sum(times) / len(times)
    return (text + f" Requests take about {avg:.1f} s each, one at a time per kind, so a place frees up in about "
            f"{avg:.0f} s and the queue empties in about {waiting * avg:.0f} s; try again then."), avg


# The page's own CSS: no scroll anchoring (a click scrolls the results' top into view; as the headline grows
# above the pairs, the browser would otherwise scroll on to keep the pairs still, and the headline would
# leave the screen); a gallery of a few thumbnails (top-k, a match, the lesson's copies) is as tall as
# its rows (Gradio's galleries keep a fixed height, leaving ~220 px blank under one row), and the keyword tab's
# are too, up to 480 px, then scroll inside (a view of 12 clusters holds 48 thumbnails); on a narrow screen (a
# phone, 420 px) the generate tab's pairs stack one a line at
# full width and their captions (seed, verdict, score, training image) wrap instead of being cut; a tapped
# pair opens alone at full width with its caption wrapped (Gradio's preview otherwise lies over the whole
# stacked grid, its caption on one cut line); every other gallery shows 3 thumbnails a line (a gallery's
# columns are otherwise fixed, 8 of them 100 px wide each, scrolled sideways in a 340 px box).
# Gradio pulses the border of every output while a run is in flight: on a machine that serves and shows
# the page (a laptop running the built-in world), a headless Chromium spent most of a core redrawing it,
# taken from the model; the progress bar shows on the pairs alone (``progress_on``); the card's checks table wraps
# its long check names (in code) instead of widening a phone's page
APP_CSS = """
html,body,.gradio-container{overflow-anchor:none}
#pairs .caption-label{white-space:normal;max-width:100%}
#topk .grid-wrap,#match-gallery .grid-wrap,#lesson-copies .grid-wrap{height:auto!important;min-height:0!important;
  max-height:none!important}
#kw-gallery .grid-wrap,#kw-var-gallery .grid-wrap{height:auto!important;min-height:0!important;max-height:480px!important}
.wrap.generating{animation:none!important}
@media (min-width:701px){#about-card pre, #about-card pre code{white-space:pre-wrap!important;overflow-wrap:anywhere}}
#about-card td code{white-space:normal;overflow-wrap:anywhere}
#about-card th{white-space:nowrap}
#phone-tabs{display:none!important}
@media (max-width:700px){
 #phone-tabs{display:block!important;margin-bottom:4px}
 #phone-tabs label{padding:2px 8px!important;font-size:13px!important;min-height:0!important}
 #pairs .grid-container{grid-template-columns:minmax(0,1fr)!important;grid-template-rows:none!important;
   grid-auto-rows:auto!important}
 #pairs .thumbnail-item{aspect-ratio:auto!important;height:auto!important;display:flex;flex-direction:column}
 #pairs .thumbnail-item img{height:auto!important}
 #pairs .grid-wrap{height:auto!important;max-height:none!important;overflow:visible!important}
 #pairs .caption-label{position:static!important;font-size:14px;border:0;text-align:center}
 #pairs .gallery-container:has(> .preview) > .grid-wrap{display:none!important}
 #pairs .preview{position:relative!important;height:auto!important;display:flex;flex-direction:column}
 #pairs .preview .media-button{height:auto!important}
 #pairs .preview .media-button img{height:auto!important;width:100%}
 #pairs .preview .caption{white-space:normal!important;font-size:14px;text-align:center;padding:4px 8px}
 #pairs .preview .thumbnails{position:static!important}
 .gallery-container .grid-container{grid-template-columns:repeat(3,minmax(0,1fr))!important}
}
"""


def app_theme() -> gr.themes.Base:
    """Gradio's default theme with its two fonts at weights 400 and 700. Gradio serves the fonts itself
    (the files it ships, online or not), and its Source Sans Pro and IBM Plex Mono files at 600, the weight
    of its headings and bold text, are subsets that lack most letters: a bold line drew the few they have
    ("A", "B", ...) in Source Sans, smaller, and the rest in the machine's sans serif.
    Bold now takes the full 700 files."""
    font = gr.themes.GoogleFont("Source Sans Pro", weights=(400, 700))
    mono = gr.themes.GoogleFont("IBM Plex Mono", weights=(400, 700))
    return gr.themes.Default(font=[font, "ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=[mono, "ui-monospace", "Consolas", "monospace"])


QUEUE_POLL_S = 0.05  # how often an idle queue looks for work (Gradio's default on Windows; on Linux 0.001)


PROGRESS_POLL_S = 0.1  # how often progress is sent (Gradio's default on Windows; on Linux 0.01)


def calm_queue(demo: gr.Blocks) -> None:
    """Let the queue's event loop poll at Gradio's Windows rates. On Linux it wakes 1,000 times a second
    to look for work, and each wake takes the GIL from the thread generating, whose small CPU ops each
    need it (tests/test_app.py checks the idle loop; benchmarks/bench_streaming.py measures both ways).
    A request now starts at most 50 ms after it is queued."""
    q = demo._queue  # Gradio's Queue; its poll intervals are plain attributes, not launch options
    if hasattr(q, "sleep_when_free") and hasattr(q, "progress_update_sleep_when_free"):
        q.sleep_when_free, q.progress_update_sleep_when_free = QUEUE_POLL_S, PROGRESS_POLL_S


def launch(demo: gr.Blocks, labs, host: str = "127.0.0.1", port: int = 7860, queue_size: int | None = None,
           **kw):
    """Queue and serve the app the one way memlab does (app.py and the tests): one generation at a time
    per event, at most LIMITS["queue"] requests waiting (past it a caller is told the limit and the wait),
    messages of refused input shown (``show_error``; tracebacks stay in the server log), and files served
    only from the worlds' image folders (``CallerMessages``: images alone, uploads within the caps)."""
    from starlette.middleware import Middleware

    import PIL.Image

    labs = [labs] if isinstance(labs, Lab) else list(labs)
    folders = sorted({f for lab in labs for f in lab.image_folders()})
    worlds = sorted({f for lab in labs for f in lab.served_folders()})
    # Gradio opens an uploaded image (and decodes one sent as a data: URL) before memlab sees it: PIL refuses
    # at open an image over twice this, so nothing over the app's pixel cap is decoded
    PIL.Image.MAX_IMAGE_PIXELS = LIMITS["upload_pixels"] // 2
    demo.queue(default_concurrency_limit=1, max_size=queue_size or LIMITS["queue"])
    calm_queue(demo)
    return demo.launch(server_name=host, server_port=port, show_error=True, allowed_paths=folders, css=APP_CSS,
                       theme=app_theme(),
                       max_file_size=LIMITS["upload_bytes"],
                       footer_links=["api"],
                       app_kwargs={"middleware": [Middleware(
                           CallerMessages, image_folders=folders, world_folders=worlds,
                           training_image=lambda p: any(lab.is_training_image(p) for lab in labs))]}, **kw)
