"""Test and benchmark helpers: serve `python app.py` in a subprocess and drive it in real Chromium
(Debian's /usr/bin/chromium through the pip ``playwright`` package; never ``playwright install``)."""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[1]


def chromium_path() -> str | None:
    for p in (os.environ.get("MEMLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if p and Path(p).is_file():
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(world: str | Path | None, timeout: float = 180.0, args: tuple = (), env: dict | None = None):
    """Start ``python app.py [args]`` in a subprocess (``env`` added to its environment); yield its URL;
    stop it afterwards. Its output goes to ``$TMPDIR/memlab-app-PORT.log``, kept only when the test failed or the app died."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           **(env or {})}
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), *args] + (["--world", str(world)] if world else [])
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"memlab-app-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, failed = f"http://127.0.0.1:{port}/", True
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"app did not start within {timeout}s; see {log.name}")
                time.sleep(0.5)
        yield url, proc
        failed = proc.poll() is not None  # the app died on its own
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if not failed:  # the log is kept only when the test failed or the app died
        Path(log.name).unlink(missing_ok=True)


def open_tab(page, name: str) -> None:
    """Click a tab of the app, through the "More tabs" menu when a narrow screen has moved it there."""
    tab = page.get_by_role("tab", name=name)
    if not tab.count():
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.click()


def wait_text(page, selector: str, text: str, timeout: int = 120_000):
    """Until ``selector`` shows ``text`` with no progress bar drawn inside it (on a busy machine a finished
    event's progress text lingers in front of its result)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return !!e && "
                               "(e.innerText || '').includes(t) && "
                               "!e.querySelector('.progress-text, .eta-bar, .progress-level, .meta-text'); }",
                               arg=[selector, text], timeout=timeout)
    except PlaywrightTimeout:  # what the page showed instead, for the failure's report
        shown, toasts = page.evaluate("s => { const e = document.querySelector(s); return [e ? e.outerHTML : null, "
                                      "Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)]; }",
                                      selector)
        raise AssertionError(f"{selector} never showed {text!r} without a progress bar; it holds {shown!r:.1500}; "
                             f"toasts: {toasts}") from None


def fill_kept(page, locator, text: str, tries: int = 5) -> None:
    """``locator.fill(text)`` on a tab just opened, until the field still holds it a moment later: Gradio mounts a
    tab's fields when it is first shown and may set a field's value from its state just after the fill, and the
    request then goes out with the default (CI once; ``python -m tests.tab_fill_race``: on the 2-core machine 12 of
    30 fills made 95-125 ms after the tab's click were gone when the fill returned; a person types later)."""
    for _ in range(tries):
        locator.fill(text)
        page.wait_for_timeout(250)
        if locator.input_value() == text:
            return
    raise AssertionError(f"the field kept losing {text!r}")


_SHARED: dict = {}  # (world, args, env) -> (the serve_app context, (url, process))


def shared_app(world, args: tuple = (), env: dict | None = None) -> tuple:
    """(url, process) of ``python app.py`` on ``world``, started on first use and kept for the callers that
    ask for the same world, arguments and environment (each drives its own page: Gradio keeps a visitor's
    state per page), as a hosted app serves one visitor after another; started again if it died. Kept until
    ``stop_shared``, which runs at the interpreter's exit (an idle server leaves the CPU alone:
    ``test_app.test_an_idle_server_leaves_the_cpu_to_generation``)."""
    key = (str(world), tuple(args), tuple(sorted((env or {}).items())))
    if key in _SHARED and _SHARED[key][1][1].poll() is not None:
        _SHARED.pop(key)[0].__exit__(None, None, None)
    if key not in _SHARED:
        cm = serve_app(world, args=args, env=env)
        _SHARED[key] = (cm, cm.__enter__())
    return _SHARED[key][1]


@atexit.register
def stop_shared() -> None:
    """Stop the servers ``shared_app`` started."""
    while _SHARED:
        _SHARED.popitem()[1][0].__exit__(None, None, None)


def cpu_seconds(proc) -> float:
    """The CPU time (user + system) a process has used: ``proc`` a Popen, or the path of a ``/proc/.../stat``
    (a thread's: ``/proc/self/task/TID/stat``)."""
    path = proc if isinstance(proc, str) else f"/proc/{proc.pid}/stat"
    fields = open(path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds(proc, windows: int = 5, quiet: float = 0.2, window: float = 1.0) -> list:
    """The CPU seconds ``proc`` used in each of up to ``windows`` windows of ``window`` s, ending at the first quiet
    one (under ``quiet`` of a core): a server with no run going uses next to none."""
    shares = []
    for _ in range(windows):
        c = cpu_seconds(proc)
        time.sleep(window)
        shares.append(cpu_seconds(proc) - c)
        if shares[-1] < quiet * window:
            break
    return shares


_BROWSER: dict = {}  # the Chromium that pages share ("playwright", "browser"), started on first use


@atexit.register
def stop_browser() -> None:
    if "browser" in _BROWSER:
        _BROWSER.pop("browser").close()
    if "playwright" in _BROWSER:
        _BROWSER.pop("playwright").stop()


@contextmanager
def browser_page(viewport: tuple = (1400, 1400), fresh: bool = False):
    """A Chromium page in a context of its own (cookies, storage and cache apart) of the browser the tests
    share, started once (Playwright's sync API runs one instance a thread); with ``fresh`` and no shared
    browser running, a browser process of its own (the benchmarks time a page in a cold browser)."""
    from playwright.sync_api import sync_playwright

    size = {"width": viewport[0], "height": viewport[1]}
    if fresh and not _BROWSER:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
            try:
                yield browser.new_page(viewport=size)
            finally:
                browser.close()
        return
    if _BROWSER and not _BROWSER["browser"].is_connected():  # it died: start another
        _BROWSER.clear()
    if not _BROWSER:
        playwright = sync_playwright().start()
        try:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                                                 headless=True)
        except Exception:
            playwright.stop()  # a failed launch leaves nothing half started behind
            raise
        _BROWSER.update(playwright=playwright, browser=browser)
    context = _BROWSER["browser"].new_context(viewport=size)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def app_page(world, viewport: tuple = (1400, 1400), args: tuple = (), env: dict | None = None,
             ready: str = "#generate-btn", timeout_ms: int = 120_000):
    """The app served on ``world`` (``shared_app``) and a Chromium page on it, once ``ready`` is shown."""
    url, _ = shared_app(world, args=args, env=env)
    with browser_page(viewport) as page:
        page.goto(url, wait_until="domcontentloaded")
        page.locator(ready).wait_for(timeout=timeout_ms)
        yield page


def fonts_drawn(page, selector: str) -> list[tuple[str, list[str]]]:
    """Each element matching ``selector``: its text and the fonts Chromium drew its glyphs with
    (DevTools' ``CSS.getPlatformFontsForNode``), to tell one font from a fallback mixed into a line."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
        out = []
        for node in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"]:
            fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
            text = cdp.send("DOM.getOuterHTML", {"nodeId": node})["outerHTML"]
            out.append((text[:120], [f["postScriptName"] for f in fonts]))
        return out
    finally:
        cdp.detach()


# Times a run in the page itself: the click event, the first pair shown, the whole batch shown (every
# seed's pair, no progress bar, Generate enabled), its two charts drawn after it, each stamped by a
# MutationObserver when the DOM changes.
# Playwright's wait_for_function polls every animation frame instead, which keeps a 2-core machine's
# browser drawing 60 frames a second beside the server (bench_app.py measures both ways).
_STAMPS = """(n) => { const t = window.__memlab_t = {};
  document.querySelector('#generate-btn').addEventListener('click', () => { t.click = t.click || performance.now(); },
                                                           {capture: true});
  const pairs = () => document.querySelectorAll('#pairs .thumbnail-item img, #pairs img');
  const check = () => {
    if (!t.click) return;
    const imgs = pairs();
    if (!t.first && imgs.length && imgs[0].getBoundingClientRect().width > 0) t.first = performance.now();
    if (t.first && !t.whole && imgs.length >= n && !document.querySelector('#generate-btn[disabled]') &&
        !document.querySelector('.progress-text, .eta-bar')) t.whole = performance.now();
    if (t.whole && !t.charts && document.querySelector('#seed-plot .js-plotly-plot') &&
        document.querySelector('#hist .js-plotly-plot')) { t.charts = performance.now(); obs.disconnect(); }
  };
  const obs = new MutationObserver(check);
  obs.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true}); }"""


def generate_in_browser(url: str, prompt: str, n_seeds: int, screenshot: str | Path | None = None,
                        timeout_ms: int = 120_000, on_click=None, on_done=None, read_s: float = 0.0,
                        on_ready=None, frame_polling: bool = False) -> dict:
    """Open the page and wait until it is ready (its first plot drawn: a visitor reads the page before
    typing, and a click during loading would time the page's own start-up); type a prompt, set the seed
    count, wait ``read_s`` more (a visitor's reading and typing: the page's last requests and drawing
    after load are then over, as they are before a person's click), click Generate (``on_click()`` just
    before, ``on_done()`` once the batch is in, ``on_ready()`` once the page is ready: a benchmark reads CPU
    counters); time the first pair, the whole batch and its charts from the click event, stamped in the page
    (``_STAMPS``; ``frame_polling``: timed from before Playwright's click by its waits, which poll every
    animation frame); wait for the table and the plot; return timings and what the page shows (a browser of
    its own unless the tests' shared one is running: ``browser_page``)."""
    with browser_page((1400, 1800), fresh=True) as page:
        t_load = time.perf_counter()
        page.goto(url, wait_until="load")
        page.locator("#generate-btn").wait_for(timeout=timeout_ms)
        page.locator("#hist .js-plotly-plot").first.wait_for(timeout=timeout_ms)
        ready = time.perf_counter() - t_load
        if on_ready:
            on_ready()
        page.get_by_label("Prompt").first.fill(prompt)
        seeds_box = page.locator("input[type=number]").first
        seeds_box.fill(str(n_seeds))
        seeds_box.press("Enter")
        time.sleep(read_s)
        if not frame_polling:
            page.evaluate(_STAMPS, n_seeds)
        if on_click:
            on_click()
        t0 = time.perf_counter()
        page.locator("#generate-btn").click()
        if frame_polling:
            page.locator("#pairs img").first.wait_for(timeout=timeout_ms)
            first = time.perf_counter() - t0
            page.wait_for_function(f"document.querySelectorAll('#pairs .thumbnail-item img, #pairs img').length >= "
                                   f"{n_seeds}", timeout=timeout_ms)
            page.wait_for_function("!document.querySelector('#generate-btn[disabled]') && "
                                   "!document.querySelector('.progress-text, .eta-bar')", timeout=timeout_ms)
            whole = time.perf_counter() - t0
            page.locator("#seed-plot .js-plotly-plot").first.wait_for(timeout=timeout_ms)
            charts = time.perf_counter() - t0
        else:
            page.wait_for_function("window.__memlab_t.charts", polling=250, timeout=timeout_ms)
            t = page.evaluate("window.__memlab_t")
            first, whole, charts = ((t[k] - t["click"]) / 1000 for k in ("first", "whole", "charts"))
        if on_done:
            on_done()
        page.locator("#hist .js-plotly-plot").first.wait_for(timeout=timeout_ms)
        page.locator("#seed-table table").first.wait_for(timeout=timeout_ms)
        headline = page.locator("#headline").inner_text()
        table_text = page.locator("#seed-table").inner_text()
        pairs = page.locator("#pairs img").count()
        seed_chart = page.locator("#seed-plot").inner_text()
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
    return {"ready_s": ready, "first_s": first, "whole_s": whole, "charts_s": charts, "headline": headline,
            "table_text": table_text, "pairs": pairs, "seed_chart": seed_chart}


def keyword_tab_in_browser(url: str, keyword: str | None = None, screenshot: str | Path | None = None,
                           timeout_ms: int = 60_000, related: str = "", viewport: tuple = (1400, 1600)) -> dict:
    """Open the Keyword clusters tab, pick a (prebuilt) keyword (and a related keyword: whose works), click Show;
    time until the size chart, the cluster table and the summary are on the page."""
    with browser_page(viewport, fresh=True) as page:
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#generate-btn").wait_for(timeout=timeout_ms)  # (the tabs drawn: a phone's in a menu)
        open_tab(page, "Keyword clusters")
        page.locator("#kw-btn").wait_for(timeout=timeout_ms)
        if keyword:
            box = page.locator("#kw-pick input").first
            fill_kept(page, box, keyword)  # the tab was just opened (fill_kept says why)
            box.press("Enter")
        if related:
            fill_kept(page, page.locator("#kw-related textarea").first, related)
        rank = page.locator("#kw-rank input").first
        before = rank.input_value()
        t0 = time.perf_counter()
        page.locator("#kw-btn").click()
        # the tab may already show another keyword: wait for this one's summary, table and chart
        kw = json.dumps(keyword or "")
        page.wait_for_function(f"document.querySelector('#kw-summary').innerText.includes({kw}) && "
                               f"document.querySelector('#kw-table table') !== null && "
                               f"[...document.querySelectorAll('#kw-plot .gtitle')].some(t => t.textContent.includes({kw}))",
                               timeout=timeout_ms)
        dt = time.perf_counter() - t0
        summary = page.locator("#kw-summary").inner_text()
        with contextlib.suppress(Exception):  # the rank box follows the keyword, after its results (if it changes)
            page.wait_for_function("([e, b]) => e.value !== b", arg=[rank.element_handle(), before], timeout=5_000)
        headers = page.eval_on_selector_all("#kw-table thead th", "els => els.map(e => e.innerText.trim())")
        after = rank.input_value()
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
    return {"render_s": dt, "summary": summary, "headers": headers, "rank": (before, after)}
