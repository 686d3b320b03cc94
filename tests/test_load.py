"""Load at CI size (issue 15; the full 16 x 5 is benchmarks/bench_load.py with the same code): the app
in its own process (`python app.py`) on the tiny world, concurrent callers over mixed endpoints, no
failures, memory reported and bounded; past the queue's limit a caller is told the limit and the wait."""

import pytest

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


def test_concurrent_callers_over_mixed_endpoints_all_answered(tiny_world):
    from benchmarks.bench_app import rss_mib
    from benchmarks.bench_load import report, run_load

    from tests.browser import shared_app
    from memlab.world import World

    world = World.load(tiny_world)
    url, proc = shared_app(tiny_world)  # the browser tests' server on this world, if it is up
    run_load(url, world, 2, 1)  # warm-up
    before = rss_mib(proc.pid)
    res = run_load(url, world, callers=8, requests=5)
    after = rss_mib(proc.pid)
    print(report(res, 8, 5, before, after))
    assert res["failures"] == []
    assert sum(len(v) for v in res["latency"].values()) == 40
    assert set(res["latency"]) == {"generate", "compare", "search_captions", "keyword_clusters"}
    assert after < before + 300  # MiB: no growth per request beyond caches


def test_a_caller_past_the_queue_limit_is_told_the_limit_and_the_wait(tiny_world):
    import json

    import httpx
    from gradio_client import Client

    from tests.browser import serve_app

    with serve_app(tiny_world, args=("--queue-size", "2")) as (url, proc):
        Client(url, verbose=False).predict("a ball", 1, "", [], 4, 0.1, 2, 5.0, api_name="/generate")  # an average
        body = json.dumps({"data": ["a ball", 16, "", [], 4, 0.1, 20, 5.0, None]})
        rs = [httpx.post(f"{url}gradio_api/call/generate", content=body,
                         headers={"content-type": "application/json"}, timeout=30) for _ in range(6)]
        codes = [r.status_code for r in rs]
        assert codes.count(200) >= 2 and 503 in codes, codes
        refused = rs[codes.index(503)]
        detail = refused.json()["detail"]
        assert "queue is full" in detail and "the limit is 2" in detail and "try again" in detail
        assert "about" in detail and int(refused.headers["retry-after"]) >= 1
