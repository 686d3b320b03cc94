"""The app on the built-in world, measured from outside as users meet it:

1. resident memory of the serving process (after start-up, and after a generation);
2. a real Chromium session: 8 seeds, no mitigation, a full-duplication probe prompt: once the page is
   ready (its first plot drawn) and a visitor's 3 s of reading and typing, time from the click to the first
   generation with its match, to the whole batch, and to its two charts (drawn after it), stamped in the
   page (median of 3 rounds; a click the instant the page is ready is timed too, and the same run timed by
   Playwright's polling waits), against the same request through the API with no browser, and against
   ``run_prompt`` for the same prompt and seeds in this process, once after each round's page runs (the
   ratio is what streaming to a page costs: the ratio of the medians, and the median of each round's
   page over its own run_prompt, which a machine that slows or speeds up between rounds moves less); the
   replication % shown against the one `memlab run` prints for the same prompt and seeds;
3. 8 concurrent gradio_client callers x 3 requests each: answered / failed, p50 / p95 latency.

    python -m benchmarks.bench_app [--world DIR] [--rounds 3] [--callers 8] [--requests 3] [--skip-browser]
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


READ_S = 3.0  # a visitor's reading and typing between the page being ready and the click


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, MiB."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                     text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def run_prompt_timer(world, prompt: str, n: int):
    """A function timing one ``run_prompt`` for seeds 0..n-1 on the world, loaded as ``memlab run`` loads it
    (every model call on this one thread; no ``Lab``, whose calls run on a thread of their own), with the
    app's number of matches per seed; model loaded and warmed first. Called between the page's runs, so a
    machine that slows or speeds up meanwhile moves both sides of the ratio."""
    from memlab.generate import Settings
    from memlab.match import descriptor_for_index
    from memlab.runner import run_prompt
    from memlab.service import APP_MATCHES

    index = world.index()
    descriptor = descriptor_for_index(index)
    gen = world.generator()
    st = Settings(steps=int(world.defaults["steps"]), guidance=float(world.defaults["guidance"]))
    run_prompt(gen, index, descriptor, prompt, [0, 1], ["none"], st, k=APP_MATCHES)  # warm-up

    def once() -> float:
        t = time.perf_counter()
        run_prompt(gen, index, descriptor, prompt, list(range(n)), ["none"], st, k=APP_MATCHES)
        return time.perf_counter() - t
    return once


def time_api(url: str, prompt: str, n: int, world) -> float:
    """Median wall time of the app's /generate for seeds 0..n-1 through gradio_client: the server's whole
    streamed run (chunks, matching, every update built and sent) without a browser drawing it."""
    import numpy as np
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=False)  # the server's time, not the client's downloads
    args = (prompt, n, "", [], 4, 0.1, int(world.defaults["steps"]), float(world.defaults["guidance"]))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        c.predict(*args, api_name="/generate")
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the page's runs, each followed by run_prompt")
    ap.add_argument("--skip-browser", action="store_true")
    a = ap.parse_args()
    import numpy as np
    import pandas as pd
    from gradio_client import Client

    from tests.browser import chromium_path, generate_in_browser, keyword_tab_in_browser, serve_app
    from memlab.world import World

    world = World.load(a.world)
    probes = pd.read_csv(world.file("probes"))
    full = sorted((g for g in probes["group"].unique() if g.startswith("full_ddf")), key=lambda g: int(g[8:]))
    prompt = probes[probes["group"] == full[-1]]["prompt"].iloc[0]
    t0 = time.perf_counter()
    with serve_app(world.path) as (url, proc):
        print(f"app ready in {time.perf_counter() - t0:.1f}s; resident memory after start-up: {rss_mib(proc.pid):.0f} MiB")
        if not a.skip_browser and chromium_path():
            # a visitor's click comes after reading the page and typing a prompt (READ_S), when the page's
            # last requests and drawing after load are over; a click the instant the page is ready is
            # timed too (alternating, 3 each, one fresh browser per run)
            # the server warmed by one request first, as run_prompt is warmed before it is timed
            Client(url, verbose=False, download_files=False).predict(
                prompt, 2, "", [], 4, 0.1, int(world.defaults["steps"]), float(world.defaults["guidance"]),
                api_name="/generate")
            # timed in the page (``browser._STAMPS``), and once more by Playwright's own waits, which poll
            # every animation frame (the harness's own cost on a machine the browser shares with the server)
            variants = {"page": (READ_S, False), "at once": (0.0, False), "polled": (READ_S, True)}
            runs = {v: [] for v in variants}
            run_prompt_once, rp_times = run_prompt_timer(world, prompt, a.seeds), []
            for _ in range(a.rounds):  # each round: the three page runs, then run_prompt in this process
                for v, (read, polled) in variants.items():
                    runs[v].append(generate_in_browser(url, prompt, a.seeds, read_s=read, frame_polling=polled,
                                                       screenshot=Path(tempfile.gettempdir()) / "memlab-app.png"))
                rp_times.append(run_prompt_once())
            res = runs["page"][-1]
            med = {v: {k: float(np.median([r[k] for r in rs])) for k in ("ready_s", "first_s", "whole_s", "charts_s")}
                   for v, rs in runs.items()}
            ready, first, whole = (med["page"][k] for k in ("ready_s", "first_s", "whole_s"))
            shown = re.search(r"Replication: ([\d.]+)% of (\d+) seeds", res["headline"])
            print(f"browser, {a.seeds} seeds, prompt {prompt!r}: page ready (first plot drawn) {ready:.2f}s after "
                  f"opening; clicked {READ_S:g}s later: first generation + match {first:.2f}s after the click, whole "
                  f"batch {whole:.2f}s, its two charts drawn after it by {med['page']['charts_s']:.2f}s; clicked the instant the page is ready: first {med['at once']['first_s']:.2f}s, "
                  f"whole {med['at once']['whole_s']:.2f}s; timed by Playwright's polling waits instead: first "
                  f"{med['polled']['first_s']:.2f}s, whole {med['polled']['whole_s']:.2f}s (medians of {a.rounds}, alternating); "
                  f"page shows replication {shown.group(1)}%")
            api = time_api(url, prompt, a.seeds, world)
            print(f"the same request through the API, no browser (gradio_client, same chunks): {api:.2f}s (median of 3)")
            rp = float(np.median(rp_times))
            paired = [r["whole_s"] / t for r, t in zip(runs["page"], rp_times)]
            print(f"run_prompt, same prompt and seeds, in this process, once a round: "
                  f"{', '.join(f'{t:.2f}s' for t in rp_times)}; the page's whole batch over the same round's "
                  f"run_prompt: {', '.join(f'{x:.2f}x' for x in paired)} (median {np.median(paired):.2f}x)")
            print(f"run_prompt {rp:.2f}s (median of {a.rounds}) -> the page's whole "
                  f"batch is {whole / rp:.2f}x run_prompt (clicked at once {med['at once']['whole_s'] / rp:.2f}x; timed by "
                  f"Playwright's polling {med['polled']['whole_s'] / rp:.2f}x; the API "
                  f"alone {api / rp:.2f}x), its first pair {first / rp:.2f}x")
            out = Path(tempfile.mkdtemp()) / "r.jsonl"
            subprocess.run([sys.executable, "-m", "memlab", "run", "--world", str(world.path), "--prompt", prompt,
                            "--seeds", f"0-{a.seeds - 1}", "--out", str(out)], cwd=ROOT, check=True,
                           capture_output=True)
            summ = [json.loads(x) for x in out.read_text().splitlines() if '"summary"' in x][0]
            same = f"{summ['replication_rate']:.1%}" == shown.group(1) + "%"
            print(f"memlab run, same prompt and seeds: replication {summ['replication_rate']:.1%} -> "
                  f"{'equal' if same else 'DIFFERENT'}")
            kw = next(iter(world.manifest.get("keywords", {})), None)
            if kw:
                times = [keyword_tab_in_browser(url, kw)["render_s"] for _ in range(3)]
                print(f"keyword tab, prebuilt {kw!r}: rendered {', '.join(f'{t:.2f}s' for t in times)} after the "
                      f"click (3 page loads)")
        print(f"resident memory after generating: {rss_mib(proc.pid):.0f} MiB")

        lat, fails = [], []
        lock = threading.Lock()

        def caller(i):
            c = Client(url, verbose=False)
            for j in range(a.requests):
                t = time.perf_counter()
                try:
                    c.predict(prompt, 4, "", [], 4, 0.1, int(world.defaults["steps"]), float(world.defaults["guidance"]),
                              api_name="/generate")
                    with lock:
                        lat.append(time.perf_counter() - t)
                except Exception as e:  # count, don't stop
                    with lock:
                        fails.append(repr(e)[:120])

        t = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(a.callers)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        wall = time.perf_counter() - t
        print(f"{a.callers} concurrent callers x {a.requests} requests (4 seeds each): {len(lat)} answered, "
              f"{len(fails)} failed in {wall:.1f}s; latency p50 {np.percentile(lat, 50):.2f}s, "
              f"p95 {np.percentile(lat, 95):.2f}s (requests queue: one generation at a time)")
        for f in fails[:3]:
            print("  failure:", f)
        print(f"resident memory at the end: {rss_mib(proc.pid):.0f} MiB")


if __name__ == "__main__":
    main()
