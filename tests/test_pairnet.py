"""memlab-verify, the learned verification (``memlab.pairnet``, ``memlab.train_verifier``, ``memlab.verify``'s
network term): its trainer learns copies from pairs and resumes to the same weights, and an index that verifies
with it records the weights, scores with them, and refuses others."""
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from memlab import pairnet, scorenorm, verify
from memlab.errors import MemlabError
from tests.test_verify import reference, scene


def tinted(im: Image.Image, gain=(0.8, 1.0, 1.15)) -> Image.Image:
    return Image.fromarray((np.asarray(im, np.float64) * gain).clip(0, 255).astype(np.uint8))


def pair_file(path, seeds, rng) -> None:
    """Pairs as the trainer reads them: each scene's tinted (or mirrored) copy against the scene (a copy) and
    against two other scenes (not)."""
    q, t, own = [], [], []
    for s in seeds:
        copy = tinted(scene(s), rng.uniform(0.7, 1.3, 3))
        copy = ImageOps.mirror(copy) if rng.random() < 0.3 else copy
        for other, is_own in ((s, True), *[(int(o), False) for o in rng.choice([x for x in seeds if x != s], 2)]):
            q.append(pairnet.pixels(copy))
            t.append(pairnet.pixels(scene(other)))
            own.append(is_own)
    np.savez(path, q=np.stack(q), t=np.stack(t), own=np.array(own))


def auc(pos, neg) -> float:
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.mark.slow
def test_the_trainer_learns_copies_and_resumes_to_the_same_weights(tmp_path):
    from memlab.train_verifier import VerifierTrainConfig, train_verifier
    from memlab.weightfiles import read_tensors

    rng = np.random.default_rng(0)
    pair_file(tmp_path / "train.npz", list(range(100, 180)), rng)
    cfg = dict(pairs=[str(tmp_path / "train.npz")], epochs=4, batch_size=32, lr=3e-3)
    full = train_verifier(VerifierTrainConfig(**cfg, out=str(tmp_path / "full")), log=lambda m: None)
    cut = VerifierTrainConfig(**cfg, out=str(tmp_path / "cut"), stop_at=2)
    assert train_verifier(cut, log=lambda m: None) is None  # stopped: a checkpoint, no weights yet
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    cut.stop_at = 0
    resumed = train_verifier(cut, log=lambda m: None)
    a, b = read_tensors(full / "model.safetensors"), read_tensors(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    net, model = pairnet.load(str(full))
    assert model == pairnet.model_id(full) and model.startswith("memlab-pairnet-")
    # held-out scenes: copies (tinted, or tinted and mirrored) above the other scenes' pairs (chance: 0.5)
    pair_file(tmp_path / "test.npz", list(range(300, 340)), np.random.default_rng(1))
    z = np.load(tmp_path / "test.npz")
    p = pairnet.probability(net, z["q"], z["t"])
    assert auc(p[z["own"]], p[~z["own"]]) > 0.8
    # the mirrored query scores as the query: the better orientation
    assert np.allclose(p, pairnet.probability(net, z["q"][:, :, ::-1], z["t"]), atol=1e-6)
    # the verb trains the same way (one epoch here) and writes the folder memlab-verify loads
    from memlab.cli import main

    assert main(["train-verifier", "--pairs", str(tmp_path / "train.npz"), "--out", str(tmp_path / "verb"),
                 "--epochs", "1", "--batch-size", "32"]) == 0
    assert pairnet.load(str(tmp_path / "verb"))[1] == pairnet.model_id(tmp_path / "verb")


def test_pairs_that_are_not_pairs_are_one_clear_error(tmp_path, capsys):
    from memlab.cli import main
    from memlab.train_verifier import VerifierTrainConfig, load_pairs

    np.savez(tmp_path / "bad.npz", q=np.zeros((2, 32, 32, 3), np.uint8), t=np.zeros((2, 32, 32, 3), np.uint8),
             own=np.array([True, False]))
    with pytest.raises(MemlabError, match="uint8"):
        load_pairs([tmp_path / "bad.npz"])
    np.savez(tmp_path / "obj.npz", q=np.array([object()], dtype=object))
    with pytest.raises(MemlabError, match="not a pairs file"):
        load_pairs([tmp_path / "obj.npz"])  # an object array needs pickle: refused, never unpickled
    with pytest.raises(MemlabError, match="--pairs"):
        VerifierTrainConfig().validate()
    # the verb: one error line, exit 2, nothing written
    assert main(["train-verifier", "--pairs", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out" / "model.safetensors").exists()


def test_a_training_is_resumed_only_from_the_same_settings_and_pairs(tmp_path):
    """A checkpoint made from other pairs or settings is refused, not continued (it would have given weights no
    uninterrupted run of the asked training gives)."""
    from memlab.train_verifier import VerifierTrainConfig, train_verifier

    pair_file(tmp_path / "a.npz", list(range(100, 110)), np.random.default_rng(0))
    pair_file(tmp_path / "b.npz", list(range(200, 210)), np.random.default_rng(1))
    cfg = dict(epochs=3, batch_size=8, stop_at=1, out=str(tmp_path / "run"))
    assert train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "a.npz")], **cfg), log=lambda m: None) is None
    with pytest.raises(MemlabError, match="other pairs"):
        train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "b.npz")], **cfg), log=lambda m: None)
    with pytest.raises(MemlabError, match="other lr"):
        train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "a.npz")], **{**cfg, "lr": 1e-3}), log=lambda m: None)
    # started over (--no-resume) with the other pairs, their checkpoint is the one a later run resumes
    assert train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "b.npz")], **cfg), resume=False,
                          log=lambda m: None) is None
    with pytest.raises(MemlabError, match="other pairs"):
        train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "a.npz")], **cfg), log=lambda m: None)
    train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "a.npz")], **cfg), resume=False, log=lambda m: None)
    # the same pairs and settings resume (and stop_at is no setting of the weights)
    done = train_verifier(VerifierTrainConfig(pairs=[str(tmp_path / "a.npz")], **{**cfg, "stop_at": 0}),
                          log=lambda m: None)
    assert (done / "model.safetensors").is_file()
    assert json.loads((done / "train_card.json").read_text())["resumed_from"] == 1


def random_network(folder, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    return pairnet.save(pairnet.build(pairnet.PairNetConfig()).eval(), pairnet.PairNetConfig(), folder)


def test_an_index_verifies_with_the_network_records_its_weights_and_refuses_others(tmp_path, monkeypatch):
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex
    from memlab.match import match_images
    from tests.test_verify import scene_index

    model = random_network(tmp_path / "net", 0)
    monkeypatch.setenv("MEMLAB_VERIFY_WEIGHTS", str(tmp_path / "net"))
    d = create_descriptor("memlab-copy")
    d.score_norm = {**d.score_norm, "verify": scorenorm.NETWORK_VERIFY}
    ims = scene_index(tmp_path, 30, d, 15)
    idx = TrainingIndex.load(tmp_path / "i")
    spec = idx.descriptor_info("memlab-copy")["score_norm"]
    assert spec["verify"] == {**scorenorm.check_verify(scorenorm.NETWORK_VERIFY), "model": model}
    assert "memlab-verify" in spec["words"] and model in spec["words"]
    # the threshold: the 99% point of the verified background, recomputed by brute force: the detail correlation
    # (as the masked similarity computes it) and the network's probability
    net, _ = pairnet.load()
    v = np.asarray(idx.vectors("memlab-copy"), np.float32)
    distinct = idx.items["distinct"].to_numpy()
    reps = np.flatnonzero(idx.items["representative"].to_numpy())
    views = scorenorm.view_vectors(d, [ims[r] for r in reps], spec)
    ver = spec["verify"]
    w, nw, m = ver["weight"], ver["network_weight"], ver["candidates"]
    bg = []
    for i, r in enumerate(reps):
        best = None
        for q in [v[r], *[x[i] for x in views]]:
            got = verify.candidates(q @ v.T, distinct, distinct[r], spec, m)
            best = got if best is None or got[1][0] > best[1][0] else best
        prob = pairnet.probability(net, np.stack([pairnet.pixels(ims[r])] * len(best[0])),
                                   np.stack([pairnet.pixels(ims[int(x)]) for x in best[0]]))
        corr = [reference(ims[r], ims[int(x)], ver["sigma"], ver["region"]) for x in best[0]]
        bg.append(float(np.max(best[1] + w * np.array(corr) + nw * prob)))
    assert idx.threshold("memlab-copy")["value"] == pytest.approx(float(np.quantile(bg, 0.99, method="higher")), abs=1e-4)
    # a match's score is its normalized score plus the weight x the network's probability, recomputed
    query = tinted(scene(7))
    top = match_images(idx, d, [query], ["tinted"], k=3)["queries"][0]["matches"][0]
    own = pairnet.probability(net, pairnet.pixels(query)[None], pairnet.pixels(ims[int(top["row"])])[None])[0]
    assert top["network"] == pytest.approx(own, abs=1e-5)
    assert top["detail"] == pytest.approx(reference(query, ims[int(top["row"])], ver["sigma"], ver["region"]), abs=1e-4)
    assert top["score"] == pytest.approx(top["normalized"] + w * top["detail"] + nw * top["network"], abs=1e-5)
    # other weights in the same place: the index refuses them rather than score with a network it never calibrated
    random_network(tmp_path / "net", 1)
    with pytest.raises(MemlabError, match="calibrated with the verification network"):
        match_images(idx, d, [query], ["tinted"], k=3)
    # a rule naming another network, or a malformed model string, is refused when read
    for bad in ({**scorenorm.NETWORK_VERIFY, "network": "/etc"},
                {**scorenorm.NETWORK_VERIFY, "model": "memlab-pairnet-../../x"},
                {**scorenorm.NETWORK_VERIFY, "network_weight": 0}, {**scorenorm.NETWORK_VERIFY, "weight": 0}):
        with pytest.raises(MemlabError):
            scorenorm.check_verify(bad)


def test_a_resumed_build_refuses_an_index_verified_otherwise(tmp_path):
    """``build-world --verify``: a build resumed over an index it made keeps that index only when the index was
    verified as asked (with or without memlab-verify); before, the other rule was kept without a word."""
    from memlab.buildworld import _check_resumed_index

    for made, asked in (("detail", "memlab-verify"), ("memlab-verify", "detail")):
        index = tmp_path / made
        index.mkdir()
        rule = scorenorm.VERIFY_RULES[made]
        (index / "manifest.json").write_text(json.dumps({"descriptors": {"memlab-copy": {"score_norm": {
            **scorenorm.DEFAULT, "verify": rule}}}}))
        _check_resumed_index(index, "memlab-copy", False, made)
        with pytest.raises(MemlabError, match=f"--verify {asked}"):
            _check_resumed_index(index, "memlab-copy", False, asked)


def test_build_worlds_index_stage_verifies_as_verify_asks(tmp_path, monkeypatch):
    """``build-world --verify`` reaches the index: ``memlab-verify`` puts the network (its weights' checksum) in the
    memlab-copy rule the index calibrates and scores with, ``detail`` leaves it out; a resumed build then keeps
    that index only when asked for the same rule."""
    import pandas as pd

    from memlab.buildworld import _check_resumed_index, _index, _Stages
    from memlab.index import TrainingIndex
    from memlab.worldgen import WorldSpec

    model = random_network(tmp_path / "net", 2)
    monkeypatch.setenv("MEMLAB_VERIFY_WEIGHTS", str(tmp_path / "net"))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for i in range(10):
        scene(40 + i).save(data / "images" / f"{i:04d}.png")
    rows = pd.DataFrame({"id": range(10), "item": range(10), "caption": ["a scene"] * 10,
                         "file": [f"images/{i:04d}.png" for i in range(10)], "source": ["procedural"] * 10,
                         "template": [-1] * 10})
    for rule in ("memlab-verify", "detail"):
        out = tmp_path / rule
        _index(out, rows.copy(), data, WorldSpec(), ["memlab-copy"], 0, _Stages(out / "build", lambda m: None), None,
               verify=rule)
        ver = TrainingIndex.load(out / "index").descriptor_info("memlab-copy")["score_norm"]["verify"]
        if rule == "memlab-verify":
            assert ver == {**scorenorm.check_verify(scorenorm.NETWORK_VERIFY), "model": model}
        else:
            assert "network" not in ver and ver == scorenorm.check_verify(scorenorm.VERIFY)
        _check_resumed_index(out / "index", "memlab-copy", False, rule)
        with pytest.raises(MemlabError):
            _check_resumed_index(out / "index", "memlab-copy", False, ({"detail", "memlab-verify"} - {rule}).pop())
