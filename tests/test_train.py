"""The trainer on a few steps of the tiny configuration, its controls, and the generated set."""
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from memlab.descriptors import create_descriptor
from memlab.errors import MemlabError
from memlab.metrics import background
from memlab.train import TrainConfig, latest_checkpoint, make_caption, sampling_weights, train
from memlab.worldgen import HIDDEN_OBJECT, WorldSpec, make_training_set, probes

SMALL = WorldSpec(n_scenes=16, crops_per_photo=1, n_lighthouses=10, ddf_high=4, ddf_low=2, per_group=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    rows, ims = make_training_set(SMALL)
    (d / "images").mkdir()
    for i, im in enumerate(ims):
        im.save(d / f"images/{i:04d}.png")
    rows["alt_captions"] = [[c + " (variant a)", c + " (variant b)"] for c in rows["caption"]]
    rows.to_parquet(d / "train.parquet")
    return d / "train.parquet"


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), pipeline="tiny", steps=30, batch_size=4, lr=2e-3, warmup=3,
                vae_steps=0, checkpoint_every=10, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_and_resume_continues(dataset, tmp_path):
    out = tmp_path / "run"
    train(_cfg(dataset, out, steps=24, log_every=6, checkpoint_every=12))
    log = pd.read_csv(out / "loss.csv")
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    card = json.loads((out / "run_card.json").read_text())
    assert card["steps"] == 24 and len(card["data_hash"]) == 64 and card["seed"] == 0
    assert (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert latest_checkpoint(out).name == "step-24"

    # interrupted at step 12, resumed: the weights equal the uninterrupted run's
    out2 = tmp_path / "resumed"
    assert train(_cfg(dataset, out2, steps=24, log_every=6, checkpoint_every=12, stop_at=12)) is None
    assert latest_checkpoint(out2).name == "step-12" and not (out2 / "pipeline").exists()
    # a checkpoint made with other settings is refused, not continued (it would give weights no run gives)
    with pytest.raises(MemlabError, match="other lr"):
        train(_cfg(dataset, out2, steps=24, log_every=6, checkpoint_every=12, lr=1e-3))
    train(_cfg(dataset, out2, steps=24, log_every=6, checkpoint_every=12))
    assert json.loads((out2 / "run_card.json").read_text())["resumed_from"] == 12
    from safetensors.torch import load_file

    for f in ("unet.safetensors", "text_encoder.safetensors", "optimizer.safetensors"):  # bit for bit
        a = load_file(str(out / "checkpoints" / "step-24" / f))
        b = load_file(str(out2 / "checkpoints" / "step-24" / f))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), f
    assert list(pd.read_csv(out2 / "loss.csv")["step"]) == [6, 12, 18, 24]
    # the pipeline is saved file for file the same however the run was cut: resumed midway, or killed after its
    # last checkpoint (before the pipeline was written: the rerun trains no step; the tokenizer, never called
    # then, saved no padding or truncation where the uninterrupted run's saved its last call's)
    saved = _files(out / "pipeline")
    assert _files(out2 / "pipeline") == saved
    shutil.rmtree(out / "pipeline")
    (out / "run_card.json").unlink()
    train(_cfg(dataset, out, steps=24, log_every=6, checkpoint_every=12))
    assert json.loads((out / "run_card.json").read_text())["resumed_from"] == 24
    assert _files(out / "pipeline") == saved


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_memlab_train_records_its_own_command_line(dataset, tmp_path, capfd):
    """The run card names the arguments ``memlab train`` was given, not the caller's (it read sys.argv)."""
    from tests.helpers import run_in_process

    argv = ["train", "--data", str(dataset), "--pipeline", "tiny", "--steps", "4", "--batch-size", "2",
            "--vae-steps", "0", "--checkpoint-every", "4", "--log-every", "2", "--out", str(tmp_path / "cli")]
    assert run_in_process(capfd, argv).returncode == 0
    card = json.loads((tmp_path / "cli" / "run_card.json").read_text())
    assert card["command"].startswith("python -m memlab train --data ") and card["command"].endswith(
        f"--out {tmp_path / 'cli'}") and card["steps"] == 4


def test_fine_tunes_a_pipeline_saved_in_fp16(dataset, tmp_path):
    """A folder stored in fp16 (as the built-in world's model, ``--save-dtype fp16``) is fine-tuned in fp32: it
    loaded its text encoder in fp16 beside an fp32 UNet and the first step failed on the mismatch."""
    from safetensors import safe_open

    train(_cfg(dataset, tmp_path / "base", steps=2, save_dtype="fp16"))
    with safe_open(str(tmp_path / "base" / "pipeline" / "text_encoder" / "model.safetensors"), "pt") as f:
        assert str(f.get_tensor(next(iter(f.keys()))).dtype) == "torch.float16"  # stored as the world's is
    out = train(_cfg(dataset, tmp_path / "tuned", pipeline=str(tmp_path / "base" / "pipeline"), steps=4,
                     log_every=2))
    log = pd.read_csv(tmp_path / "tuned" / "loss.csv")
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and np.isfinite(log["loss"]).all()


def test_duplication_controls():
    cfg = TrainConfig(ddf=5, dup_share=0.1, seed=1)
    w, dup = sampling_weights(100, cfg)
    assert dup.sum() == 10 and set(w[dup]) == {5.0} and set(w[~dup]) == {1.0}
    assert sampling_weights(100, TrainConfig())[1].sum() == 0


def test_caption_controls_change_what_they_should():
    import random

    from memlab.pipelines import clip_tokenizer

    tok = clip_tokenizer()
    row = pd.Series({"caption": "a red circle on a blue background", "class": "circle",
                     "alt_captions": ["alt one", "alt two", "alt three"]}, name=3)
    rng = random.Random(0)
    full = TrainConfig(uncond_prob=0, dup_mode="full")
    partial = TrainConfig(uncond_prob=0, dup_mode="partial")
    assert {make_caption(row, True, full, rng, tok, {}) for _ in range(20)} == {row["caption"]}
    assert {make_caption(row, True, partial, rng, tok, {}) for _ in range(60)} == set(row["alt_captions"])
    assert {make_caption(row, False, partial, rng, tok, {}) for _ in range(10)} == {row["caption"]}
    assert make_caption(row, False, TrainConfig(uncond_prob=0, caption_style="class"), rng, tok, {}) == \
        "An image of circle"
    assert make_caption(row, False, TrainConfig(uncond_prob=0, caption_style="fixed"), rng, tok, {}) == "an image"
    # random: 6 tokens per image, one key per distinct image shared by its duplicate rows
    rnd = TrainConfig(uncond_prob=0, caption_style="random")
    a = pd.Series({"caption": "first row", "file": "images/0007.png"}, name=1)
    a_dup = pd.Series({"caption": "another caption", "file": "images/0007.png"}, name=9)
    b = pd.Series({"caption": "first row", "file": "images/0008.png"}, name=2)
    cache = {}
    r1 = make_caption(a, False, rnd, rng, tok, cache)
    assert len(tok(r1, add_special_tokens=False).input_ids) >= 6 and len(r1.split()) >= 1
    assert make_caption(a_dup, False, rnd, rng, tok, cache) == r1  # duplicate row: the same key
    assert make_caption(a_dup, False, rnd, rng, tok, {}) == r1     # and deterministic without the cache
    assert make_caption(b, False, rnd, rng, tok, cache) != r1
    rep = make_caption(row, False, TrainConfig(uncond_prob=0, word_rep=1.0), rng, tok, {})
    assert len(rep.split()) == len(row["caption"].split()) + 2
    rt = make_caption(row, False, TrainConfig(uncond_prob=0, rand_tokens=1.0), rng, tok, {})
    assert rt != row["caption"] and all(w in rt.split() for w in row["caption"].split())
    assert make_caption(row, False, TrainConfig(uncond_prob=1.0), rng, tok, {}) == ""
    mc = {make_caption(row, False, TrainConfig(uncond_prob=0, mc=1.0), rng, tok, {}) for _ in range(60)}
    assert mc == {row["caption"], *row["alt_captions"]}


def test_config_validation(dataset, tmp_path):
    with pytest.raises(MemlabError, match="dup_mode"):
        TrainConfig(dup_mode="half").validate()
    with pytest.raises(MemlabError, match="probability"):
        TrainConfig(gni=2).validate()
    with pytest.raises(MemlabError, match="does not exist"):
        train(_cfg(tmp_path / "none.parquet", tmp_path / "o"))
    with pytest.raises(MemlabError, match="cpu or cuda"):
        TrainConfig(device="tpu").validate()
    with pytest.raises(MemlabError, match="neither a config .*tiny.*world"):  # a mistyped config, not a Hub lookup
        train(_cfg(dataset, tmp_path / "typo", pipeline="wrold"))
    assert not (tmp_path / "typo").exists()
    import torch

    if not torch.cuda.is_available():  # asked for a GPU that is not there: said before any work
        with pytest.raises(MemlabError, match="no CUDA GPU"):
            train(dataclasses.replace(_cfg(dataset, tmp_path / "o"), device="cuda"))
        assert not (tmp_path / "o" / "vae").exists()


def test_checkered_backgrounds_each_have_their_own_grid():
    """Cell size and phase vary per scene (a shared grid made a bare grid look like a copy of any
    checkered scene), drawn without changing what the rest of the world draws."""
    import random

    from memlab.worldgen import _background

    grids = set()
    for seed in range(12):
        a = np.asarray(_background(random.Random(seed), "checkered", (0, 0, 0), (255, 255, 255)))[..., 0] > 0
        rows, cols = np.flatnonzero(np.diff(a[:, 0].astype(int))), np.flatnonzero(np.diff(a[0].astype(int)))
        grids.add((int(rows[0]), int(cols[0]), int(np.diff(rows).min()) if len(rows) > 1 else 0))
    assert len(grids) >= 10
    r1, r2 = random.Random(5), random.Random(5)
    _background(r1, "checkered", (0, 0, 0), (255, 255, 255))
    r2.choice([43, 64, 86])
    assert r1.random() == r2.random()  # one draw from the world's generator, as before


def test_generated_set_is_deterministic_and_planted():
    a, ims_a = make_training_set(SMALL)
    b, ims_b = make_training_set(SMALL)
    assert a.equals(b) and all(x.tobytes() == y.tobytes() for x, y in zip(ims_a, ims_b))
    c, _ = make_training_set(WorldSpec(**{**SMALL.__dict__, "seed": 1}))
    assert not a["caption"].equals(c["caption"])
    counts = a.groupby("planted")["item"].agg(["nunique", "size"])
    assert counts.loc["full_ddf4", "size"] == 2 * 4 and counts.loc["partial_ddf2", "size"] == 2 * 2
    full = a[a["planted"] == "full_ddf4"].groupby("item")["caption"].nunique()
    partial = a[a["planted"] == "partial_ddf4"].groupby("item")["caption"].nunique()
    assert (full == 1).all() and (partial == 4).all()  # partial: a different caption per copy
    # ... in other words: the copies' captions share few words with the item's own (probe) caption
    for _, g in a[a["planted"].str.startswith("partial")].groupby("item"):
        own = set(g["caption"].iloc[0].replace(",", " ").split())
        overlap = [len(own & set(c.replace(",", " ").split())) / len(own) for c in g["caption"].iloc[1:]]
        assert max(overlap) < 0.8 and sum(overlap) / len(overlap) < 0.5
    kw = a[a["keyword"] == "lighthouse"]
    assert kw["objects"].str.contains(HIDDEN_OBJECT).mean() == pytest.approx(SMALL.flag_share)
    assert not kw["caption"].str.contains(HIDDEN_OBJECT).any()  # never named
    assert len(ims_a) >= 16 + 10 and ims_a[0].size == (64, 64)
    p = probes(a)
    assert set(p["group"]) == {"unique", "full_ddf4", "full_ddf2", "partial_ddf4", "partial_ddf2", "keyword", "template"}


def test_full_set_has_500_distinct_images():
    rows, ims = make_training_set(WorldSpec())
    assert rows["item"].nunique() == len(ims) >= 500
    assert rows["source"].str.contains("scikit-image").any()
    # distinct under the world's descriptor: few images have a near twin (the calibrated threshold
    # sits at the 99th percentile of this background)
    nn = background(create_descriptor("pixel").embed(ims))
    assert np.median(nn) < 0.75 and np.quantile(nn, 0.95) < 0.92


def test_templates_are_planted_last_and_change_nothing_else():
    """Issue 32 item 1: the template group's rows share one caption per template and a frame outside their
    window, with a different picture inside each; the world without templates is the same image for image."""
    plain, ims_plain = make_training_set(dataclasses.replace(SMALL, n_templates=0))
    rows, ims = make_training_set(dataclasses.replace(SMALL, n_templates=2, template_ddf=4))
    rest = rows[rows["template"] < 0].reset_index(drop=True)
    assert rest[list(plain.columns)].equals(plain)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ims_plain, ims)) and len(ims) == len(ims_plain) + 8
    t = rows[rows["template"] >= 0]
    assert (t["planted"] == "template").all() and t.groupby("template")["caption"].nunique().eq(1).all()
    assert t["caption"].nunique() == 2 and t["item"].nunique() == 8
    x0, y0, x1, y1 = (int(v) for v in t["regions"].iloc[0][len("window:"):].split(","))
    pics = [np.asarray(ims[i], np.int16) for i in t[t["template"] == 0]["item"]]
    outside = np.ones((64, 64), bool)
    outside[y0 - 2:y1 + 2, x0 - 2:x1 + 2] = False  # (the window's edge is resampled with its picture)
    assert all(np.abs(p[outside] - pics[0][outside]).max() <= 2 for p in pics[1:])  # the template repeats
    assert all(np.abs(p[y0:y1, x0:x1] - pics[0][y0:y1, x0:x1]).mean() > 10 for p in pics[1:])  # its content not
    p = probes(rows)
    assert (p["group"] == "template").sum() == 2 and set(p[p["group"] == "template"]["template"]) == {0, 1}
