"""The CPU head start beside ``Generator.generate``: the first seeds of a batch run as a batch of their own on
a second thread, with their share of the cores, so the app shows its first pair early, at some cost to the
whole batch (``benchmarks/bench_streaming.py``); ``stream_plan`` says when the app pays it."""
from __future__ import annotations

import threading

import numpy as np

from . import compute

HEAD_START = 1  # seeds the first update shows on a CPU when it has a head start (``stream_plan``)
# A head start costs the whole batch time on a CPU: the head batch pays a UNet step's fixed part again (8 seeds on
# the 2-core machine: 1.12x one batch, ``benchmarks/bench_streaming.py``). The app pays it only when the first
# chunk would keep a visitor waiting longer than this without a picture (``stream_plan``).
HEAD_START_AFTER_S = 5.0


def stream_plan(head_start_ok: bool, first_chunk_s: float | None, chunk: int) -> dict:
    """How ``Lab.stream_generation`` splits a batch (``generate_stream``'s arguments): where a head start can
    run (``head_start_ok``: a CPU with cores to share, not a GPU host), chunks of ``chunk`` seeds, the first
    with a head start for ``HEAD_START`` seeds when that chunk is expected to take over ``HEAD_START_AFTER_S``
    (``first_chunk_s``; None: not known yet, so a head start); elsewhere the first two seeds, then chunks of
    ``chunk``."""
    if not head_start_ok:
        return {"chunk": 2, "then": chunk}
    if first_chunk_s is None or first_chunk_s > HEAD_START_AFTER_S:
        return {"chunk": chunk, "head": HEAD_START}
    return {"chunk": chunk}


def step_seconds(step_times: dict, images: int) -> float:
    """Seconds a step of a batch of ``images`` takes, from the steps timed here ({images: seconds}): the line
    through them (a fixed part per step plus a part per image) where two batch sizes were timed, else the
    one timed, in proportion to its images. The fixed part is why a proportional estimate from a small batch
    overstates a larger one."""
    n = np.array(sorted(step_times), float)
    t = np.array([step_times[k] for k in sorted(step_times)], float)
    if len(n) < 2:
        return float(t[0] / n[0] * images)
    slope, fixed = np.polyfit(n, t, 1)
    if slope <= 0 or fixed < 0:  # noise: fall back on the nearest batch timed, in proportion
        k = int(np.argmin(abs(n - images)))
        return float(t[k] / n[k] * images)
    return float(fixed + slope * images)


def head_start_ok(gen, n: int, head: int) -> bool:
    """Whether a head start of ``head`` seeds in a batch of ``n`` runs beside the rest: on a CPU with
    more than one thread (a GPU runs a batch at once; one core has nothing to share)."""
    import torch

    return 0 < head < n and not gen.device.startswith("cuda") and torch.get_num_threads() > 1


def head_start(gen, prompt, seeds, head, strategy, settings, h, w, done_steps, on_batch):
    """The first ``head`` seeds as a batch of their own on a second thread (``compute.beside``; a pipeline
    of their own: a scheduler holds step state) with their share of the cores (one of two), the rest on
    this thread with the other cores until the head batch is done and handed to ``on_batch``, then with
    every core (the process's threads never outnumber its cores).

    On a CPU a UNet step costs a fixed part whatever the batch, which a second batch after the first
    pays again; two batches side by side, each on its own cores, waste less than one batch across all
    of them. For the app's 8 seeds on 2 cores (``bench_streaming.py --in-process-only``): chunks of 2
    then 6 took 1.21x-1.28x one batch of 8, this head start 1.06x-1.12x (measured in different sessions),
    its first seed ready as early."""
    import torch

    from .errors import Stopped

    threads = torch.get_num_threads()
    mine = max(1, min(threads - 1, round(threads * head / len(seeds))))  # the head batch's threads
    head_done, rest_failed = threading.Event(), threading.Event()
    head_steps = [0]
    side = side_pipe(gen)

    def head_step(i):
        head_steps[0] = i
        if rest_failed.is_set():  # the rest stopped (or failed): the head goes no further than its step
            raise Stopped("the rest of the batch ended")

    def run_head():
        torch.set_num_threads(mine)
        try:
            out = gen._batch(prompt, seeds[:head], strategy, settings, h, w, head_step, pipe=side)
            if on_batch:
                on_batch(out)
            return out
        finally:
            head_done.set()

    def rest_step(i):
        if head_done.is_set() and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        done_steps(head_steps[0] * head + i * (len(seeds) - head))

    fut = compute.beside(run_head)
    torch.set_num_threads(threads - mine)
    try:
        rest = gen._batch(prompt, seeds[head:], strategy, settings, h, w, rest_step)
    except BaseException:  # a run stopped mid-batch (or a failure): the head stops too, before the next work starts
        rest_failed.set()
        head_done.wait()
        raise
    finally:
        torch.set_num_threads(threads)
    first = fut.result()
    if on_batch:
        on_batch(rest)
    return first + rest


def side_pipe(gen):
    """The pipeline's models with a scheduler of their own (made once per scheduler)."""
    import copy

    if getattr(gen, "_side", None) is None or gen._side[0] is not gen.pipe.scheduler:
        side = copy.copy(gen.pipe)
        side.scheduler = copy.deepcopy(gen.pipe.scheduler)
        gen._side = (gen.pipe.scheduler, side)
    return gen._side[1]
