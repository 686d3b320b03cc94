"""What a second thread's torch work costs the first (why the test process runs one torch thread and the app
one compute thread, ``memlab.compute``).

PyTorch's CPU kernels run on an OpenMP team that belongs to the calling thread, and a team lives as long as its
thread. Each case is a fresh process that times ``Generator.generate`` for the same prompt and seeds on the
built-in world (best of --repeat), from its main thread:

- ``alone``: no other thread has called torch;
- ``after a second thread``: a long-lived second thread (the app's compute thread, the in-process app of the
  tests) ran one short generation before and waits, idle;
- ``one thread, after a second thread``: the same, with ``torch.set_num_threads(1)`` set first;
- ``one thread, the second thread all``: one torch thread for the main thread, the second thread set back to
  every core (what the test process does: ``tests/conftest.py``); timed on both threads.

    python -m benchmarks.bench_omp_teams [--seeds 3] [--steps 30] [--repeat 3]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, queue, sys, threading, time
import torch
one_thread, second, all_there = sys.argv[1] == "1", sys.argv[2] != "0", sys.argv[2] == "all"
n, steps, repeat = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cores = torch.get_num_threads()
if one_thread:
    torch.set_num_threads(1)
import pandas as pd
from memlab.generate import Settings
from memlab.world import ASSETS_WORLD, World
w = World.load(ASSETS_WORLD)
gen = w.generator()
prompt = pd.read_csv(w.file("probes"))["prompt"].iloc[0]
st = Settings(steps=steps, guidance=float(w.defaults["guidance"]))
gen.generate(prompt, [0], "none", Settings(steps=2, guidance=st.guidance))  # warm-up, this thread
if second:
    jobs, done = queue.Queue(), threading.Event()
    def work():
        while True:
            jobs.get()()
    threading.Thread(target=work, daemon=True).start()
    def first():
        if all_there:
            torch.set_num_threads(cores)
        gen.generate(prompt, [0], "none", Settings(steps=2, guidance=st.guidance))
        done.set()
    jobs.put(first)
    done.wait()
def timed():
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        gen.generate(prompt, list(range(n)), "none", st)
        times.append(time.perf_counter() - t)
    return min(times)
out = {"best": timed(), "threads": torch.get_num_threads()}
if all_there:
    got, done = [], threading.Event()
    jobs.put(lambda: (got.append((timed(), torch.get_num_threads())), done.set()))
    done.wait()
    out["second"], out["second_threads"] = got[0]
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    env_args = [str(a.seeds), str(a.steps), str(a.repeat)]
    res = {}
    for name, one, second in (("alone", "0", "0"), ("after a second thread", "0", "1"),
                              ("one thread, after a second thread", "1", "1"),
                              ("one thread, the second thread all", "1", "all")):
        r = subprocess.run([sys.executable, "-c", CASE, one, second, *env_args], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                                           "PYTHONPATH": str(ROOT)})
        if r.returncode != 0:
            sys.exit(r.stderr[-2000:])
        res[name] = json.loads(r.stdout.strip().splitlines()[-1])
    base = res["alone"]["best"]
    print(f"built-in world, {a.seeds} seeds x {a.steps} steps, best of {a.repeat}, from the main thread:")
    for name, r in res.items():
        print(f"  {name:36s} {r['best']:6.2f} s  ({r['best'] / base:.2f}x alone; torch threads {r['threads']})")
        if "second" in r:
            print(f"  {'  ... on the second thread':36s} {r['second']:6.2f} s  ({r['second'] / base:.2f}x alone; "
                  f"torch threads {r['second_threads']})")


if __name__ == "__main__":
    main()
