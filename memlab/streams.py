"""How a ``Lab`` streams its runs to the page: generation in chunks (a head start for the first pair on a CPU,
one call a chunk on a GPU host), the mitigations compared row by row, and Stop. A run asked to stop (``stop``, a
``threading.Event`` the app sets when a visitor presses Stop or leaves) ends within a denoising step: the step
callback raises ``Stopped`` (``steps_until``), where Gradio alone would wait for the chunk in flight
(``benchmarks/bench_stop.py``). ``Streams`` is a part of ``Lab`` (``memlab.service``), on its world, index,
generator and descriptors.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Iterator, Sequence

from . import compute, gpu
from .compute import on_compute_thread
from .errors import Stopped
from .generate import Settings, check_prompt
from .headstart import HEAD_START, step_seconds, stream_plan
from .limits import KEPT_ROWS, MAX_CHUNK
from .records import APP_MATCHES, RunState, Summary
from .runner import generation_clique, run_prompt, summarize_records


def steps_until(stop):
    """``run_prompt``'s step callback for a run that may be stopped: it raises ``Stopped`` after the first
    denoising step that ends with ``stop`` set (None: no callback)."""
    if stop is None:
        return None

    def check(strategy, done, total):
        if stop.is_set():
            raise Stopped(f"stopped after {done} of {total} steps ({strategy})")
    return check


def _called(fn, *args) -> Iterator:
    """``fn(*args)`` as the one item of an iterator, called when it is first asked for."""
    yield fn(*args)


class Streams:
    """``Lab``'s streams (this module's docstring); ``_step_times`` is its record of how long steps take here,
    ``_kept_rows`` the rows it keeps (``compare_stream``'s ``keep``)."""

    _kept_lock = threading.Lock()

    def estimate_seconds(self, images: int, steps: int) -> float | None:
        """How long ``images`` at ``steps`` steps take here: from the batches this server timed (a step's
        fixed part and its part per image, ``headstart.step_seconds``; the last runs weigh most), else from
        the world's card (its 8 seeds timed at build); None when neither is known."""
        if self._step_times:
            return step_seconds(self._step_times, images) * steps
        m = (self.card() or {}).get("measured") or {}
        if m.get("seconds_8_seeds") and (m.get("settings") or {}).get("steps"):
            return m["seconds_8_seeds"] / (8 * m["settings"]["steps"]) * images * steps
        return None

    def _timed(self, seconds: float, images: int, steps: int) -> None:
        per, old = seconds / max(1, steps), self._step_times.get(images)
        self._step_times[images] = per if old is None else 0.5 * old + 0.5 * per

    def register_gpu(self) -> str:
        """Make this world reachable by the GPU host's functions (``memlab.gpu``); returns its key."""
        return gpu.register(self)

    def stream_generation(self, prompt, seeds, spec, settings, progress=None, descriptor=None,
                          stop=None) -> Iterator[RunState]:
        """How the app streams a batch: in few batches (each batch has a fixed cost), the first pair early where
        waiting for a whole chunk would be long (``stream_plan``: on a CPU, chunks of ``MAX_CHUNK``, the first one's
        first ``HEAD_START`` seeds beside the rest when it is expected to take over ``HEAD_START_AFTER_S``;
        elsewhere the first two seeds, then chunks of ``MAX_CHUNK``). On a GPU host (ZeroGPU) each chunk is one call
        with plain arguments and a duration for its work (``memlab.gpu``). ``stop``: ``generate_stream``'s."""
        key = self.register_gpu()

        def on_host(p, part, strategy, st, d):
            return gpu.generate_chunk_on_host(key, p, part, strategy, st.steps, st.guidance, d)
        first = self.estimate_seconds(min(len(seeds), MAX_CHUNK), settings.steps)
        cores = not gpu.ON_HOST and compute.run(self.generator.head_start_ok, MAX_CHUNK, HEAD_START)  # where it runs
        plan = stream_plan(cores, first, MAX_CHUNK) | ({"chunk_fn": on_host} if gpu.ON_HOST else {})
        yield from self.generate_stream(prompt, seeds, spec, settings, progress=progress, descriptor=descriptor,
                                        stop=stop, **plan)

    def stream_compare(self, prompt, seeds, specs, settings=None, progress=None, stop=None,
                       done: dict | None = None, keep: bool = False) -> Iterator[RunState]:
        """The comparison streamed row by row; on a GPU host (ZeroGPU) each row is one call (``memlab.gpu``).
        ``stop``, ``done`` and ``keep``: ``compare_stream``'s."""
        key = self.register_gpu()

        def on_host(p, part, strategy, st, d):
            return gpu.generate_chunk_on_host(key, p, part, strategy, st.steps, st.guidance, d)
        yield from self.compare_stream(prompt, seeds, specs, settings, progress=progress,
                                       chunk_fn=on_host if gpu.ON_HOST else None, done=done, stop=stop, keep=keep)

    def _kept_row(self, key, row=None):
        """A kept row of ``compare_stream(keep=True)``, (its [(record, image)], its statistics), or None where none
        is; with ``row``, keep it among the ``KEPT_ROWS`` latest used."""
        with self._kept_lock:
            kept = self._kept_rows
            if row is None:
                row = kept.pop(key, None)
            if row is not None:
                kept[key] = row  # the latest used last
                while len(kept) > KEPT_ROWS:
                    kept.pop(next(iter(kept)))
            return row

    def generate_stream(self, prompt: str, seeds: Sequence[int], strategy: str = "none",
                        settings: Settings | None = None, chunk: int = 2, progress=None,
                        descriptor: str | None = None, chunk_fn=None, then: int | None = None,
                        head: int = 0, stop=None) -> Iterator[RunState]:
        """Generate and match the seeds in chunks, yielding the growing run after each: the first ``chunk``
        seeds, then chunks of ``then`` (default ``chunk``). ``head``: the first chunk's first ``head`` seeds
        get a head start (``Generator.generate``) and are yielded as soon as they are matched, before the
        rest of that chunk (the app on a CPU, for a long chunk: the first pair early, at a cost to the whole
        batch, ``HEAD_START_AFTER_S``).
        ``chunk_fn(prompt, seeds, strategy, settings, descriptor)`` does one chunk (default
        ``generate_chunk``; the app passes the GPU host's, ``memlab.gpu``, whose chunks have no head).
        ``stop`` (a ``threading.Event``): once set, the run ends within a denoising step (``steps_until``; a
        GPU host's chunk, after it), keeping the seeds already yielded."""
        gen = self.generator
        prompt, warning = check_prompt(prompt, gen.tokenizer)
        settings = settings or self.settings()
        state = RunState(prompt=prompt, warning=warning, requested=len(seeds))
        desc = self.get_descriptor(descriptor)
        thr = self.threshold(desc.name)
        total = len(seeds)
        run_chunk = chunk_fn or (lambda p, part, st, se, d: self.generate_chunk(p, part, st, se, d, stop=stop))
        i, size = 0, chunk
        while i < total and not (stop is not None and stop.is_set()):
            part = list(seeds[i:i + size])
            t0 = time.perf_counter()
            if i == 0 and head and chunk_fn is None:
                pieces = self._head_first(prompt, part, strategy, settings, desc.name, head, stop)
            else:
                pieces = _called(run_chunk, prompt, part, strategy, settings, desc.name)
            i, size = i + len(part), then or chunk
            while True:
                try:
                    piece = next(pieces, None)
                except Stopped:
                    return
                if piece is None:
                    break
                for r, im in piece:
                    state.records.append(r)
                    state.images.append(im)
                if len(state.records) == i:  # the chunk is done: how long a chunk takes here (estimate_seconds)
                    self._timed(time.perf_counter() - t0, len(part), settings.steps)
                last = state.records[-1]
                stats = summarize_records(state.records, thr, self.world.object_classifier())
                if len(state.records) == total > 1:  # the run's last update: Carlini et al.'s clique of them all
                    stats.update(self.generation_clique(state.images, desc.name, stats["detections_mean"]))
                summary = Summary(**stats, prompt=prompt,
                                  mitigation=last["mitigation"], descriptor=last["descriptor"],
                                  seeds=[r["seed"] for r in state.records]).to_dict()
                state.summaries = [summary]
                if progress:
                    progress(len(state.records), total)
                yield state

    @gpu.host_work(lambda self, images, *a, **kw: (len(images), 1))
    @on_compute_thread
    def generation_clique(self, images, descriptor: str, detections_mean: dict | None) -> dict:
        """``runner.generation_clique`` of a finished run's (or row's) images, embedded again by ``descriptor``
        (a chunk's vectors stay where it was matched, a GPU host's included): once a run, when its last seed is in."""
        d = self.get_descriptor(descriptor)
        return generation_clique(d.embed(list(images)), d, detections_mean)

    @on_compute_thread
    def generate_chunk(self, prompt: str, seeds: Sequence[int], strategy: str, settings: Settings,
                       descriptor: str | None = None, stop=None) -> list:
        """Generate and match ``seeds``: [(seed record, PIL image)] in seed order (``Stopped`` once ``stop``
        is set, within a denoising step)."""
        return self._chunk(prompt, seeds, strategy, settings, descriptor, stop=stop)

    def _chunk(self, prompt, seeds, strategy, settings, descriptor=None, on_seed=None, head: int = 0,
               stop=None) -> list:
        check = steps_until(stop)
        if check:  # a chunk that waited on the compute thread while its run was stopped does not start
            check(strategy, 0, settings.steps)
        pairs = []

        def keep(r, im):
            pairs.append((r, im))
            if on_seed:
                on_seed(r, im)
        run_prompt(self.generator, self.index, self.get_descriptor(descriptor), prompt, list(seeds), [strategy],
                   settings, out_dir=None, k=APP_MATCHES, on_seed=keep, head=head, aligner=self.world.aligner(),
                   judge=self.world.object_classifier(), progress=check)
        return pairs

    def _head_first(self, prompt, seeds, strategy, settings, descriptor, head: int, stop=None) -> Iterator[list]:
        """One chunk on the compute thread with a head start: yields the first ``head`` [(seed record, PIL
        image)] as soon as they are matched, then the rest (the chunk's error is raised here)."""
        got: queue.SimpleQueue = queue.SimpleQueue()
        pairs: list = []

        def on_seed(r, im):
            pairs.append((r, im))
            if len(pairs) == head:
                got.put(list(pairs))
        fut = compute.submit(self._chunk, prompt, seeds, strategy, settings, descriptor, on_seed, head, stop)
        fut.add_done_callback(lambda f: got.put(None))
        first = got.get() or []
        if first:
            yield first
        fut.result()
        yield pairs[len(first):]

    def compare(self, prompt: str, seeds: Sequence[int], strategies: Sequence[str],
                settings: Settings | None = None, progress=None, descriptor: str | None = None) -> RunState:
        """``none`` and each strategy on the same seeds (the finished ``compare_stream``)."""
        state = None
        for state in self.compare_stream(prompt, seeds, strategies, settings, progress, descriptor):
            pass
        return state

    def compare_stream(self, prompt: str, seeds: Sequence[int], strategies: Sequence[str],
                       settings: Settings | None = None, progress=None, descriptor: str | None = None,
                       chunk_fn=None, done: dict | None = None, stop=None, keep: bool = False) -> Iterator[RunState]:
        """``none`` and each strategy on the same seeds, one strategy (a row of the A/B grid) at a time;
        yields the growing comparison after each row. Each strategy's summary is ``run_prompt``'s, with
        its change vs none. ``chunk_fn`` as in ``generate_stream`` (the GPU host's, one call a row).
        ``done``: {strategy: [(record, image), ...]} rows already made for this prompt, seeds, settings and
        descriptor (the lesson's step 1 is step 3's first row), used instead of generating them again.
        ``keep``: a row made here is kept, with its statistics, for the server's next run of the same prompt, seeds,
        strategy, settings and descriptor, which shows it at once, running no model (they give the same images: the
        lesson, whose steps every visitor runs alike; ``KEPT_ROWS``). ``stop``: as in ``generate_stream`` (the rows
        already yielded stay)."""
        from .runner import change_vs_none

        gen = self.generator
        prompt, warning = check_prompt(prompt, gen.tokenizer)
        strategies = ["none"] + list(dict.fromkeys(s for s in strategies if s != "none"))
        settings = settings or self.settings()
        desc = self.get_descriptor(descriptor)
        thr = self.threshold(desc.name)
        state = RunState(prompt=prompt, warning=warning, requested=len(seeds) * len(strategies))
        run_row = chunk_fn or (lambda p, part, st, se, d: self.generate_chunk(p, part, st, se, d, stop=stop))
        for j, strategy in enumerate(strategies):
            if stop is not None and stop.is_set():
                return
            kept = (prompt, tuple(seeds), strategy, dataclasses.astuple(settings), desc.name) if keep else None
            rows, stats = (self._kept_row(kept) if kept else None) or ((done or {}).get(strategy), None)
            if rows is None:
                t0 = time.perf_counter()
                try:
                    rows = run_row(prompt, list(seeds), strategy, settings, desc.name)
                except Stopped:
                    return
                self._timed(time.perf_counter() - t0, len(seeds), settings.steps)
            recs = [r for r, _ in rows]
            state.records += recs
            state.images += [im for _, im in rows]
            if stats is None:
                stats = summarize_records(recs, thr, self.world.object_classifier())
                if len(recs) > 1:  # each row's own clique (Carlini et al.)
                    stats.update(self.generation_clique([im for _, im in rows], desc.name, stats["detections_mean"]))
                if kept:
                    self._kept_row(kept, (rows, stats))
            summary = Summary(**stats, prompt=prompt, mitigation=recs[0]["mitigation"],
                              descriptor=recs[0]["descriptor"], seeds=list(seeds)).to_dict()
            if state.summaries:
                summary["change_vs_none"] = change_vs_none(summary, state.summaries[0], recs, state.records[:len(seeds)])
            state.summaries.append(summary)
            if progress:
                progress((j + 1) * len(seeds), len(strategies) * len(seeds))
            yield state
