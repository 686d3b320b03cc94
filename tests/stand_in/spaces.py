"""A stand-in for Hugging Face's ``spaces`` package (ZeroGPU), for tests: ``spaces.GPU(duration=...)``
checks what ZeroGPU enforces. The arguments and the result must pickle (they cross a process boundary
there; here they make a round trip through pickle), ``duration`` (seconds, or a function of the call's
arguments) must be at most 300, and a call that runs longer than its duration is aborted. Every call is
appended to the JSON-lines file $SPACES_LOG (function, duration asked, seconds taken); with $SPACES_GUARD set, a
model that runs outside a call raises (``guard``)."""
from __future__ import annotations

import functools
import json
import os
import pickle
import time

CAP_S = 300
_ACTIVE = [0]  # calls in progress


def guard() -> None:
    """ZeroGPU's rule where the host has no GPU to enforce it: CUDA may start only inside a GPU call (outside one,
    ZeroGPU raises the error below). Here every memlab model is on the CPU, so any module's forward pass counts:
    one outside a call raises (on with $SPACES_GUARD, for a process that serves as a Space does)."""
    import torch

    def check(module, args):
        if not _ACTIVE[0]:
            raise RuntimeError("CUDA must not be initialized in the main process on Spaces with Stateless GPU "
                               f"environment (stand-in: {type(module).__name__} ran outside a @spaces.GPU call)")
    torch.nn.modules.module.register_module_forward_pre_hook(check)


class GPUTimeout(RuntimeError):
    pass


def GPU(fn=None, duration=60):  # noqa: N802 - the real package's name
    def decorate(f):
        @functools.wraps(f)
        def call(*args, **kwargs):
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))  # must pickle, like a fork's arguments
            asked = duration(*args, **kwargs) if callable(duration) else duration
            if not 0 < asked <= CAP_S:
                raise ValueError(f"duration {asked} is outside ZeroGPU's (0, {CAP_S}] s")
            t0 = time.perf_counter()
            _ACTIVE[0] += 1
            try:
                out = f(*args, **kwargs)
            finally:
                _ACTIVE[0] -= 1
            took = time.perf_counter() - t0
            if os.environ.get("SPACES_LOG"):
                with open(os.environ["SPACES_LOG"], "a") as log:
                    log.write(json.dumps({"fn": f.__name__, "duration": asked, "took": took}) + "\n")
            if took > asked:
                raise GPUTimeout(f"GPU task aborted: {took:.1f} s is over the {asked} s asked")
            return pickle.loads(pickle.dumps(out))
        return call
    return decorate(fn) if callable(fn) else decorate


if os.environ.get("SPACES_GUARD"):
    guard()
