"""The CPU head start beside ``Generator.generate``: the first seeds of a batch run as a batch of their own on
a second thread, with their share of the cores, so the app shows its first pair early at almost no cost
to the whole batch (``benchmarks/bench_streaming.py``)."""
from __future__ import annotations

import threading

from . import compute


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
    then 6 took 1.21x one batch of 8, this head start 1.06x, its first seed ready as early."""
    import torch

    threads = torch.get_num_threads()
    mine = max(1, min(threads - 1, round(threads * head / len(seeds))))  # the head batch's threads
    head_done = threading.Event()
    head_steps = [0]
    side = side_pipe(gen)

    def run_head():
        torch.set_num_threads(mine)
        try:
            out = gen._batch(prompt, seeds[:head], strategy, settings, h, w,
                             lambda i: head_steps.__setitem__(0, i), pipe=side)
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
