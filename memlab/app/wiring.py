"""How the page wires an event: errors a visitor can act on shown as messages (the server keeps serving),
results cleared before a new request, and each event's API name."""
from __future__ import annotations

import functools
import inspect
import logging
import threading

import anyio
import gradio as gr

from ..errors import MemlabError
from ..mitigations import MITIGATIONS

log = logging.getLogger("memlab.app")


MITIGATION_CHOICES = [m for m in MITIGATIONS if m != "none"] + ["jain:mode=dynamic"]  # Jain's two transitions


def errors(fn, message=None):
    """MemlabError -> gr.Error, so the message shows in the page and the server keeps serving; with
    ``message`` (text -> the event's outputs) the refusal is shown where the results go instead (no red
    badge over them). Anything else is a bug: its traceback goes to the server's log, the caller gets one
    line without it."""
    def translate(e: BaseException):
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, MemlabError):
            return gr.Error(str(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"memlab hit an unexpected error ({type(e).__name__}) and logged it; the app keeps "
                        f"serving: try again, or change the input")

    if _is_gen(fn):
        @functools.wraps(fn)
        def wrapped_gen(*a, **kw):
            try:
                yield from fn(*a, **kw)
            except MemlabError as e:
                if message is None:
                    raise translate(e) from None
                yield message(f"⚠️ **{e}**")
            except Exception as e:  # noqa: BLE001 - see translate
                raise translate(e) from None
        return wrapped_gen

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except MemlabError as e:
            if message is None:
                raise translate(e) from None
            return message(f"⚠️ **{e}**")
        except Exception as e:  # noqa: BLE001 - see translate
            raise translate(e) from None
    return wrapped


def page_and_api(btn: gr.Button, fn, inputs: list, outputs: list, api_name: str | None, message, cleared: tuple,
                 progress_on=None, js: str | None = None):
    """``btn``'s event for the page, where a refused request reads as a message in place of its results
    (``message``: the text -> the outputs), and, under ``api_name``, the same handler on a hidden button for
    API callers, who get the refusal as an error. Returns the page's event (Stop cancels it)."""
    page = run_button(btn, errors(fn, message), inputs, outputs, None, cleared, progress_on, js)
    if api_name:
        run_button(gr.Button(visible=False), errors(fn), inputs, outputs, api_name, cleared)
    return page


def _is_gen(fn):
    return inspect.isgeneratorfunction(fn)


_DONE = object()
_RUNS: dict[str, set[threading.Event]] = {}  # a page's session -> the stop events of its runs in flight
_RUNS_LOCK = threading.Lock()


def stoppable(fn):
    """A streaming handler ``fn(*inputs, stop=...)`` (a generator) as Gradio runs it: each update is taken from
    ``fn`` on a worker thread by an async generator that lets go of it when the event is cancelled (Stop's
    ``cancels``, an API caller's cancel) and sets ``stop`` (a ``threading.Event``), which the run checks after
    every denoising step (``memlab.streams``). Gradio alone waits for a synchronous generator's update in
    flight, a whole chunk of seeds, before it lets the next request in. The run is also filed under its page's
    session, whose closing stops it (``stop_session``). Gradio sees ``fn``'s parameters without ``stop`` and
    with a last one, ``request`` (``gr.Request``), which Gradio fills."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "stop"]
    if "request" in sig.parameters or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        raise TypeError(f"{fn.__name__}: stoppable takes positional parameters and adds `request` itself")
    exposed = sig.replace(parameters=params + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                                 default=None, annotation=gr.Request)])

    async def driven(*a, **kw):
        bound = exposed.bind(*a, **kw)
        session = getattr(bound.arguments.pop("request", None), "session_hash", None)
        stop = threading.Event()
        updates = fn(*bound.args, stop=stop, **bound.kwargs)
        if session:
            with _RUNS_LOCK:
                _RUNS.setdefault(session, set()).add(stop)
        try:
            while (update := await anyio.to_thread.run_sync(next, updates, _DONE, abandon_on_cancel=True)) \
                    is not _DONE:
                yield update
        finally:
            stop.set()  # cancelled, closed or done: a chunk in flight ends at its next step
            with _RUNS_LOCK:
                runs = _RUNS.get(session, set())
                runs.discard(stop)
                if not runs:
                    _RUNS.pop(session, None)

    driven.__name__, driven.__qualname__, driven.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    driven.__signature__, driven.__annotations__ = exposed, {"request": gr.Request}
    return driven


def stop_session(request: gr.Request) -> None:
    """When a page is closed or reloaded (``Blocks.unload``), its runs end at their next denoising step. Gradio
    stops sending a closed page's updates but neither cancels its event nor closes the handler, so the chunk
    in flight (up to 8 seeds; minutes for Stable Diffusion on a CPU) would run on for nobody."""
    session = getattr(request, "session_hash", None)
    with _RUNS_LOCK:
        runs = _RUNS.pop(session, set()) if session else set()
    for stop in runs:
        stop.set()


def run_button(btn: gr.Button, fn, inputs: list, outputs: list, api_name: str | None, cleared: tuple,
               progress_on=None, js: str | None = None):
    """``btn`` runs ``fn``, after clearing the results a new request invalidates: if the request is refused, its
    message never stands over the previous request's results. A streaming ``fn`` (a generator) clears them in its
    own first update, the moment its request starts; any other ``fn`` after a clearing event of its own (a second
    round trip before the work starts: 0.1 s on the 2-core machine, ``benchmarks/bench_streaming.py``); one that
    takes ``stop`` is ``stoppable``. The API event (``api``) is ``fn`` (a generator's first update is then
    ``cleared``; ``api_name`` None: none). Returns that event (Stop cancels it). ``progress_on``: the one output
    that shows the progress bar (default all of them)."""
    api_name = api_name or False
    if _is_gen(fn):
        @functools.wraps(fn)
        def cleared_first(*a, **kw):
            yield cleared
            yield from fn(*a, **kw)
        handler = stoppable(cleared_first) if "stop" in inspect.signature(fn).parameters else cleared_first
        return btn.click(handler, inputs, outputs, api_name=api_name, show_progress_on=progress_on, js=js)
    clear = btn.click(lambda: cleared, None, outputs, api_name=False, queue=False, js=js)
    return clear.then(fn, inputs, outputs, api_name=api_name, show_progress_on=progress_on)


def scroll_first(selector: str) -> str:
    """A click's browser-side first step: bring ``selector`` (where the results and their progress appear) to
    the top of the screen, so a visitor sees a run start without scrolling (the results once began a screen
    below the button, and nothing seemed to happen). It hands the event's inputs on unchanged, and runs in the
    same event, so the page moves before the first result can arrive."""
    return (f"(...args) => {{ const el = document.querySelector({selector!r}); "
            f"if (el) el.scrollIntoView({{block: 'start', behavior: 'instant'}}); return args; }}")
