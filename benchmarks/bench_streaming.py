"""Where streaming a batch to the page costs time, on the built-in world (issue 14), part by part:

1. chunking, in this process, through the same ``Lab`` the app uses (medians, alternating): one batch of 8
   seeds; the chunks of 2 then 6 the app streamed before; one chunk of 8 whose first seed gets a head start
   (``Generator.generate``: a batch of its own on a second thread beside the rest), what the app streams
   on a CPU now, with the time to its first yield; and one UNet step (a guided batch: 2 inputs a seed)
   for 1, 2, 6 and 8 seeds: the fixed part of a step is what each extra batch after the first pays again;
2. the server: ``python app.py`` with memlab's queue polling (``memlab.app.serve.calm_queue``) against Gradio's own
   rates (every 1 ms when idle, progress every 10 ms), alternating servers: the event loop's CPU while
   idle (% of a core, from /proc) and the app's /generate for 8 seeds through the API with no browser;
3. the browser: CPU time Chromium (every process of it, from /proc) spends while the page sits idle and
   while it runs the same 8 seeds, beside the server's, and the page's whole-batch time; and what that
   costs the generation itself: each chunk's time inside the server (``Lab._chunk``, logged by a
   wrapper this script starts the app with) while the page draws, against the same chunks through the API
   on the same server, and the time from the click to the first chunk's start.

4. with ``--against DIR`` (another checkout of memlab, e.g. ``git worktree add DIR <commit>``), only: the
   page served by this checkout and by that one, alternating, a fresh server and browser each run: the first
   pair, the whole batch and its charts, as ``browser.generate_in_browser`` stamps them in the page.

    python -m benchmarks.bench_streaming [--world DIR] [--reps 5] [--skip-browser] [--browser-only | --in-process-only]
    python -m benchmarks.bench_streaming --against DIR [--reps 6]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GRADIO_RATES = ("import sys; import memlab.app.serve as serve; serve.calm_queue = lambda demo: None; "
                "sys.argv = ['app.py'] + sys.argv[1:]; import runpy; runpy.run_path('app.py', run_name='__main__')")


CHUNK_TIMES = ("import os, sys, time, runpy; import memlab.service as s; f = s.Lab._chunk\n"
               "def timed(self, prompt, seeds, *a, **k):\n"
               "    t = time.time(); r = f(self, prompt, seeds, *a, **k)\n"
               "    with open(os.environ['MEMLAB_CHUNK_LOG'], 'a') as log: log.write(f'{len(seeds)} {t} {time.time()}\\n')\n"
               "    return r\n"
               "s.Lab._chunk = timed; sys.argv = ['app.py'] + sys.argv[1:]; "
               "runpy.run_path('app.py', run_name='__main__')")


def chunks_since(log: Path, t0: float) -> list[tuple[int, float, float]]:
    """(seeds, start, seconds) of each chunk the server logged since the epoch time ``t0``."""
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [(int(n), float(a), float(b) - float(a)) for n, a, b in rows if float(a) >= t0]


def cpu_s(pids) -> float:
    """User + system CPU seconds of these processes (all their threads)."""
    tot = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            tot += int(f[11]) + int(f[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return tot / os.sysconf("SC_CLK_TCK")


def chromium_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "chromium"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def serve(world, gradio_rates: bool, port: int, chunk_log: Path | None = None):
    """``python app.py`` on the world; with ``gradio_rates`` the app's queue keeps Gradio's polling; with
    ``chunk_log`` each chunk's seeds, start and end are appended to that file."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--port", str(port)] + (["--world", str(world)] if world else [])
    cmd = [sys.executable, "-c", GRADIO_RATES, *args] if gradio_rates else [sys.executable, "app.py", *args]
    if chunk_log:
        env["MEMLAB_CHUNK_LOG"] = str(chunk_log)
        cmd = [sys.executable, "-c", CHUNK_TIMES, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, proc, timeout: float = 180):
    import urllib.request

    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError("app exited")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() - t0 > timeout:
                raise
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--browser-only", action="store_true", help="only part 3")
    ap.add_argument("--in-process-only", action="store_true", help="only part 1")
    ap.add_argument("--against", default=None, help="only part 4: this checkout's page against that checkout's")
    a = ap.parse_args()
    import numpy as np
    import pandas as pd
    from gradio_client import Client

    from tests.browser import chromium_path, free_port, generate_in_browser
    from memlab.world import World

    world = World.load(a.world)
    probes = pd.read_csv(world.file("probes"))
    full = sorted((g for g in probes["group"].unique() if g.startswith("full_ddf")), key=lambda g: int(g[8:]))
    prompt = probes[probes["group"] == full[-1]]["prompt"].iloc[0]
    steps, guidance = int(world.defaults["steps"]), float(world.defaults["guidance"])
    seeds = list(range(8))
    print(f"built-in world, prompt {prompt!r}, seeds 0-7, {steps} steps, guidance {guidance}")
    if a.against:
        return against(Path(a.against), a.world, prompt, steps, guidance, a.reps)

    # 2. the server, first (this process must not start an OpenMP team before the servers run)
    res = {False: {"idle": [], "api": []}, True: {"idle": [], "api": []}}
    for rnd in range(0 if a.browser_only or a.in_process_only else 2):
        for gradio_rates in (True, False):
            port = free_port()
            proc = serve(a.world, gradio_rates, port)
            url = f"http://127.0.0.1:{port}/"
            try:
                wait_up(url, proc)
                c = Client(url, verbose=False, download_files=False)
                args = (prompt, 8, "", [], 4, 0.1, steps, guidance)
                c.predict(prompt, 2, "", [], 4, 0.1, steps, guidance, api_name="/generate")  # warm
                time.sleep(1)
                c0 = cpu_s([proc.pid])
                time.sleep(3)
                res[gradio_rates]["idle"].append((cpu_s([proc.pid]) - c0) / 3)
                for _ in range(a.reps):
                    t = time.perf_counter()
                    c.predict(*args, api_name="/generate")
                    res[gradio_rates]["api"].append(time.perf_counter() - t)
            finally:
                proc.terminate()
                proc.wait(20)
    for gradio_rates, label in ((True, "Gradio's polling (1 ms idle, 10 ms progress)"),
                                (False, "memlab's (serve.calm_queue: 50 ms, 100 ms)")) if res[False]["api"] else ():
        r = res[gradio_rates]
        print(f"server with {label}: idle process CPU {100 * np.mean(r['idle']):.1f}% of a core; /generate for "
              f"8 seeds through the API {np.median(r['api']):.2f}s (median of {len(r['api'])})")
    if res[False]["api"]:
        ratio = np.median(res[True]["api"]) / np.median(res[False]["api"])
        print(f"-> Gradio's polling makes the same request {ratio:.2f}x as long")

    # 3. the browser: Chromium's CPU while the page sits idle (ready -> click, a visitor's 3 s of reading)
    # and while it runs the batch, beside the server's; 3 runs, a server each
    if not (a.skip_browser or a.in_process_only) and chromium_path():
        runs, page_chunks, api_chunks, starts, tails = [], [], [], [], []
        log = Path(tempfile.mkdtemp()) / "chunks.txt"
        for _ in range(3):
            port = free_port()
            proc = serve(a.world, False, port, chunk_log=log)
            url = f"http://127.0.0.1:{port}/"
            try:
                wait_up(url, proc)
                cpu, clock = [], []

                def read():  # Chromium's processes and the server, with the wall clock
                    cpu.append((cpu_s(chromium_pids()), cpu_s([proc.pid])))
                    clock.append((time.perf_counter(), time.time()))

                r = generate_in_browser(url, prompt, 8, on_ready=read, on_click=read, on_done=read, read_s=3.0)
                runs.append((r["whole_s"], (cpu[1][0] - cpu[0][0]) / (clock[1][0] - clock[0][0]),
                             cpu[2][0] - cpu[1][0], cpu[2][1] - cpu[1][1]))
                page = chunks_since(log, clock[1][1])
                page_chunks.append([sec for _, _, sec in page])
                starts.append(page[0][1] - clock[1][1])
                tails.append(r["whole_s"] - (page[-1][1] + page[-1][2] - clock[1][1]))  # last chunk -> page shows it
                t0 = time.time()  # the same chunks, no browser, on the same (warm) server
                Client(url, verbose=False, download_files=False).predict(
                    prompt, 8, "", [], 4, 0.1, steps, guidance, api_name="/generate")
                api_chunks.append([sec for _, _, sec in chunks_since(log, t0)])
            finally:
                proc.terminate()
                proc.wait(20)
        whole, idle, chrome, server = (float(np.median([x[i] for x in runs])) for i in range(4))
        print(f"page, 8 seeds: whole batch {whole:.2f}s; Chromium idle {100 * idle:.0f}% of a core (ready -> click); "
              f"CPU during the run: Chromium {chrome:.2f}s, server {server:.2f}s (medians of 3; the machine has "
              f"{os.cpu_count()} cores)")
        pc, ac = np.median(page_chunks, axis=0), np.median(api_chunks, axis=0)
        sizes = " + ".join(str(n) for n, _, _ in page)
        print(f"the chunks ({sizes} seeds) inside the server: {' + '.join(f'{x:.2f}' for x in pc)}s while the page "
              f"draws, {' + '.join(f'{x:.2f}' for x in ac)}s through the API on the same server -> the page's drawing "
              f"makes the generation itself {pc.sum() / ac.sum():.2f}x as long; the first chunk starts "
              f"{np.median(starts):.2f}s after the click, and the page shows the whole batch {np.median(tails):.2f}s "
              f"after the last chunk ends (medians of 3)")
    if a.browser_only:
        return

    # 1. chunking, in this process
    from memlab.generate import Settings
    from memlab.service import Lab

    lab = Lab(world)
    st = Settings(steps=steps, guidance=guidance)
    lab.generate_chunk(prompt, [0, 1], "none", st)  # warm

    def streamed(**plan):  # (first yield, whole) of the app's stream of the 8 seeds
        t, first = time.perf_counter(), None
        for _ in lab.generate_stream(prompt, seeds, "none", st, **plan):
            first = first or time.perf_counter() - t
        return first, time.perf_counter() - t
    one, two, head = [], [], []
    for _ in range(a.reps):
        t = time.perf_counter()
        lab.generate_chunk(prompt, seeds, "none", st)
        one.append(time.perf_counter() - t)
        two.append(streamed(chunk=2, then=8))
        head.append(streamed(chunk=8, head=1))
    o = np.median(one)
    (f2, w2), (fh, wh) = (np.median(two, axis=0), np.median(head, axis=0))
    print(f"in process (Lab): one batch of 8 {o:.2f}s; chunks of 2 then 6: first {f2:.2f}s, whole {w2:.2f}s "
          f"({w2 / o:.2f}x); one chunk of 8 with a head start for its first seed: first {fh:.2f}s, whole {wh:.2f}s "
          f"({wh / o:.2f}x) (medians of {a.reps}, alternating)")
    import torch

    from memlab import compute

    def step_ms(n: int) -> float:  # on the Lab's compute thread, as its chunks run (memlab.compute)
        unet = lab.generator.pipe.unet
        cond, _ = lab.generator.encode([prompt])
        x = torch.randn(2 * n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        e = cond.repeat(2 * n, 1, 1)
        with torch.no_grad():
            for _ in range(3):
                unet(x, 500, encoder_hidden_states=e)
            t = time.perf_counter()
            for _ in range(20):
                unet(x, 500, encoder_hidden_states=e)
        return (time.perf_counter() - t) / 20 * 1000

    ms = {n: compute.run(step_ms, n) for n in (1, 2, 6, 8)}
    per = (ms[8] - ms[1]) / 7  # least squares would do as well: the four points lie near a line
    print(f"one UNet step, {torch.get_num_threads()} threads (guided: 2 inputs a seed): "
          + ", ".join(f"{n} seed{'s' if n > 1 else ''} {v:.1f} ms" for n, v in ms.items())
          + f" -> about {ms[1] - per:.0f} ms a step whatever the batch, plus {per:.1f} ms a seed: a second batch "
            f"pays the fixed part again on each of the {steps} steps")


def against(other: Path, world, prompt: str, steps: int, guidance: float, reps: int):
    """Part 4: the page of this checkout and of ``other``, alternating (each ``python app.py`` of its own
    checkout, warmed by one request; a fresh browser each run)."""
    import numpy as np
    from gradio_client import Client

    from tests.browser import free_port, generate_in_browser

    roots = {"this checkout": ROOT, str(other): other.resolve()}
    res = {k: [] for k in roots}
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "MEMLAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    for _ in range(reps):
        for name, root in roots.items():
            port = free_port()
            proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)] + (["--world", str(world)] if world else []),
                                    cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}/"
            try:
                wait_up(url, proc)
                Client(url, verbose=False, download_files=False).predict(
                    prompt, 2, "", [], 4, 0.1, steps, guidance, api_name="/generate")
                r = generate_in_browser(url, prompt, 8, read_s=3.0)
                res[name].append((r["first_s"], r["whole_s"], r["charts_s"]))
            finally:
                proc.terminate()
                proc.wait(20)
    for name, rows in res.items():
        first, whole, charts = np.median(rows, axis=0)
        print(f"page served by {name}: first pair {first:.2f}s, whole batch {whole:.2f}s, its charts {charts:.2f}s "
              f"after the click (medians of {len(rows)}, alternating)")


if __name__ == "__main__":
    main()
