"""Real data: the 267 public-domain paintings (../shared/data), skipped when absent.

Measured result of issue 2: distorted copies (75% rescale, JPEG 60, 5% crop, brightness +10%) find
their original at top-1 for >= 95%; the calibrated threshold flags >= 90% of the copies; on held-out
paintings (never seen by the calibration) it flags at most 3%."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import AIC, ROOT
from index_builder.build import main as build_main
from memlab.cli import main as memlab_main
from memlab.descriptors import create_descriptor
from memlab.distort import distort
from memlab.index import TrainingIndex

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (AIC / "captions.csv").is_file(), reason="../shared/data absent")]


@pytest.fixture(scope="module")
def paintings_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("aic") / "idx"
    assert build_main(["--images", str(AIC), "--captions", str(AIC / "captions.csv"), "--out", str(out)]) == 0
    return TrainingIndex.load(out)


def test_distorted_copies_find_their_original(paintings_index):
    idx = paintings_index
    df = pd.read_csv(AIC / "captions.csv")
    assert len(idx.items) == len(df) == 267
    d = create_descriptor("pixel")
    copies = d.embed([distort(Image.open(AIC / f)) for f in idx.items["file"]])
    scores, rows = idx.search(copies, k=1)
    top1 = (rows[:, 0] == np.arange(len(idx.items))).mean()
    thr = idx.threshold("pixel")
    flagged = (scores[:, 0] > thr["value"]).mean()
    print(f"top-1 {top1:.3f}  threshold {thr['value']:.3f}  copies flagged {flagged:.3f}")
    assert top1 >= 0.95
    assert flagged >= 0.90
    assert thr["recall"] >= 0.90 and thr["fpr"] <= 0.02


def test_false_positives_on_held_out_distinct_pairs(tmp_path):
    """The calibration's own background is in-sample (the threshold is its 99th percentile): the
    false-positive rate that means something is on paintings the threshold never saw. Calibrate on
    half of them, query the other half (distinct from every indexed painting) against the index."""
    df = pd.read_csv(AIC / "captions.csv")
    half = df.sample(frac=0.5, random_state=0)
    rest = df.drop(half.index)
    half.to_csv(tmp_path / "half.csv", index=False)
    assert build_main(["--images", str(AIC), "--captions", str(tmp_path / "half.csv"), "--out",
                       str(tmp_path / "idx")]) == 0
    idx = TrainingIndex.load(tmp_path / "idx")
    d = create_descriptor("pixel")
    scores, _ = idx.search(d.embed([Image.open(AIC / f) for f in rest["file"]]), k=1)
    thr = idx.threshold("pixel")["value"]
    fpr = float((scores[:, 0] > thr).mean())
    print(f"held-out false positives: {fpr:.3f} of {len(rest)} paintings at threshold {thr:.3f}")
    assert fpr <= 0.03


def test_match_json_prints_copy_and_background_percentiles(paintings_index, tmp_path, capsys):
    files = list(paintings_index.items["file"][:20])
    for f in files:
        distort(Image.open(AIC / f)).save(tmp_path / f.replace(".jpg", ".png"))
    assert memlab_main(["match", "--index", str(paintings_index.path), "--images", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["queries"]) == 20
    cal = res["summary"]["calibration"]
    assert all(k in cal["copy_percentiles"] and k in cal["background_percentiles"] for k in ("p5", "p50", "p95"))
    assert res["summary"]["replication_rate"] >= 0.85
    for q in res["queries"]:
        assert q["matches"][0]["file"] == q["image"].rsplit("/", 1)[1].replace(".png", ".jpg")


@pytest.mark.skipif(not (ROOT / "assets" / "memlab-copy" / "model.safetensors").is_file(),
                    reason="memlab-copy weights not trained")
def test_memlab_copy_survives_each_transformation_on_held_out_paintings():
    """Issue 10: memlab-copy, never trained on the paintings, finds the original at top-1 for >= 95%
    of copies under each single transformation, and never more than 2 points below pHash."""
    import imagehash

    from memlab.distort import ROBUSTNESS

    files = pd.read_csv(AIC / "captions.csv")["file"].tolist()
    originals = [Image.open(AIC / f).convert("RGB") for f in files]
    d = create_descriptor("memlab-copy")
    base = d.embed(originals)
    base_ph = np.stack([imagehash.phash(im).hash.reshape(-1) for im in originals])
    for name, tf in ROBUSTNESS.items():
        copies = [tf(im) for im in originals]
        top1 = float((np.argmax(d.embed(copies) @ base.T, axis=1) == np.arange(len(files))).mean())
        ph = np.stack([imagehash.phash(im).hash.reshape(-1) for im in copies])
        dist = (ph[:, None, :] != base_ph[None, :, :]).sum(axis=2)
        tied = dist == dist.min(axis=1, keepdims=True)
        ph_top1 = float(np.mean(tied[np.arange(len(files)), np.arange(len(files))] / tied.sum(axis=1)))
        print(f"{name}: memlab-copy {top1:.3f}  pHash {ph_top1:.3f}")
        assert top1 >= 0.95, name
        assert top1 >= ph_top1 - 0.02, name
