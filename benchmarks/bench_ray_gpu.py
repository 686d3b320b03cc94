"""``index_builder embed --gpus 1`` on a local Ray (issue 34): webdataset shards of JPEGs embedded by Ray tasks that
each hold a GPU, against the same shards embedded by the same function (``embed_shard``) in this process on the
GPU: the vectors equal, images per second both (decoding included), and the device each task ran on.

    python -m benchmarks.bench_ray_gpu [--shards 8] [--per 512] [--size 256] [--weights SSCD_TORCHSCRIPT]

``sscd`` with sscd_disc_mixup's architecture and random weights unless ``--weights`` names the official file.
"""
import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_shards(folder: Path, n: int, per: int, size: int) -> list[Path]:
    """n webdataset shards of ``per`` smooth random JPEGs (quality 90) with captions and json, by webdataset."""
    import numpy as np
    import webdataset as wds
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for s in range(n):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as w:
            for j in range(per):
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                k = f"{s:05d}{j:05d}"
                w.write({"__key__": k, "jpg": buf.getvalue(), "txt": f"image {k}",
                         "json": {"url": f"http://example.invalid/{k}.jpg", "key": k}})
        out.append(path)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per", type=int, default=512)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (this runs index_builder embed with --gpus 1)")
        return 0
    from index_builder.embed import embed_shard
    from memlab.index import sha256

    from benchmarks.bench_embed import sscd_architecture

    tmp = Path(tempfile.mkdtemp())
    weights = Path(a.weights) if a.weights else sscd_architecture(tmp / "sscd_arch.torchscript.pt")
    shards = write_shards(tmp / "shards", a.shards, a.per, a.size)
    n = a.shards * a.per
    options = {"weights": str(weights), "weights_sha256": sha256(weights)}
    embed_shard(str(shards[0]), 0, str(tmp / "warm"), "sscd", options, a.batch_size)  # CUDA and cuDNN warm
    t = time.perf_counter()
    one = [embed_shard(str(p), i, str(tmp / "one"), "sscd", options, a.batch_size) for i, p in enumerate(shards)]
    t_one = time.perf_counter() - t
    cmd = [sys.executable, "-m", "index_builder", "embed", "--shards", str(tmp / "shards"), "--descriptor", "sscd",
           "--weights", str(weights), "--weights-sha256", options["weights_sha256"], "--gpus", "1",
           "--batch-size", str(a.batch_size), "--out", str(tmp / "ray")]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    t_ray = time.perf_counter() - t
    print(r.stderr[-1500:])
    if r.returncode:
        print(f"index_builder embed failed (exit {r.returncode})")
        return 1
    v1 = np.concatenate([np.load(tmp / "one" / "img_emb" / f"img_emb_{i}.npy") for i in range(a.shards)])
    vr = np.concatenate([np.load(tmp / "ray" / "img_emb" / f"img_emb_{i}.npy") for i in range(a.shards)])
    diff = float(np.abs(v1.astype(np.float32) - vr.astype(np.float32)).max())
    per_shard = sorted(o["seconds"] for o in one)
    print(f"{torch.cuda.get_device_name()} | sscd ({'weights given' if a.weights else 'architecture, random weights'})"
          f" | {a.shards} shards x {a.per} JPEGs {a.size}x{a.size}, batch {a.batch_size}")
    print(f"one process: {t_one:.1f}s, {n / t_one:.0f} images/s (a shard {per_shard[len(per_shard) // 2]:.2f}s median)"
          f" on {one[0]['device']}")
    print(f"Ray, --gpus 1 (CLI, Ray's start included): {t_ray:.1f}s, {n / t_ray:.0f} images/s, ratio "
          f"{t_one / t_ray:.2f} of one process; rows {len(vr)} of {n}; largest difference from one process's "
          f"vectors {diff:.2e} (float16 files)")
    return 0 if len(vr) == n and diff < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
