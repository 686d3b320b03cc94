"""Fetching the training images a URL listing names into webdataset shards, with img2dataset
(``python -m index_builder download``, and step 1 of ``memlab world create``).

Resumable: img2dataset writes a ``_stats.json`` per finished shard and skips those shards on the next run
(the listing is written to ``SHARDS/_fetch/urls.parquet`` once, so the shards stay the same). Every URL's
outcome is recorded: ``SHARDS/_fetch/report.json`` counts them by reason (http 404, unreachable host,
timeout, not an image, ...) and ``SHARDS/_fetch/failures.csv`` lists each failed URL with its reason; a
failure is never fatal.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dataclasses import asdict

from .errors import MemlabError
from .safefetch import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES

FETCH = "_fetch"  # memlab's files beside the shards (img2dataset reads every top-level *.json as a done shard)


def url_table(listing):
    """Distinct http(s) URLs of a prompt/URL table (``memlab.prompts.read_prompt_list``) with the first
    caption given for each."""
    df = listing[listing["url"].str.match(r"^https?://", case=False)]
    df = df.drop_duplicates("url")[["url", "prompt"]].rename(columns={"prompt": "caption"})
    return df.reset_index(drop=True)


def fetch(urls, out: str | Path, image_size: int = 512, processes: int = 1, threads: int = 32,
          timeout: float = 10, retries: int = 1, shard_size: int = 1000, allow_private_addresses: bool | tuple = False,
          deadline: float = DEFAULT_DEADLINE_S, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Download ``urls`` (a DataFrame with url and caption) into webdataset shards in ``out`` with
    img2dataset, under ``memlab.safefetch``'s policy (http(s) only, no private addresses unless allowed, a
    ``deadline`` in seconds per URL and a body of at most ``max_bytes``; ``timeout`` bounds each socket
    read); resume what a previous run left; return (and write) the report."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if urls.empty:
        raise MemlabError("the listing names no http(s) URL to fetch")
    urls = urls[["url", "caption"]].reset_index(drop=True).copy()
    urls["caption"] = urls["caption"].fillna("").astype(str)
    urls["memlab_row"] = range(len(urls))
    settings = {"image_size": int(image_size), "shard_size": int(shard_size), "urls": len(urls)}
    (out / FETCH).mkdir(exist_ok=True)
    listing, saved = out / FETCH / "urls.parquet", out / FETCH / "settings.json"
    if listing.is_file():  # a previous run: the same listing and shards, or refuse to mix two
        before = pd.read_parquet(listing)
        old = json.loads(saved.read_text()) if saved.is_file() else {}
        if before["url"].tolist() != urls["url"].tolist() or old.get("shard_size") != shard_size \
                or old.get("image_size") != image_size:
            raise MemlabError(f"{out} holds shards fetched from another listing or with other settings "
                              f"({old}); use a new --out")
    else:
        tmp = listing.with_suffix(".parquet.part")
        urls.to_parquet(tmp, index=False)
        os.replace(tmp, listing)
        saved.write_text(json.dumps(settings, indent=1))

    n_shards = -(-len(urls) // int(shard_size))
    if all((out / f"{i:05d}_stats.json").is_file() for i in range(n_shards)):
        return report(out)  # every shard finished before: nothing for img2dataset (or its imports) to do

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations: no network check
    import importlib

    from . import safefetch

    i2d = importlib.import_module("img2dataset.main")  # (the package's `main` attribute is a function)
    allow = tuple(allow_private_addresses) if isinstance(allow_private_addresses, (list, tuple)) \
        else bool(allow_private_addresses)
    policy = safefetch.FetchPolicy(allow, float(deadline), int(max_bytes))
    cls = safefetch.SafeDownloader
    cls.policy = asdict(policy)
    original, i2d.Downloader = i2d.Downloader, cls  # its workers fetch under the policy
    try:
        _download(listing, out, processes, threads, image_size, shard_size, timeout, retries)
    finally:
        i2d.Downloader = original
    return report(out)


def _download(listing, out, processes, threads, image_size, shard_size, timeout, retries) -> None:
    from img2dataset import download

    download(url_list=str(listing), input_format="parquet", url_col="url", caption_col="caption",
             save_additional_columns=["memlab_row"], output_format="webdataset", output_folder=str(out),
             processes_count=max(1, int(processes)), thread_count=max(1, int(threads)), image_size=int(image_size),
             resize_mode="keep_ratio", resize_only_if_bigger=True, skip_reencode=True,
             number_sample_per_shard=int(shard_size), timeout=timeout, retries=int(retries),
             enable_wandb=False, incremental_mode="incremental", compute_hash="sha256")


def reason(status: str, message: str | None) -> str:
    """One short reason per URL from img2dataset's status and error message."""
    m = (message or "").lower()
    if status == "success":
        return "ok"
    if "refused: private address" in m:
        return "refused: private address"
    if "refused: redirect to another scheme" in m:
        return "refused: redirect to another scheme"
    if "refused: deadline" in m:
        return "deadline passed"
    if "refused: body too large" in m:
        return "body too large"
    if status == "failed_to_resize":
        return "not an image" if "decod" in m or "identify" in m else "could not resize"
    if (code := re.search(r"http error (\d{3})", m)):
        return f"http {code.group(1)}"
    if "timed out" in m or "timeout" in m:
        return "timeout"
    if any(w in m for w in ("refused", "name or service", "nodename", "no route", "unreachable",
                            "temporary failure", "reset by peer", "urlopen error")):
        return "unreachable host"
    if "x-robots-tag" in m or "noai" in m:
        return "opted out (X-Robots-Tag)"
    return "download error"


def report(out: str | Path) -> dict:
    """Per-URL outcomes from the shards' parquet files: counts by reason, written to ``report.json``, and
    the failed URLs with their reasons in ``failures.csv``. URLs of unfinished shards count as pending."""
    import pandas as pd

    out = Path(out)
    urls = pd.read_parquet(out / FETCH / "urls.parquet")
    done = [p for p in sorted(out.glob("*.parquet")) if (out / f"{p.stem}_stats.json").is_file()]
    seen = pd.concat([pd.read_parquet(p, columns=["url", "key", "status", "error_message"]).assign(shard=p.stem)
                      for p in done], ignore_index=True) if done else \
        pd.DataFrame(columns=["url", "key", "status", "error_message", "shard"])
    seen["reason"] = [reason(s, m) for s, m in zip(seen["status"], seen["error_message"])]
    failed = seen[seen["reason"] != "ok"]
    tmp = out / FETCH / "failures.csv.part"
    failed[["url", "reason", "error_message", "shard"]].to_csv(tmp, index=False)
    os.replace(tmp, out / FETCH / "failures.csv")
    rep = {"listed": int(len(urls)), "fetched": int((seen["reason"] == "ok").sum()), "failed": int(len(failed)),
           "pending": int(len(urls) - len(seen)), "by_reason": failed["reason"].value_counts().to_dict(),
           "shards": [p.with_suffix(".tar").name for p in done], "failures": f"{FETCH}/failures.csv"}
    (out / FETCH / "report.json").write_text(json.dumps(rep, indent=1))
    return rep


def summary(rep: dict, out) -> str:
    why = ", ".join(f"{n} {r}" for r, n in rep["by_reason"].items())
    return (f"fetched {rep['fetched']} of {rep['listed']} URLs into {len(rep['shards'])} shards in {out}"
            + (f"; {rep['failed']} failed ({why}), listed in {Path(out) / FETCH / 'failures.csv'}" if rep["failed"] else "")
            + (f"; {rep['pending']} pending (run again to resume)" if rep["pending"] else ""))
