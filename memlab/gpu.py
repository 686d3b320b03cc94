"""The app's GPU work as functions whose arguments pickle, for hosts that run it in another process
(Hugging Face ZeroGPU: ``@spaces.GPU`` forks a worker per call, passes the arguments across and caps the
call at ``duration`` seconds; docs/methods.md and docs/app.md, "Hosting").

No ``Lab`` crosses the boundary: a world is named by its key (``register`` in the serving process; a
forked worker inherits the registry), settings by plain numbers, and results come back as records (dicts)
and PIL images. Each call's ``duration`` is computed from its work (images x steps) with an allowance
per image-step, so a long request asks for the time it needs instead of being cut at ZeroGPU's 60 s
default, and a request over the 5-minute cap is refused up front with a message that says what to change.
CUDA may start only inside such a call, so every model the app runs is one: a generation's chunks
(``generate_chunk``) and the ``Lab``'s other model work (``host_work``: the method called by name). Off
ZeroGPU (no ``spaces`` module, or ``spaces.GPU`` a no-op) the functions run in-process.
"""
from __future__ import annotations

import functools
import os

from .errors import MemlabError

ZERO_GPU_CAP_S = 300  # ZeroGPU's longest call (5 minutes)
# Allowance per image-step and per call, configurable because GPUs differ; benchmarks/bench_gpu.py
# prints the measured time per image-step of SD v1.4's architecture on the GPU it runs on.
SECONDS_PER_IMAGE_STEP = float(os.environ.get("MEMLAB_GPU_SECONDS_PER_STEP", 0.1))
CALL_OVERHEAD_S = float(os.environ.get("MEMLAB_GPU_OVERHEAD_S", 20))

_LABS: dict = {}


def register(lab) -> str:
    """Make a Lab reachable by key from GPU functions (call in the serving process, before serving)."""
    key = str(lab.world.path or lab.world.model)
    _LABS[key] = lab
    return key


def _lab(key: str):
    if key not in _LABS:
        raise MemlabError(f"world {key!r} is not served here")
    return _LABS[key]


def duration(images: int, steps: int) -> int:
    """Seconds to ask the host for: the call overhead plus the allowance per image-step."""
    return int(round(CALL_OVERHEAD_S + SECONDS_PER_IMAGE_STEP * max(1, images) * max(1, steps)))


def check_duration(images: int, steps: int, what: str = "this request") -> int:
    """``duration``, refused with a clear message when it is over the host's cap."""
    d = duration(images, steps)
    if d > ZERO_GPU_CAP_S:
        most = max(1, int((ZERO_GPU_CAP_S - CALL_OVERHEAD_S) / (SECONDS_PER_IMAGE_STEP * max(1, steps))))
        raise MemlabError(f"{what} needs about {d} s of GPU time ({images} images x {steps} steps), over the "
                          f"host's {ZERO_GPU_CAP_S} s limit per call: use fewer steps, or at most {most} images "
                          f"at {steps} steps")
    return d


def generate_chunk(key: str, prompt: str, seeds: list, strategy: str, steps: int, guidance: float,
                   descriptor: str | None = None) -> list:
    """Generate and match ``seeds`` for a prompt in the world ``key``: [(seed record, PIL image)]."""
    from .generate import Settings

    return lab_call(key, "generate_chunk", (prompt, list(seeds), strategy,
                                            Settings(steps=int(steps), guidance=float(guidance)), descriptor), {}, 0, 0)


def _generate_duration(key, prompt, seeds, strategy, steps, guidance, descriptor=None) -> int:
    # a mitigation may add work (Wen et al.'s optimizes the prompt embedding first): twice the allowance
    return check_duration(len(seeds) * (2 if strategy and strategy != "none" else 1), steps)


def _on_zero_gpu() -> bool:
    try:
        import spaces  # type: ignore  # noqa: F401
    except ImportError:
        return False
    return True


ON_HOST = _on_zero_gpu()  # the app sends its GPU work through the functions below when True


def on_host(fn, duration_fn):
    """``fn`` as the host runs GPU work: ``spaces.GPU(duration=duration_fn)`` on ZeroGPU, else ``fn``."""
    if not ON_HOST:
        return fn
    import spaces  # type: ignore

    return spaces.GPU(duration=duration_fn)(fn)


generate_chunk_on_host = on_host(generate_chunk, _generate_duration)


_INSIDE = [0]  # host calls this process is running: in a forked worker, all of its work is inside one


def lab_call(key: str, method: str, args: tuple, kwargs: dict, images: int, steps: int):
    """``Lab.<method>(*args, **kwargs)`` of the world ``key`` as one GPU call (``host_work``); ``images`` and
    ``steps`` size its duration."""
    _INSIDE[0] += 1
    try:
        return getattr(_lab(key), method)(*args, **kwargs)
    finally:
        _INSIDE[0] -= 1


def _lab_call_duration(key, method, args, kwargs, images, steps) -> int:
    return check_duration(images, steps, method.replace("_", " "))


lab_call_on_host = on_host(lab_call, _lab_call_duration)


def host_work(work):
    """A ``Lab`` method that runs a model. On a GPU host (ZeroGPU) CUDA may not start in the serving process,
    so there, called outside a GPU call, the method runs as one (``lab_call_on_host``; its arguments and result
    pickle; ``work(lab, *args, **kwargs)`` gives the (images, steps) that size its duration); elsewhere as it is.
    It keeps nothing on the ``Lab`` (a forked worker's changes are lost): its caller keeps what it returns."""
    def decorate(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            if not ON_HOST or _INSIDE[0]:
                return fn(self, *args, **kwargs)
            images, steps = work(self, *args, **kwargs)
            return lab_call_on_host(register(self), fn.__name__, args, kwargs, int(images), int(steps))
        return call
    return decorate
