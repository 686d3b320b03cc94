"""How fast ``train-descriptor`` draws its training views, in line against ``--workers N``, measured in one run.

Drawing a step's views (``memlab.train_descriptor.step_inputs``: a batch from the pool, two augmented views
of each, SSCD's augmentations) is CPU work; on a GPU it, not the network, sets the pace (issue 30's eighth
pass, by the loss logs' clocks: 7 processes drew 4.3 steps/s of 192 images on the lent H200 with a second run
sharing its 16 cores, 14 processes 7.1 steps/s alone). This prints seconds per step in line and with each worker count (the same steps, the same views:
checked), and the ratio against in line. The pool is smaller than a training's (``--scenes``); a step's cost
does not depend on the pool's size.

    python -m benchmarks.bench_descriptor_views [--workers 1,2] [--steps 24] [--batch-size 96] [--scenes 300]
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare with in line")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--scenes", type=int, default=300)
    a = ap.parse_args()
    import torch

    from memlab import train_descriptor as td

    torch.set_num_threads(1)
    cfg = td.DescriptorTrainConfig(batch_size=a.batch_size, n_scenes=a.scenes, n_lighthouses=max(1, a.scenes // 10))
    pool, photos = td.make_pool(cfg), list(td.load_photos().values())
    photo_pool = [[(im, None) for im in crops] for crops in td.make_photo_pool(photos, cfg.crops_per_photo, cfg.seed)]
    td.use_pool(cfg, [(im, None) for im in pool], photo_pool, photos)
    print(f"{os.cpu_count()} CPUs; {a.steps} steps of {a.batch_size} images x 2 views at {cfg.input_size} px")

    def timed(workers: int):
        t = time.perf_counter()
        views = [v for v, _ in td.prefetched(range(a.steps), workers)]
        return (time.perf_counter() - t) / a.steps, views

    base, ref = timed(0)
    print(f"in line:    {base:.3f} s/step  ({1 / base:.2f} steps/s)")
    for w in (int(x) for x in a.workers.split(",")):
        sec, views = timed(w)
        same = all(torch.equal(x, y) for x, y in zip(views, ref))
        print(f"{w:2d} workers: {sec:.3f} s/step  ({1 / sec:.2f} steps/s)  {base / sec:.2f}x in line; "
              f"views {'the same' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
