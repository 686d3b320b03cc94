"""The lesson in front of a class: N visitors show its step 1 (the duplicated probe on the lesson's 8 seeds) one
after another, as the app's queue serves them, on one ``Lab`` (one server). Rows kept, as the lesson runs them
(``compare_stream(keep=True)``: a row made once is shown to the next visitor at once), against every visitor's row
made anew (the baseline, the lesson before it kept rows), in the same run.

    python -m benchmarks.bench_class [--world assets/world] [--visitors 10]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--visitors", type=int, default=10)
    a = ap.parse_args(argv)
    from memlab.app.lesson import LESSON_SEEDS
    from memlab.service import Lab
    from memlab.world import World

    print(f"world {a.world} · lesson step 1 · {a.visitors} visitors one after another · seeds {LESSON_SEEDS}")
    totals = {}
    for keep in (False, True):
        lab = Lab(World.load(a.world), device="cpu")  # a server just started: nothing kept
        prompt = lab.lesson_prompts()["duplicated"]
        list(lab.stream_compare("a warm-up", LESSON_SEEDS[:1], []))
        seconds, first = [], None
        for _ in range(a.visitors):
            t0 = time.perf_counter()
            state = list(lab.stream_compare(prompt, LESSON_SEEDS, [], keep=keep))[-1]
            seconds.append(time.perf_counter() - t0)
            shown = [r["matches"][0]["row"] for r in state.records]
            assert first is None or shown == first, "a visitor saw other matches"
            first = shown
        totals[keep] = sum(seconds)
        print(f"{'rows kept (shipped)' if keep else 'made anew (baseline)':>22}: first visitor {seconds[0]:.2f} s, "
              f"the others median {1000 * statistics.median(seconds[1:]):.1f} ms, "
              f"the last visitor's wait {totals[keep]:.1f} s")
    print(f"the last visitor's wait: {totals[True]:.1f} s against {totals[False]:.1f} s "
          f"({totals[False] / totals[True]:.1f}x shorter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
