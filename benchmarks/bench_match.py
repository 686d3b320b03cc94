"""Time ``python -m memlab match`` on 20 distorted queries against the 267-painting pixel index
(../shared/data), as a user runs it: the whole command's wall time and its load/embed/search split.

    python -m benchmarks.bench_match [--runs 3]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIC = ROOT.parent / "shared" / "data" / "aic-public-domain" / "images"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not (AIC / "captions.csv").is_file():
        sys.exit(f"{AIC} not found: this benchmark needs ../shared/data")
    import pandas as pd
    from PIL import Image

    from memlab.distort import distort

    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "index_builder", "--images", str(AIC), "--captions",
                    str(AIC / "captions.csv"), "--out", str(tmp / "idx")], cwd=ROOT, check=True,
                   capture_output=True)
    print(f"index_builder (267 paintings, pixel): {time.perf_counter() - t:.2f}s wall")
    files = pd.read_csv(AIC / "captions.csv")["file"][:20]
    (tmp / "q").mkdir()
    for f in files:
        distort(Image.open(AIC / f)).save(tmp / "q" / f.replace(".jpg", ".png"))
    for r in range(a.runs):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "memlab", "match", "--index", str(tmp / "idx"),
                              "--images", str(tmp / "q"), "--json"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        wall = time.perf_counter() - t
        res = json.loads(out)
        tm = res["summary"]["timing"]
        hits = sum(q["matches"][0]["file"] == Path(q["image"]).stem + ".jpg" for q in res["queries"])
        print(f"run {r}: wall {wall:.2f}s (python start-up and imports included) | load {tm['load_s']:.3f}s "
              f"embed {tm['embed_s']:.3f}s search {tm['search_s']:.3f}s | top-1 correct {hits}/20 | "
              f"replicated {res['summary']['replication_rate']:.0%}")


if __name__ == "__main__":
    main()
