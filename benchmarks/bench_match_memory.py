"""Peak memory of matching a folder of generations: ``memlab match`` (decodes and matches 256 images at a time,
``match.match_paths``) against every image of the folder decoded first and matched at once (what it did
before, ``match.match_images`` over all of them), in the same run, each in a process of its own.

The folder: ``--n`` PNGs of ``--size`` px (default 2,000 of 512 x 512, Stable Diffusion's size), each a training
image of the built-in world, upscaled and tinted, so the two paths have real matches to agree on. Printed: each
process's peak resident memory (VmHWM) and wall time, their ratio, and whether the two answers are the same.

    python -m benchmarks.bench_match_memory [--n 2000] [--size 512] [--world assets/world]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from pathlib import Path
from memlab.index import TrainingIndex
from memlab.match import descriptor_for_index, load_image, match_images, match_paths
index, folder, how, out = sys.argv[1:5]
idx = TrainingIndex.load(index)
d = descriptor_for_index(idx)
paths = sorted(Path(folder).glob("*.png"))
if how == "chunks":
    res = match_paths(idx, d, paths, k=5)
else:
    res = match_images(idx, d, [load_image(p) for p in paths], [str(p) for p in paths], k=5)
Path(out).write_text(json.dumps([(q["image"], q["matches"][0]["id"], round(q["score"], 6)) for q in res["queries"]]))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(int(hwm) // 1024)
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    a = ap.parse_args(argv)
    from PIL import Image

    from memlab.world import World

    world = World.load(a.world)
    idx = world.index()
    work = Path(tempfile.mkdtemp(prefix="bench-match-memory-"))
    folder = work / "q"
    folder.mkdir()
    for i in range(a.n):
        im = Image.open(idx.image_path(i % idx.manifest["item_count"])).convert("RGB").resize((a.size, a.size))
        im = Image.blend(im, Image.new("RGB", im.size, (200, 120, 40)), 0.2)
        im.save(folder / f"g{i:05d}.png")
    index = str(idx.path)
    got = {}
    for how in ("all at once (before)", "chunks"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", CHILD, index, str(folder), how.split()[0], str(work / f"{how[:3]}.json")],
                           cwd=ROOT, capture_output=True, text=True, check=True)
        got[how] = (int(r.stdout.strip().splitlines()[-1]), time.perf_counter() - t,
                    json.loads((work / f"{how[:3]}.json").read_text()))
        print(f"{how}: peak RSS {got[how][0]:,} MB, {got[how][1]:.1f} s")
    (ba, ta, qa), (bc, tc, qc) = got.values()
    print(f"{a.n} PNGs of {a.size} x {a.size}: chunks peak at {bc / ba:.2f}x the memory of all at once "
          f"({ba - bc:,} MB less), in {tc / ta:.2f}x the time; same answers: {qa == qc}")


if __name__ == "__main__":
    main()
