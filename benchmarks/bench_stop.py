"""How long Stop takes on the built-in world, measured from outside (the app in its own process, called through
its API as the Stop button calls it: Gradio's cancel of the running event).

Each round starts a 64-seed run, waits for its second streamed update (a chunk has just begun), cancels it, and
times a one-seed request sent at once: it is answered when the stopped run has let go of the model plus its own
generation, which a one-seed request on the idle server (timed first, each round) takes alone. The difference is
what Stop costs the next visitor; the gap between streamed updates (a chunk's time) is printed beside it, and so
is how long the cancel call itself took to return.

With ``--closed-page`` the run is started in a Chromium page instead, which is closed once its first pair shows
(a visitor leaving mid-run); the one-seed request is timed from the close, and so is how long the server's CPU
stays busy (until a quiet quarter second).

    python -m benchmarks.bench_stop [--world assets/world] [--rounds 3] [--steps 30] [--closed-page]
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--closed-page", action="store_true", help="a page closed mid-run instead of Stop")
    a = ap.parse_args(argv)
    if a.closed_page:
        return closed_page(a)
    import gradio_client

    from tests.browser import serve_app

    args = (64, "", [], 4, 0.1, a.steps, 5.0)  # seeds, seed list, mitigations, k, lambda, steps, guidance
    rows = []
    with serve_app(a.world) as (url, _):
        client = gradio_client.Client(url, verbose=False)
        client.predict("a warm-up", 1, "", [], 4, 0.1, a.steps, 5.0, api_name="/generate")
        for r in range(a.rounds):
            t0 = time.perf_counter()
            client.predict(f"an idle request {r}", 1, "", [], 4, 0.1, a.steps, 5.0, api_name="/generate")
            idle = time.perf_counter() - t0
            job = gradio_client.Client(url, verbose=False).submit(f"a long run {r}", *args, api_name="/generate")
            stamps, seen = [], 0
            while len(stamps) < 3 and time.perf_counter() - t0 < 600:  # the clearing update, then two chunks
                n = len(job.outputs())
                if n > seen:
                    stamps += [time.perf_counter()] * (n - seen)
                    seen = n
                time.sleep(0.01)
            chunk = stamps[2] - stamps[1]
            t1 = time.perf_counter()
            try:
                job.cancel()
                cancel = f"{time.perf_counter() - t1:.2f} s"
            except Exception as e:  # noqa: BLE001 - gradio_client gives its cancel call 5 s
                cancel = f"no answer within the client's timeout ({type(e).__name__})"
            t2 = time.perf_counter()
            client.predict(f"the next visitor {r}", 1, "", [], 4, 0.1, a.steps, 5.0, api_name="/generate")
            nxt = time.perf_counter() - t2 + (t2 - t1)
            rows.append((idle, chunk, nxt))
            print(f"round {r + 1}: a chunk {chunk:.2f} s; cancel returned in {cancel}; the next one-seed request "
                  f"answered {nxt:.2f} s after Stop, against {idle:.2f} s on the idle server: Stop cost it "
                  f"{nxt - idle:.2f} s", flush=True)
    med = [statistics.median(x) for x in zip(*rows)]
    print(f"median of {a.rounds} rounds: a chunk {med[1]:.2f} s; the next request {med[2]:.2f} s after Stop against "
          f"{med[0]:.2f} s idle ({med[2] - med[0]:.2f} s of waiting for the stopped run)")
    return 0


def busy_for(proc, window: float = 0.25) -> float:
    """Seconds until ``proc`` uses under a fifth of a core in a ``window`` (at most 2 minutes)."""
    from tests.browser import busy_seconds

    return window * (len(busy_seconds(proc, windows=int(120 / window), window=window)) - 1)


def leave_mid_run(url: str, prompt: str, steps: int) -> None:
    """A 64-seed run started in a Chromium page, which is closed once its first pair shows."""
    from tests.browser import browser_page

    with browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_label("Prompt").first.fill(prompt)
        page.locator("#n-seeds input").fill("64")
        page.get_by_text("Sampling").first.click()
        field = page.get_by_label("number input for Steps")
        field.fill(str(steps))
        field.press("Tab")
        page.locator("#generate-btn").click()
        page.locator("#pairs img").first.wait_for(timeout=300_000)


def closed_page(a) -> int:
    import gradio_client

    from tests.browser import serve_app

    rows = []
    with serve_app(a.world) as (url, proc):
        client = gradio_client.Client(url, verbose=False)
        one_seed = lambda p: client.predict(p, 1, "", [], 4, 0.1, a.steps, 5.0, api_name="/generate")  # noqa: E731
        one_seed("a warm-up")
        for r in range(a.rounds):
            t0 = time.perf_counter()
            one_seed(f"an idle request {r}")
            idle = time.perf_counter() - t0
            leave_mid_run(url, f"a long run {r}", a.steps)
            busy = busy_for(proc)  # from the close
            leave_mid_run(url, f"another long run {r}", a.steps)
            t1 = time.perf_counter()
            one_seed(f"the next visitor {r}")  # sent at the close
            nxt = time.perf_counter() - t1
            busy_for(proc)
            rows.append((idle, busy, nxt))
            print(f"round {r + 1}: the server stayed busy {busy:.2f} s after the page closed; a one-seed request "
                  f"sent at the close answered in {nxt:.2f} s, against {idle:.2f} s on the idle server", flush=True)
    med = [statistics.median(x) for x in zip(*rows)]
    print(f"median of {a.rounds} rounds: busy {med[1]:.2f} s after the close; the next request {med[2]:.2f} s "
          f"against {med[0]:.2f} s idle ({med[2] - med[0]:.2f} s of waiting for the closed page's run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
