"""Embed webdataset shards on Ray Data, one shard per task, into the clip-retrieval layout.

    python -m index_builder embed --shards SHARDS/ --descriptor sscd --out EMB/ [--ray-address auto] [--gpus 1]
    python -m index_builder --embeddings EMB/ --descriptor sscd --max-memory 2GB --out INDEX/

Shard i (in the order ``shard_paths`` lists them) becomes ``EMB/img_emb/img_emb_{i}.npy`` (float16,
L2-normalized) and ``EMB/metadata/metadata_{i}.parquet`` (id, caption, url, shard, key, in sample order),
with a CLIP descriptor also ``EMB/text_emb/text_emb_{i}.npy`` (its text tower's vectors of the captions, as
clip-retrieval writes them; an index built from the folder keeps them for caption search, ``memlab.captions``),
written under temporary names and renamed, the metadata last. A shard whose pair exists is never redone,
so a killed or failed job resumes with the shards it lacks. Ray runs locally on all cores by default
(``ray.init()``), joins a cluster with ``--ray-address``; with ``--gpus N`` the shards run on Ray Data actors, one
per N GPUs of the cluster, each loading the network once, resizing on its GPU and decoding on threads ahead.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from memlab.childcheck import trust
from memlab.cli import Parser, guarded, out_folder
from memlab.errors import MemlabError
from memlab.indexfiles import atomic_save, npsave
from memlab.paths import Skipped


def parser():
    p = Parser(prog="python -m index_builder embed", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="webdataset shards: a folder of .tar, a file, a glob or a range")
    p.add_argument("--descriptor", required=True, help="descriptor name (e.g. sscd, clip, pixel)")
    p.add_argument("--weights", default=None, help="the descriptor's weights (file or folder)")
    p.add_argument("--weights-sha256", default=None, help="confirm a TorchScript file memlab did not download")
    p.add_argument("--out", required=True, help="folder for img_emb/ and metadata/")
    p.add_argument("--ray-address", default=None, help="a Ray cluster (default: a local one on this machine)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per task (e.g. 1)")
    p.add_argument("--batch-size", type=int, default=64)
    return p


_LOADED: dict = {}


def pair(out: Path, i: int) -> tuple[Path, Path]:
    return out / "img_emb" / f"img_emb_{i}.npy", out / "metadata" / f"metadata_{i}.parquet"


def embed_shard(shard: str, i: int, out: str, descriptor: str, options: dict, batch_size: int = 64) -> dict:
    """Embed one shard's images and write its (npy, parquet) pair; returns what it wrote. A sample that cannot
    be decoded, or whose image declares more pixels than memlab's cap, is skipped and counted by reason
    (``skipped/skipped_{i}.json`` beside the pair): one bad sample never fails the task, so a rerun does not
    fail on it again."""
    from memlab.descriptors import create_descriptor
    from memlab.preprocess import prepare_workers
    from memlab.shards import samples

    t0 = time.perf_counter()
    emb_f, meta_f = pair(Path(out), i)
    key = (descriptor, json.dumps(options, sort_keys=True))
    if key not in _LOADED:  # one per process: a worker that embeds several shards loads the network once
        _LOADED.clear()
        _LOADED[key] = create_descriptor(descriptor, **options)
    d = _LOADED[key]
    skipped = Skipped()
    rows, vecs, batch = [], [], []
    device = str(getattr(d, "device", "cpu"))
    for s, got in _decoded_in_order(samples([Path(shard)], skipped), skipped, prepare_workers(device)):
        if got is None:
            continue
        im, meta, caption = got
        batch.append(im)
        rows.append({"id": str(meta.get("key") or s["__key__"]), "caption": caption.strip(),
                     "url": str(meta.get("url") or ""), "shard": Path(shard).stem, "key": s["__key__"]})
        if len(batch) == batch_size:
            vecs.append(d.embed(batch))
            batch = []
    if batch:
        vecs.append(d.embed(batch))
    v = np.concatenate(vecs) if vecs else np.zeros((0, d.dim), np.float32)
    emb_f.parent.mkdir(parents=True, exist_ok=True)
    meta_f.parent.mkdir(parents=True, exist_ok=True)
    rep = Path(out) / "skipped" / f"skipped_{i}.json"
    rep.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(rep, lambda t: t.write_text(json.dumps({"shard": shard, **skipped.to_dict()}, indent=1)))
    atomic_save(emb_f, lambda t: npsave(t, v.astype(np.float16)))
    if callable(getattr(d, "embed_text", None)):  # a CLIP: its text tower's vectors of the captions, as
        caps = [r["caption"] for r in rows]         # clip-retrieval writes them (kept by the index for caption search)
        t = np.concatenate([d.embed_text(caps[j:j + batch_size]) for j in range(0, len(caps), batch_size)]) \
            if caps else np.zeros((0, v.shape[1]), np.float32)
        text_f = Path(out) / "text_emb" / f"text_emb_{i}.npy"
        text_f.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(text_f, lambda f: npsave(f, t.astype(np.float16)))
    # the pair is complete once its metadata exists
    atomic_save(meta_f, lambda t: pd.DataFrame(rows, columns=["id", "caption", "url", "shard", "key"])
                .to_parquet(t, index=False))
    trust(meta_f)  # this process wrote it: a build in the same process reads it unchecked
    return {"shard": shard, "index": i, "rows": len(rows), "seconds": time.perf_counter() - t0,
            "samples_skipped": skipped.total, "device": device}


def _decoded_in_order(stream, skipped, workers: int):
    """(sample, ``_decoded(sample)``) in the shard's order. With ``workers`` > 1 (a GPU machine's, from
    ``prepare_workers``) images are decoded on that many threads a window ahead (PIL's decoders release the
    GIL), so one core's decoding does not hold the GPU back; each sample's skips are counted here, in order."""
    if workers <= 1:
        for s in stream:
            yield s, _decoded(s, skipped)
        return
    import collections
    import concurrent.futures as cf

    def decode(s):
        notes = Skipped()
        return s, _decoded(s, notes), notes

    with cf.ThreadPoolExecutor(workers) as pool:
        window: collections.deque = collections.deque()
        for s in stream:
            window.append(pool.submit(decode, s))
            while len(window) > 4 * workers or (window and window[0].done()):
                yield _counted(window.popleft().result(), skipped)
        while window:
            yield _counted(window.popleft().result(), skipped)


def _counted(done, skipped):
    """A decoded sample, its skips added to the shard's in the shard's order."""
    s, got, notes = done
    skipped.merge(notes)
    return s, got


def _decoded(s: dict, skipped):
    """A sample's image (RGB, within memlab's pixel cap), metadata and caption; None (counted) when it has no
    image or the image cannot be used."""
    from PIL import Image, UnidentifiedImageError

    from memlab.match import MAX_IMAGE_PIXELS
    from memlab.preprocess import as_viewed
    from memlab.shards import IMAGE_KEYS, sample_text

    where = f"{Path(s['__url__']).name}:{s['__key__']}"[:160]
    ext = next((k for k in IMAGE_KEYS if k in s), None)
    if ext is None:
        skipped.add("no image in the sample", where)
        return None
    meta, caption = sample_text(s)
    over = f"image over {MAX_IMAGE_PIXELS // 10**6} MP"
    try:
        with Image.open(io.BytesIO(s[ext])) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                skipped.add(over, where)
                return None
            return as_viewed(im), meta, caption
    except Image.DecompressionBombError:  # PIL's own, larger cap: refused at open
        skipped.add(over, where)
    except (UnidentifiedImageError, OSError, ValueError):
        skipped.add("unreadable image", where)
    return None


def _embed_batch(batch, out, descriptor, options, batch_size):
    """A Ray Data task: each batch holds one shard."""
    done = [embed_shard(str(sh), int(i), out, descriptor, options, batch_size)
            for sh, i in zip(batch["shard"], batch["index"])]
    return {k: np.array([r[k] for r in done]) for k in ("shard", "index", "rows", "seconds", "samples_skipped",
                                                        "device")}


class _ShardEmbedder:
    """A Ray Data actor for GPU tasks: it keeps its worker, so the network is loaded and CUDA started once per
    GPU (Ray gives a task that holds a GPU a fresh worker each time: on an H200 one shard of 512 images took 15 s
    so, against 1.2 s in one process, ``benchmarks/bench_ray_gpu.py``)."""

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self, batch):
        return _embed_batch(batch, **self.kw)


def embed(shards: list[Path], out: Path, descriptor: str, options: dict | None = None, ray_address=None,
          cpus: int | None = None, gpus: float = 0, batch_size: int = 64, log=print) -> dict:
    """Embed every shard that lacks its pair on Ray Data; returns counts (done before, done now)."""
    import ray

    options = options or {}
    if gpus < 0:
        raise MemlabError(f"--gpus is the GPUs each task holds: 0 (none), a share such as 0.5, or more; not {gpus:g}")
    todo = [(str(p), i) for i, p in enumerate(shards) if not pair(out, i)[1].is_file()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards.json").write_text(json.dumps([str(p) for p in shards], indent=1))
    if not todo:
        return {"shards": len(shards), "skipped": len(shards), "embedded": 0}
    log(f"[embed] {len(todo)} of {len(shards)} shards to embed with {descriptor} on Ray "
        f"({ray_address or 'local'})")
    if not ray.is_initialized():
        ray.init(address=ray_address, num_cpus=cpus if not ray_address else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [
                     str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ds = ray.data.from_items([{"shard": s, "index": i} for s, i in todo], override_num_blocks=len(todo))
    kw = {"out": str(out), "descriptor": descriptor, "options": options, "batch_size": batch_size}
    if gpus:  # actors, one per GPU share; Ray Data restarts a dead one and retries its shard
        n = int(ray.cluster_resources().get("GPU", 0) / gpus)
        if n < 1:
            raise MemlabError(f"--gpus {gpus:g} asks each task for a GPU and the Ray cluster has "
                              f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
        ds = ds.map_batches(_ShardEmbedder, fn_constructor_kwargs=kw, batch_size=1, num_cpus=1, num_gpus=gpus,
                            compute=ray.data.ActorPoolStrategy(size=min(n, len(todo))))
    else:  # tasks: Ray reuses the workers of CPU tasks and retries a task whose worker died
        ds = ds.map_batches(_embed_batch, fn_kwargs=kw, batch_size=1, num_cpus=1)
    done = list(ds.iter_rows())
    return {"shards": len(shards), "skipped": len(shards) - len(todo), "embedded": len(todo),
            "rows": sum(int(r["rows"]) for r in done), "devices": sorted({str(r["device"]) for r in done}),
            "samples_skipped": skipped_report(out)}


def skipped_report(out: Path) -> dict:
    """The samples every shard's task skipped, counted by reason (from the shards' reports)."""
    by_reason: dict = {}
    for f in sorted((Path(out) / "skipped").glob("skipped_*.json")):
        for r, n in json.loads(f.read_text()).get("by_reason", {}).items():
            by_reason[r] = by_reason.get(r, 0) + n
    return {"total": sum(by_reason.values()), "by_reason": by_reason}


def run(args) -> int:
    from memlab.shards import shard_paths

    out = out_folder(args.out)
    shards = shard_paths(args.shards)
    from memlab.descriptors import DESCRIPTORS

    if args.descriptor not in DESCRIPTORS:
        raise MemlabError(f"unknown descriptor {args.descriptor!r}; known: {', '.join(DESCRIPTORS)}")
    options = {k: v for k, v in (("weights", args.weights), ("weights_sha256", args.weights_sha256)) if v}
    t0 = time.perf_counter()
    res = embed(shards, out, args.descriptor, options, args.ray_address, args.cpus, args.gpus, args.batch_size,
                log=lambda m: print(m, file=sys.stderr))
    bad = skipped_report(out)
    on = f" on {', '.join(res['devices'])}" if res.get("devices") else ""
    print(f"embedded {res['embedded']} shards ({res['skipped']} already done){on} into {out} in "
          f"{time.perf_counter() - t0:.1f}s; samples skipped: {bad['total']}"
          + (" (" + ", ".join(f"{n} {r}" for r, n in bad["by_reason"].items()) + ")" if bad["total"] else ""),
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return guarded(run, parser().parse_args(argv))
