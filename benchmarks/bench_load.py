"""Load on the app (issue 15): C concurrent gradio_client callers x R requests each, mixed endpoints
(generate, compare, caption search, keyword view), against `python app.py` in a subprocess. Prints
requests answered / failed, latency p50 / p95 per endpoint and overall, the serving process's resident
memory before and after, and what a caller past the queue's limit is told.

    python -m benchmarks.bench_load [--world DIR] [--callers 16] [--requests 5]

The CI-sized run is tests/test_load.py (the same ``run_load``).
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MIX = ("generate", "search_captions", "compare", "keyword_clusters", "generate")


def request_plan(world) -> dict:
    """Prompts (the world's probes, else its training captions), caption-search words and keywords (the
    prebuilt views, else the commonest caption word) that the requests cycle through."""
    import collections

    import pandas as pd

    caps = world.index().items["caption"].dropna().astype(str).tolist()
    probes = pd.read_csv(world.file("probes"))["prompt"].tolist() if world.file("probes") else []
    words = collections.Counter(w for c in caps for w in c.lower().split() if w.isalpha() and len(w) > 3)
    return {"prompts": probes or caps[:32], "words": [w for w, _ in words.most_common(8)],
            "keywords": sorted(world.manifest.get("keywords", {})) or [words.most_common(1)[0][0]],
            "steps": int(world.defaults["steps"]), "guidance": float(world.defaults["guidance"])}


def request_args(kind: str, plan: dict, caller: int, j: int, seeds: int = 2):
    """The arguments of one request of the mix; prompts and seeds vary by caller so no cache answers."""
    prompt = plan["prompts"][(caller * 7 + j) % len(plan["prompts"])]
    if kind == "generate":
        return (prompt, seeds, f"{caller * 10}-{caller * 10 + seeds - 1}", [], 4, 0.1, plan["steps"],
                plan["guidance"], None)
    if kind == "compare":
        return (prompt, 1, ["rna"], 2, 0.1)
    if kind == "search_captions":
        return (plan["words"][(caller + j) % len(plan["words"])],)
    return (plan["keywords"][(caller + j) % len(plan["keywords"])], "")


def run_load(url: str, world, callers: int, requests: int, seeds: int = 2) -> dict:
    """Run the load; returns {"latency": {kind: [s]}, "failures": [(kind, message)], "wall_s"}."""
    from gradio_client import Client

    lat: dict[str, list[float]] = {}
    fails: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(callers)
    plan = request_plan(world)

    def caller(i):
        c = Client(url, verbose=False)
        start.wait()
        for j in range(requests):
            kind = MIX[(i + j) % len(MIX)]
            args = request_args(kind, plan, i, j, seeds)
            t = time.perf_counter()
            try:
                c.predict(*args, api_name=f"/{kind}")
                with lock:
                    lat.setdefault(kind, []).append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - count every failure, don't stop
                with lock:
                    fails.append((kind, repr(e)[:200]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    return {"latency": lat, "failures": fails, "wall_s": time.perf_counter() - t0}


def report(res: dict, callers: int, requests: int, rss_before: float, rss_after: float) -> str:
    import numpy as np

    all_lat = [x for v in res["latency"].values() for x in v]
    lines = [f"{callers} callers x {requests} requests: {len(all_lat)} answered, {len(res['failures'])} failed "
             f"in {res['wall_s']:.1f}s; latency p50 {np.percentile(all_lat, 50):.2f}s, "
             f"p95 {np.percentile(all_lat, 95):.2f}s"]
    for kind, v in sorted(res["latency"].items()):
        lines.append(f"  {kind:<17} n={len(v):>3}  p50 {np.percentile(v, 50):6.2f}s  p95 {np.percentile(v, 95):6.2f}s")
    for kind, msg in res["failures"][:5]:
        lines.append(f"  failure ({kind}): {msg}")
    lines.append(f"resident memory of the app: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
                 f"({rss_after - rss_before:+.0f} MiB)")
    return "\n".join(lines)


def queue_overflow(url: str, world, n: int = 80) -> tuple[int, int, str, str | None]:
    """Push n generate requests at once through the REST route; returns (accepted, refused, the message
    and Retry-After header of a refusal)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    body = json.dumps({"data": list(request_args("generate", request_plan(world), 0, 0, seeds=4))})

    def post(_):
        return httpx.post(f"{url}gradio_api/call/generate", content=body,
                          headers={"content-type": "application/json"}, timeout=60)

    with ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(post, range(n)))
    refused = [r for r in rs if r.status_code == 503]
    msg = refused[0].json()["detail"] if refused else ""
    return len(rs) - len(refused), len(refused), msg, refused[0].headers.get("retry-after") if refused else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per generate request")
    a = ap.parse_args()
    from benchmarks.bench_app import rss_mib

    from tests.browser import serve_app
    from memlab.world import World

    world = World.load(a.world)
    with serve_app(world.path) as (url, proc):
        run_load(url, world, 2, 1, a.seeds)  # warm-up: first calls load plotly, caches
        before = rss_mib(proc.pid)
        res = run_load(url, world, a.callers, a.requests, a.seeds)
        after = rss_mib(proc.pid)
        print(f"world {world.name!r}, mix {', '.join(MIX)} (generate: {a.seeds} seeds at the world's "
              f"{world.defaults['steps']} steps; compare: none + rna on 1 seed)")
        print(report(res, a.callers, a.requests, before, after))
        ok, refused, msg, retry = queue_overflow(url, world)
        print(f"queue overflow: 80 generate requests at once -> {ok} queued, {refused} refused with HTTP 503, "
              f"Retry-After {retry} s: {msg!r}")


if __name__ == "__main__":
    main()
