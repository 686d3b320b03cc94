"""The world's trainer on each device, measured in one run: seconds per UNet step (batch 32, the
``world`` config, the built-in world's training set), steady state read from the trainer's own loss
log, and the 2500-step training that ``build-world`` runs, extrapolated from it. A device that is not
there is reported and skipped.

    python -m benchmarks.bench_train [--devices cpu,cuda] [--steps 60]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--steps", type=int, default=60, help="UNet steps per device (the first 10 are warm-up)")
    ap.add_argument("--data", default=None, help="a training table (default: the built-in world's set, made here)")
    a = ap.parse_args()
    import pandas as pd
    import torch

    from memlab.train import TrainConfig, train
    from memlab.worldgen import WorldSpec, make_training_set

    tmp = Path(tempfile.mkdtemp())
    data = a.data
    if data is None:
        rows, images = make_training_set(WorldSpec())
        (tmp / "data" / "images").mkdir(parents=True)
        for i, im in enumerate(images):
            im.save(tmp / "data" / "images" / f"{i:04d}.png")
        rows.to_parquet(tmp / "data" / "train.parquet", index=False)
        data = str(tmp / "data" / "train.parquet")
    results = {}
    for dev in a.devices.split(","):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"{dev}: skipped (no CUDA GPU visible)")
            continue
        cfg = TrainConfig(data=data, out=str(tmp / f"run-{dev}"), pipeline="world", steps=a.steps, vae_steps=20,
                          batch_size=32, log_every=10, checkpoint_every=10**9, device=dev)
        t = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t
        log = pd.read_csv(tmp / f"run-{dev}" / "loss.csv")
        per_step = (log["elapsed_s"].iloc[-1] - log["elapsed_s"].iloc[0]) / (log["step"].iloc[-1] - log["step"].iloc[0])
        name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
        results[dev] = per_step
        print(f"{dev} ({name}): {per_step * 1000:.1f} ms per UNet step (steady, steps {log['step'].iloc[0]}-"
              f"{log['step'].iloc[-1]}); this run {wall:.1f} s; 2500 steps ~ {2500 * per_step / 60:.1f} min")
    if "cpu" in results and len(results) > 1:
        for dev, s in results.items():
            if dev != "cpu":
                print(f"{dev} / cpu: {results['cpu'] / s:.1f}x faster per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
