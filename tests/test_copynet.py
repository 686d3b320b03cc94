"""memlab's own copy descriptor: the network's persistence, exact flip invariance, the SSCD-style
losses on hand-made arrays, the trainer's bit-exact resume, and the registered descriptor."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import synthetic_images
from memlab.copynet import CopyNet, CopyNetConfig, load_copynet, to_input
from memlab.descriptors import create_descriptor
from memlab.errors import MemlabError, ModelFileMissing
from memlab.train_descriptor import DescriptorTrainConfig, entropy_regulariser, info_nce, train_descriptor

TINY = dict(widths=[8, 12, 16], dim=16, input_size=32)


def _tiny_train_cfg(out, **kw):
    return DescriptorTrainConfig(out=str(out), steps=4, batch_size=6, n_scenes=12, n_lighthouses=2, warmup=2, sibling_pairs=3,
                                 crops_per_photo=2, checkpoint_every=2, log_every=1, threads=1, **TINY, **kw)


def test_save_load_round_trip_and_flip_invariance(tmp_path):
    torch.manual_seed(0)
    net = CopyNet(CopyNetConfig(**TINY)).eval()
    net.save_pretrained(tmp_path / "w")
    assert json.loads((tmp_path / "w" / "config.json").read_text())["dim"] == 16
    assert not list((tmp_path / "w").glob("*.bin")) and (tmp_path / "w" / "model.safetensors").is_file()
    again = load_copynet(tmp_path / "w")
    ims = synthetic_images(4)
    x = to_input(ims, 32)
    with torch.no_grad():
        a, b = net(x), again(x)
        flipped = again(torch.flip(x, dims=[3]))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(flipped, a, atol=1e-5)  # a mirrored copy has its original's descriptor
    with pytest.raises(ModelFileMissing):
        load_copynet(tmp_path / "nothing-here")


def test_info_nce_rewards_matching_views_and_entropy_rewards_spread():
    torch.manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    aligned = torch.cat([z1, z1])                       # each view's positive is identical to it
    shuffled = torch.cat([z1, z1[torch.randperm(8)]])   # positives are other images
    assert info_nce(aligned, 0.05) < 0.1 < info_nce(shuffled, 0.05)
    spread = torch.eye(16)[:8]                           # orthogonal: nearest neighbour at sqrt(2)
    clumped = torch.nn.functional.normalize(torch.ones(8, 16) + 0.01 * torch.randn(8, 16), dim=1)
    assert entropy_regulariser(spread) == pytest.approx(-np.log(np.sqrt(2)), abs=1e-4)
    assert entropy_regulariser(clumped) > entropy_regulariser(spread) + 2


def test_aligned_views_keep_their_geometry_and_the_layout_term_tells_images_apart():
    """``augment.aligned_pair``: one crop and mirror for both views, so a bright square lands in the same
    place in both whatever the colour cast; ``layout_nce`` scores aligned views of the same image below the
    same views paired with other images'."""
    import random

    from PIL import Image, ImageDraw

    from memlab.augment import aligned_pair
    from memlab.train_descriptor import layout_nce

    rng = random.Random(0)
    im = Image.new("RGB", (128, 128), (10, 10, 10))
    ImageDraw.Draw(im).rectangle((16, 72, 48, 104), fill=(250, 250, 250))

    def centre(v):
        lum = np.asarray(v, np.float32).mean(axis=2)
        ys, xs = np.nonzero(lum >= (np.median(lum) + lum.max()) / 2)
        return np.array([ys.mean(), xs.mean()])
    gaps = [np.abs(centre(a) - centre(b)).max() for a, b in (aligned_pair(im, im, rng, 64) for _ in range(30))]
    assert np.median(gaps) < 2.0 and max(gaps) < 6.0
    torch.manual_seed(0)
    net = CopyNet(CopyNetConfig(**TINY)).eval()
    pairs = [aligned_pair(x, x, rng, 32) for x in synthetic_images(8)]
    first, second = to_input([a for a, _ in pairs], 32), to_input([b for _, b in pairs], 32)
    with torch.no_grad():
        same = layout_nce(net, first, second, 0.1, 1.0)
        others = layout_nce(net, first, second[torch.roll(torch.arange(8), 1)], 0.1, 1.0)
    assert same < others


def test_worker_processes_draw_every_step_in_order_with_the_same_views(tmp_path):
    """``prefetched`` with workers yields one entry per step, in order, equal to the views drawn in line, also
    when there are more steps than it keeps ahead (a step lost there once shifted every later one)."""
    from memlab import train_descriptor as td

    cfg = _tiny_train_cfg(tmp_path, layout_weight=1.0, layout_images=2)
    pool, photos = td.make_pool(cfg), list(td.load_photos().values())
    photo_pool = [[(im, None) for im in crops] for crops in td.make_photo_pool(photos, cfg.crops_per_photo, 0)]
    td.use_pool(cfg, [(im, None) for im in pool], photo_pool, photos)
    inline = list(td.prefetched(range(3, 10), 0))
    assert len(inline) == 7 and not torch.equal(inline[0][0], inline[1][0])
    for workers in (1, 2):
        made = list(td.prefetched(range(3, 10), workers))
        assert len(made) == 7
        for (v, (a, b)), (v2, (a2, b2)) in zip(inline, made):
            assert torch.equal(v, v2) and torch.equal(a, a2) and torch.equal(b, b2)


@pytest.mark.kill
def test_killed_training_resumes_to_the_same_weights(tmp_path, tiny_pipeline_dir):
    """With a real decoder's round trips among the views (the tiny pipeline's VAE), a training stopped
    half way and resumed ends with the weights of an uninterrupted one, also when the resumed half draws its
    views in two worker processes (``workers``) and the uninterrupted one in line."""
    from safetensors.torch import load_file

    kw = {"decoder": str(tiny_pipeline_dir), "decoder_share": 0.5, "colour_cast": 0.5, "layout_weight": 1.0,
          "layout_images": 4}
    whole = train_descriptor(_tiny_train_cfg(tmp_path / "whole", **kw), log=lambda m: None)
    assert train_descriptor(_tiny_train_cfg(tmp_path / "split", stop_at=2, **kw), log=lambda m: None) is None
    split = train_descriptor(_tiny_train_cfg(tmp_path / "split", workers=2, **kw), log=lambda m: None)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((split / "train_card.json").read_text())
    assert card["resumed_from"] == 2 and card["steps"] == 4 and card["decoder"] == str(tiny_pipeline_dir)
    log = pd.read_csv(split / "loss.csv")
    assert len(log) == 4 and (log["layout"] > 0).all()  # the layout term ran
    # the weights changed from their initialization
    torch.manual_seed(0)
    init = CopyNet(CopyNetConfig(**TINY)).state_dict()
    assert not torch.equal(init["proj.weight"], a["proj.weight"])


def test_a_checkpoint_exports_as_weights_with_its_own_step(tmp_path, capsys):
    """``--export-checkpoint``: a run cut short (or a checkpoint chosen on validation copies) gives weights
    equal to that checkpoint's, and a card that names its step beside the planned ones."""
    from safetensors.torch import load_file

    from memlab.cli import main

    out = tmp_path / "cut"
    assert train_descriptor(_tiny_train_cfg(out, stop_at=2), log=lambda m: None) is None
    with pytest.raises(MemlabError, match="other grayscale, lr"):  # resumed only under the settings it was made with
        train_descriptor(_tiny_train_cfg(out, lr=1e-4, grayscale=0.0), log=lambda m: None)
    args = ["train-descriptor", "--out", str(out), "--steps", "4", "--batch-size", "6", "--n-scenes", "12",
            "--n-lighthouses", "2", "--warmup", "2", "--sibling-pairs", "3", "--crops-per-photo", "2",
            "--checkpoint-every", "2", "--log-every", "1", "--threads", "1", "--widths",
            ",".join(map(str, TINY["widths"])), "--dim", str(TINY["dim"]), "--input-size", str(TINY["input_size"])]
    assert main(args + ["--export-checkpoint", "0"]) == 0
    ck, w = load_file(str(out / "checkpoints" / "step-2" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert ck.keys() == w.keys() and all(torch.equal(ck[k], w[k]) for k in ck)
    card = json.loads((out / "train_card.json").read_text())
    assert card["steps"] == 2 and card["planned_steps"] == 4 and card["exported_from"] == "checkpoints/step-2"
    log = pd.read_csv(out / "loss.csv")
    assert card["final_loss"] == pytest.approx(float(log.loc[log["step"] == 2, "loss"].iloc[0]))
    assert main(args + ["--export-checkpoint", "3"]) == 2  # no such checkpoint: a one-line error (exit 2)
    assert "no checkpoint step-3" in capsys.readouterr().err


def test_bad_device_or_workers_is_a_one_line_error(tmp_path):
    """A device that is not cpu / cuda, negative workers, or cuda where torch sees no GPU: a MemlabError before
    any work (the CLI prints it as one line), not a traceback from torch."""
    from memlab.errors import MemlabError

    for kw in ({"device": "tpu"}, {"workers": -1}):
        with pytest.raises(MemlabError):
            _tiny_train_cfg(tmp_path / "bad", **kw).validate()
    if not torch.cuda.is_available():
        with pytest.raises(MemlabError, match="no CUDA GPU"):
            train_descriptor(_tiny_train_cfg(tmp_path / "cuda", device="cuda"), log=lambda m: None)
        assert not (tmp_path / "cuda").exists()


def test_cli_trains_and_the_registered_descriptor_loads_it(tmp_path, capsys):
    from memlab.cli import main
    from memlab.index import TrainingIndex, build_index
    from memlab.match import descriptor_for_index

    out = tmp_path / "copy"
    assert main(["train-descriptor", "--out", str(out), "--steps", "2", "--batch-size", "4", "--n-scenes", "8",
                 "--crops-per-photo", "2",
                 "--n-lighthouses", "1", "--widths", "8,12", "--dim", "16", "--input-size", "32",
                 "--threads", "1"]) == 0
    assert "min" in capsys.readouterr().err  # the wall time is printed
    d = create_descriptor("memlab-copy", weights=str(out))
    dim = 16 + 12 * 16 * 16  # the global descriptor and the layout map (12 channels, 32 px halved once)
    assert d.kind == "learned" and d.dim == dim and d.model.startswith("memlab-copynet-16d-")
    ims = synthetic_images(12)
    v = d.embed(ims)
    assert v.shape == (12, dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    items = pd.DataFrame({"id": range(12), "caption": ["c"] * 12, "file": [f"{i}.png" for i in range(12)]})
    d.duplicate_threshold = 0.99999  # two training steps do not separate images yet: keep them distinct
    build_index(tmp_path / "idx", items, lambda i: ims[i], [d], calib_n=12)
    idx = TrainingIndex.load(tmp_path / "idx")
    again = descriptor_for_index(idx)  # rebuilt from the manifest's config
    assert np.allclose(again.embed(ims[:2]), v[:2], atol=1e-6)
    assert idx.threshold()["source"] == "calibrated"


def test_layout_verdict_sees_where_things_are(tmp_path):
    """memlab-copy's rows hold the trunk's last two feature maps beside the global descriptor (spatial
    verification): a square moved from the top to the bottom of the same background pools alike (the
    global cosine) but is not laid out alike; the row's cosine, search score and verdict, is the mean
    of the global and the two layout cosines."""
    from PIL import Image, ImageDraw

    torch.manual_seed(0)
    CopyNet(CopyNetConfig(**TINY)).eval().save_pretrained(tmp_path / "w")
    d = create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0)
    g = create_descriptor("memlab-copy-global", weights=str(tmp_path / "w"))
    assert d.verdict == g.verdict == "cosine" and d.dim == 16 + 12 * 8 * 8 + 16 * 8 * 8
    assert d.config()["layout"] is True and "+layout-12x8x8+16x8x8" in d.preset

    def scene(y):  # a red square at height y, on the left of a grey background
        im = Image.new("RGB", (64, 64), (128, 128, 128))
        ImageDraw.Draw(im).rectangle([6, y, 22, y + 16], fill=(220, 30, 30))
        return im
    ims = [scene(4), scene(44), scene(6)]
    v = d.embed(ims)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    extra = d.secondary_scores(v[0], v)
    glob, lay = extra["global"], extra["layout"]
    assert np.allclose(glob, g.embed(ims) @ g.embed(ims[:1])[0], atol=1e-5)  # memlab-copy-global's cosine
    assert lay[0] == pytest.approx(1.0, abs=1e-5)
    assert lay[1] < glob[1] - 0.05  # pooled alike, laid out differently
    assert lay[2] > lay[1]  # moved by 2 px: laid out alike
    gl, fine, last = d._split(v)
    assert np.allclose(lay, (fine @ fine[0] + last @ last[0]) / 2, atol=1e-5)
    assert np.allclose(v @ v[0], (glob + 2 * lay) / 3, atol=1e-5)  # the cosine: the mean of the three


def _scene(x, y):
    """A red square at (x, y) and a blue disc at the lower right, on grey: moved or mirrored, laid out otherwise."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(im).rectangle([x, y, x + 16, y + 16], fill=(220, 30, 30))
    ImageDraw.Draw(im).ellipse([40, 40, 60, 60], fill=(20, 30, 200))
    return im


def test_mirrored_layout_verdict_takes_the_better_orientation(tmp_path):
    """memlab-copy with ``mirror``: a row also holds its mirror image's layout, and the verdict compares the
    query's layout with the item's own or, if better, its mirror image's: a mirrored scene scores as the scene
    itself, an unmirrored comparison keeps the plain verdict (the mean of global and layout cosines), and a
    scene laid out otherwise stays below both."""
    from PIL import ImageOps

    torch.manual_seed(0)
    CopyNet(CopyNetConfig(**TINY)).eval().save_pretrained(tmp_path / "w")
    plain = create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0)
    d = create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0, mirror=True)
    assert d.verdict == "layout-or-mirrored" and "-and-mirrored" in d.preset and d.config()["mirror"] is True
    assert d.dim == 16 + 2 * (12 * 8 * 8 + 16 * 8 * 8)

    ims = [_scene(6, 4), ImageOps.mirror(_scene(6, 4)), _scene(6, 44)]
    v, p = d.embed(ims), plain.embed(ims)
    s = d.verdict_scores(v[0], v)
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    assert s[1] == pytest.approx(1.0, abs=1e-4)  # the mirror image: layout compared with the mirrored layout
    assert p[1] @ p[0] < 0.999  # the plain verdict does not see it
    assert s[2] >= p[2] @ p[0] - 1e-5  # never below the plain verdict
    assert s[2] < s[1] - 0.01
    g, lay = d._parts(v[0], v)
    assert np.allclose(s, (g + 2 * lay) / 3, atol=1e-5)


def test_a_folded_layout_embeds_an_image_and_its_mirror_image_alike(tmp_path):
    """memlab-copy with ``fold``: one vector a row (the verdict is its cosine), the same for a scene and its mirror
    image, while a scene laid out otherwise (moved down) still scores below it; ``mirror`` and ``fold`` exclude
    each other."""
    from PIL import ImageOps

    from memlab.errors import MemlabError

    torch.manual_seed(0)
    CopyNet(CopyNetConfig(**TINY)).eval().save_pretrained(tmp_path / "w")
    d = create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0, fold=True)
    plain = create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0)
    assert "-mirror-folded" in d.preset and d.config()["fold"] is True and d.dim == plain.dim

    ims = [_scene(6, 4), ImageOps.mirror(_scene(6, 4)), _scene(6, 44)]
    v, p = d.embed(ims), plain.embed(ims)
    assert np.allclose(v[0], v[1], atol=1e-5) and p[1] @ p[0] < 0.999
    assert v[2] @ v[0] < v[1] @ v[0] - 0.01
    assert np.allclose(d.verdict_scores(v[0], v), v @ v[0], atol=1e-6)
    with pytest.raises(MemlabError, match="choose one"):
        create_descriptor("memlab-copy", weights=str(tmp_path / "w"), mirror=True, fold=True)


def test_colour_normalizations_remove_what_they_name():
    """``copynet.normalize_colour``: ``standardize`` removes any gain and offset per channel, ``grey-world`` a
    gain per channel, ``brightness`` one gain for the whole image; each leaves the image otherwise alone."""
    from memlab.copynet import normalize_colour

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 0.6 + 0.2
    gain, offset = torch.tensor([0.6, 1.1, 0.8]).view(1, 3, 1, 1), torch.tensor([0.05, -0.02, 0.1]).view(1, 3, 1, 1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    n = lambda t, m: normalize_colour(t, m, mean, std, eps=0.0)  # noqa: E731
    assert torch.allclose(n(x * gain + offset, "standardize"), n(x, "standardize"), atol=1e-5)
    assert torch.allclose(n(x * gain, "grey-world"), n(x, "grey-world"), atol=1e-5)
    assert torch.allclose(n(x * 0.55, "brightness"), n(x, "brightness"), atol=1e-5)
    assert not torch.allclose(n(x * gain, "brightness"), n(x, "brightness"), atol=1e-3)  # a tint is not removed
    out = n(x, "standardize")
    assert torch.allclose(out.mean(dim=(2, 3)).flatten(), torch.tensor(mean * 2), atol=1e-5)
    with pytest.raises(ValueError):
        normalize_colour(x, "sepia", mean, std)


def test_input_blur_is_a_gaussian_low_pass_named_in_the_preset(tmp_path):
    """memlab-copy low-passes its input (1 px at the network's input size, query and training image
    alike): ``copynet.low_pass`` keeps a flat image, keeps the mean, spreads a point as a Gaussian of
    the given standard deviation; the preset names the blur and a negative one is refused."""
    from memlab.copynet import low_pass
    from memlab.errors import MemlabError

    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(low_pass(flat, 1.0), flat, atol=1e-6)
    point = torch.zeros(1, 1, 21, 21)
    point[0, 0, 10, 10] = 1.0
    out = low_pass(point, 1.5)[0, 0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    ys, xs = torch.meshgrid(torch.arange(21.0) - 10, torch.arange(21.0) - 10, indexing="ij")
    assert float((out * xs ** 2).sum()) == pytest.approx(1.5 ** 2, rel=0.02)  # its variance: sigma^2
    assert float((out * ys ** 2).sum()) == pytest.approx(1.5 ** 2, rel=0.02)
    torch.manual_seed(0)
    CopyNet(CopyNetConfig(**TINY)).eval().save_pretrained(tmp_path / "w")
    assert create_descriptor("memlab-copy").blur == 1.0
    d = create_descriptor("memlab-copy", weights=str(tmp_path / "w"))
    assert "-blur-1-" in d.preset and d.config()["blur"] == 1.0
    assert "blur" not in create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=0.0).preset
    with pytest.raises(MemlabError):
        create_descriptor("memlab-copy", weights=str(tmp_path / "w"), blur=-1)


def test_batches_hold_same_background_pairs_together_as_negatives():
    """Sibling scenes (same background, other objects) come in pairs; a batch holds both members."""
    import random

    import numpy as np

    from memlab.train_descriptor import batch_images, make_pool

    cfg = DescriptorTrainConfig(n_scenes=10, n_lighthouses=0, sibling_pairs=8)
    pool = make_pool(cfg)
    assert len(pool) == 10 + 16
    same = [np.mean(np.asarray(pool[10 + 2 * k]) == np.asarray(pool[11 + 2 * k])) for k in range(8)]
    other = [np.mean(np.asarray(pool[10 + 2 * k]) == np.asarray(pool[13 + 2 * k])) for k in range(7)]
    assert max(same) < 1 and np.median(same) > np.median(other)  # distinct images, mostly shared pixels
    items = [(i, None) for i in range(len(pool))]
    got = [x for x, _ in batch_images(items, [], [], 12, 0.0, random.Random(0), siblings_from=10, sibling_share=0.5)]
    assert len(got) == len(set(got)) == 12
    sib = [i for i in got if i >= 10]
    assert len(sib) == 6 and all((i ^ 1) in sib for i in sib)  # pairs are (10, 11), (12, 13), ...


def test_grayscale_share_sets_how_often_a_view_loses_its_colour():
    """``grayscale`` (SSCD's 0.2) is the chance that a training view is grey: none at 0, most at 1 (a later
    overlay or colour drift may tint a grey view again); a share outside [0, 1] is refused."""
    import random

    from PIL import Image

    from memlab.augment import augment
    from memlab.errors import MemlabError

    im = Image.new("RGB", (64, 64), (200, 40, 90))

    def grey_share(p):
        views = [np.asarray(augment(im, random.Random(s), 32, p), np.int16) for s in range(120)]
        return np.mean([np.abs(v[..., 0] - v[..., 1]).max() <= 2 and np.abs(v[..., 1] - v[..., 2]).max() <= 2
                        for v in views])
    # a grey view stays grey unless the overlay (0.3) or the decoder drift (0.25) comes after: about p x 0.5
    assert grey_share(0.0) == 0.0 and 0.35 < grey_share(1.0) < 0.7 and 0.03 < grey_share(0.2) < 0.2
    with pytest.raises(MemlabError, match="grayscale"):
        DescriptorTrainConfig(grayscale=1.5).validate()
