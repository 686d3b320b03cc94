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

class _Worker:
    """One long-lived daemon thread (started on first use) that runs queued calls in order, one at a
    time, each handing its result or exception to a Future."""

    def __init__(self, name: str):
        self.name, self.jobs, self.thread, self.lock = name, queue.SimpleQueue(), None, threading.Lock()

    def _work(self) -> None:
        while True:
            fut, fn, args, kwargs = self.jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to the caller, raised there
                fut.set_exception(e)

    def submit(self, fn, args, kwargs) -> Future:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self.thread.start()
        fut: Future = Future()
        self.jobs.put((fut, fn, args, kwargs))
        return fut


_compute, _side = _Worker("memlab-compute"), _Worker("memlab-beside")


def _after_fork_in_child() -> None:
    """A forked child (ZeroGPU forks a worker per GPU call) has no compute threads: start afresh."""
    global _compute, _side
    _compute, _side = _Worker("memlab-compute"), _Worker("memlab-beside")


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_thread() -> bool:
    """True on the compute thread."""
    return _compute.thread is not None and threading.current_thread() is _compute.thread


def submit(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on the compute thread (started on first use, a daemon); its Future.
    Calls run in order, one at a time."""
    return _compute.submit(fn, args, kwargs)


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the compute thread; its result, or its exception raised here (on that
    thread already: called directly)."""
    if on_thread():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def beside(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on the second long-lived thread (a daemon, started on first use);
    its Future."""
    return _side.submit(fn, args, kwargs)


def on_compute_thread(fn):
    """Decorator: every call of ``fn`` runs on the compute thread (see ``run``)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(fn, *args, **kwargs)
    return wrapper
