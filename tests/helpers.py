"""Helpers the tests and benchmarks share (``from tests.helpers import ...``): where things are, tiny
stand-ins for real models, synthetic images."""
import os
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
AIC = SHARED_DATA / "aic-public-domain" / "images"


def make_tiny_sscd(path: Path) -> Path:
    """A scripted stand-in for SSCD with its architecture's shape: trunk, GeM (p=3), linear, L2 norm."""
    import torch

    class TinySSCD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                                             torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU())
            self.fc = torch.nn.Linear(16, 24)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.trunk(x).clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
            return torch.nn.functional.normalize(self.fc(f), dim=1)

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(TinySSCD().eval()).save(str(path))
    return path


def trust(path: Path) -> Path:
    """Confirm a stand-in's checksum, as a user confirms a TorchScript file they trust."""
    from memlab.index import sha256

    os.environ["MEMLAB_TRUST_SHA256"] = ",".join(filter(None, [os.environ.get("MEMLAB_TRUST_SHA256"), sha256(path)]))
    return path


def assert_same(a, b, tol: float, where: str = "", loose: dict | None = None) -> None:
    """The same JSON-like answers: keys in the same order, strings, ints and booleans equal, floats within ``tol``
    (absolute and relative; ``loose``: a path part -> a wider tolerance for the values under it)."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, (where, a, b)
    if isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], tol, f"{where}.{k}", loose)
    elif isinstance(a, list):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, tol, f"{where}[{i}]", loose)
    elif isinstance(a, float) or isinstance(b, float):
        wide = [t for part, t in (loose or {}).items() if part in where]
        assert abs(a - b) <= (wide[0] if wide else tol + tol * abs(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def synthetic_images(n: int, size: int = 64, seed: int = 0) -> list:
    """Distinct images: random low-frequency colour fields (upsampled noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    return out


def clustered(n: int, d: int, planted: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 40 clusters (not uniform noise); the last ``planted`` rows are near-copies (cosine
    about 0.99) of as many earlier rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, 40, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    src = rng.choice(n - planted, planted, replace=False)
    x[n - planted:] = x[src] + 0.1 * rng.standard_normal((planted, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_in_process(capfd, argv):
    """``python -m memlab ARGV`` called in the test process (``memlab.cli.main``), as a finished process."""
    import subprocess

    from memlab.cli import main

    capfd.readouterr()
    code = main(list(argv))
    return subprocess.CompletedProcess(list(argv), code, *capfd.readouterr())


def prompts_run(monkeypatch, stop_after: int | None = None) -> list:
    """The prompts ``memlab run`` generates from here on (``runner.run_prompt`` counted), in a list that grows; with
    ``stop_after``, a Ctrl-C (KeyboardInterrupt) where the run starts one more prompt than that."""
    from memlab import runner

    real, ran = getattr(runner.run_prompt, "__wrapped__", runner.run_prompt), []  # (not an earlier call's counter)

    def counted(gen, index, d, prompt, *a, **kw):
        if stop_after is not None and len(ran) == stop_after:
            raise KeyboardInterrupt
        ran.append(prompt)
        return real(gen, index, d, prompt, *a, **kw)

    counted.__wrapped__ = real
    monkeypatch.setattr(runner, "run_prompt", counted)
    return ran


def run_coroutine(coro):
    """``asyncio.run(coro)`` on a thread of its own: the browser tests' shared Playwright (sync API) keeps an event
    loop running on the main thread for the rest of the session, where ``asyncio.run`` refuses to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
