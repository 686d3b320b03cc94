"""One thread for every model call of a long-lived server (the app's ``Lab``).

PyTorch's CPU kernels run on an OpenMP team that belongs to the thread that calls them. A web server
calls from whichever pool thread is free (Gradio runs each step of a streaming handler on the next
free one), so a process soon holds several teams; once they hold more threads than there are cores,
libgomp stops spin-waiting between parallel regions and every region pays a sleep and a wake-up. On
the 2-core machine, 8 seeds of the built-in world took 2.4-2.5 s from one thread and 3.0-3.6 s from a
second thread of the same process (``benchmarks/bench_app.py`` measures the page against
``run_prompt``). ``on_compute_thread`` runs a function on one long-lived thread instead; a call made
on that thread runs directly, so decorated methods may call each other.

``beside`` runs a function on a second long-lived thread: ``Generator.generate``'s head start, where the
first seeds of a batch run on their share of the cores while the rest run on the others (the two teams
together hold no more threads than there are cores).
"""
from __future__ import annotations

import functools
import os
import queue
import threading
from concurrent.futures import Future

_jobs: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start = threading.Lock()
_side_jobs: queue.SimpleQueue = queue.SimpleQueue()
_side: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """A forked child (ZeroGPU forks a worker per GPU call) has no compute threads: start afresh."""
    global _jobs, _thread, _start, _side_jobs, _side
    _jobs, _thread, _start = queue.SimpleQueue(), None, threading.Lock()
    _side_jobs, _side = queue.SimpleQueue(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _work(jobs: queue.SimpleQueue) -> None:
    while True:
        fut, fn, args, kwargs = jobs.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # handed to the caller, raised there
            fut.set_exception(e)


def on_thread() -> bool:
    """True on the compute thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on the compute thread (started on first use, a daemon); its Future.
    Calls run in order, one at a time."""
    global _thread
    with _start:
        if _thread is None:
            _thread = threading.Thread(target=_work, args=(_jobs,), name="memlab-compute", daemon=True)
            _thread.start()
    fut: Future = Future()
    _jobs.put((fut, fn, args, kwargs))
    return fut


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the compute thread; its result, or its exception raised here (on that
    thread already: called directly)."""
    if on_thread():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def beside(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on the second long-lived thread (a daemon, started on first use);
    its Future."""
    global _side
    with _start:
        if _side is None:
            _side = threading.Thread(target=_work, args=(_side_jobs,), name="memlab-beside", daemon=True)
            _side.start()
    fut: Future = Future()
    _side_jobs.put((fut, fn, args, kwargs))
    return fut


def on_compute_thread(fn):
    """Decorator: every call of ``fn`` runs on the compute thread (see ``run``)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(fn, *args, **kwargs)
    return wrapper
