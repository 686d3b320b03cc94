"""The folder check of an index build (``sources.check_images``: every listed image opened and decoded within the
caps, before the items are fixed) on ``CHECK_THREADS`` threads against one file after another, in the same run.

``--n`` JPEGs (``--size`` px square, noisy gradients at quality 90; one in 50 corrupt) are written to a temporary
folder, then checked both ways, alternating, ``--repeat`` times each (the page cache warm from writing them).

    python -m benchmarks.bench_check_images [--n 2000] [--size 512] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    from memlab import sources

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ramp = np.linspace(0, 200, a.size, dtype=np.float32)
        files = []
        for i in range(a.n):
            f = f"{i:06d}.jpg"
            if i % 50 == 7:
                (d / f).write_bytes(b"\xff\xd8 not a jpeg")
            else:
                base = ramp[None, :, None] + ramp[::-1, None, None] * (i % 3) / 2
                img = np.clip(base + rng.normal(0, 20, (a.size, a.size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f, quality=90)
            files.append(f)
        items = pd.DataFrame({"file": files, "id": range(a.n)})
        print(f"{a.n:,} JPEGs of {a.size} x {a.size} px; threads: 1 against {sources.CHECK_THREADS} "
              f"(CHECK_THREADS, this machine's {sources.os.cpu_count()} CPUs, at most 8)")
        times, answers = {1: [], sources.CHECK_THREADS: []}, {}
        for _ in range(a.repeat):
            for t in times:
                t0 = time.perf_counter()
                answers[t] = sources.check_images(d, items, lambda it, **k: it, threads=t)
                times[t].append(time.perf_counter() - t0)
        one, many = (statistics.median(times[t]) for t in times)
        same = answers[1][0].equals(answers[sources.CHECK_THREADS][0]) and \
            answers[1][1] == answers[sources.CHECK_THREADS][1]
        print(f"check: {one:.2f} s on one thread, {many:.2f} s on {sources.CHECK_THREADS} ({one / many:.2f}x), "
              f"median of {a.repeat}; {len(answers[1][0]):,} readable, {len(answers[1][1])} skipped; "
              f"{'the same rows and reasons' if same else 'ANSWERS DIFFER'}")


if __name__ == "__main__":
    main()
