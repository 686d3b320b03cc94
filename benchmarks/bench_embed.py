"""Embedding at the network's speed (issue 34): memlab's ``embed`` of decoded images (PIL in, preprocessing
on a thread pool one batch ahead, the network, normalized vectors out) against the bare network on the
same batch already preprocessed (the ceiling), images per second, measured in the same run.

    python -m benchmarks.bench_embed [--descriptors clip-b32,memlab-copy-global] [--n 256] [--batch 32]
        [--device cpu|cuda]

``clip-b32`` runs open_clip's ViT-B/32 architecture with random weights (no download; the rate does not
depend on the weights); ``sscd`` needs its TorchScript file (``--weights``).
"""
import argparse
import time


def _rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptors", default="clip-b32,memlab-copy-global")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    from memlab.descriptors import create_descriptor, to_rgb

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(a.n)]
    print(f"{a.n} decoded 256x256 images, batch {a.batch}, device {a.device}, {torch.get_num_threads()} threads; "
          f"best of {a.repeats}")
    for name in a.descriptors.split(","):
        kw = {"device": a.device, "batch_size": a.batch}
        if name == "clip-b32":
            kw.update(model="ViT-B-32", pretrained=None)
            d = create_descriptor("clip", **kw)
            tf, net = d._tf, lambda x: d.net.encode_image(x, normalize=True)
        else:
            if a.weights:
                kw["weights"] = a.weights
            d = create_descriptor(name, **kw)
            tf = getattr(d, "_tf", None) or getattr(d, "transform", None)
            module = getattr(d, "net", None) or getattr(d, "model", None)
            if tf is None or module is None:
                print(f"{name}: no separable transform and network; skipped")
                continue
            net = module
        batches = [torch.stack([tf(to_rgb(im)) for im in images[i:i + a.batch]]).to(a.device)
                   for i in range(0, a.n, a.batch)]

        def bare():
            with torch.inference_mode():
                for x in batches:
                    net(x)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()

        def full():
            d.embed(images)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()

        bare()  # warm up
        r_bare, r_full = _rate(bare, a.n, a.repeats), _rate(full, a.n, a.repeats)
        print(f"{name:<22} bare network {r_bare:8.1f} img/s   memlab embed {r_full:8.1f} img/s   "
              f"ratio {r_full / r_bare:.2f}")


if __name__ == "__main__":
    main()
