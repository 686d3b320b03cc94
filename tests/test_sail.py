"""Jeon et al. (ICML 2025): the sharpness detector (``jeon``) and SAIL's starting-noise optimization (``sail``),
each held to the definition the authors' code computes, on the tiny pipeline memlab builds itself."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from memlab.errors import MemlabError
from memlab.generate import Settings
from memlab.mitigations import parse_strategy
from memlab.sail import calibrate_sail_target, sail_loss, sail_optimize, sharpness

PROMPT = "a red circle and a blue star on a grey background"
FAST = Settings(steps=4, guidance=5.0)


def _start(gen, seeds, prompt=PROMPT):
    sched = gen.pipe.scheduler
    sched.set_timesteps(FAST.steps)
    lat = gen.initial_latents(seeds, 16, 16) * sched.init_noise_sigma
    cond, uncond = gen.encode([prompt] * len(seeds))
    return lat, sched.timesteps[0], cond, uncond


def test_sharpness_is_the_hessian_product_the_authors_take_by_forward_mode_ad(tiny_generator):
    """||H_c ds - H_u ds|| with ds = s_c - s_u and s = -eps / sigma, the product taken exactly by
    ``torch.func.jvp`` as in the authors' ``hvp_comb`` (the math attention kernel supports forward-mode AD);
    memlab's central difference must agree within 1%, and the record carries it per seed."""
    from torch.func import jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = tiny_generator
    lat, t, cond, uncond = _start(gen, [0, 1, 2])
    sigma = float((1 - gen.pipe.scheduler.alphas_cumprod[int(t)]).sqrt())
    emb = torch.cat([uncond, cond])

    def score(x):
        return -gen.pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.float() / sigma

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        s_u, s_c = score(lat).chunk(2)
        _, hv = jvp(score, (lat,), (s_c - s_u,))
    h_u, h_c = hv.chunk(2)
    exact = (h_c - h_u).flatten(1).norm(dim=1).numpy()
    assert sharpness(gen, lat, t, cond, uncond) == pytest.approx(exact, rel=1e-2)
    # not the plain guidance norm Wen et al. read, nor the Hessian of one branch alone
    assert not np.allclose(exact, (s_c - s_u).flatten(1).norm(dim=1).numpy(), rtol=0.1)
    assert not np.allclose(exact, h_c.flatten(1).norm(dim=1).numpy(), rtol=0.1)
    recs = gen.generate(PROMPT, [0, 1, 2], "none", FAST)
    assert [r.extra["detections"]["jeon"] for r in recs] == pytest.approx(exact, rel=1e-2)
    # generation starts it from its own first step's noise difference: the same as computed apart
    assert [r.extra["detections"]["jeon"] for r in recs] == pytest.approx(sharpness(gen, lat, t, cond, uncond),
                                                                           rel=1e-4)


def test_a_half_precision_unet_takes_the_exact_product(tiny_generator):
    """A difference of half-precision scores drowns in their rounding, so a float16 UNet takes the authors'
    forward-mode product in its own precision, seeds in chunks: within 2% of the float32 product."""
    from memlab import sail

    gen = tiny_generator
    lat, t, cond, uncond = _start(gen, [0, 1, 2])
    ref = sail.exact_sharpness(gen, lat, t, cond, uncond)
    assert sharpness(gen, lat, t, cond, uncond) == pytest.approx(ref, rel=1e-2)  # float32: the difference
    unet = gen.pipe.unet
    gen.pipe.unet = type(unet).from_config(unet.config)  # (a copy without the hooks generation installs)
    gen.pipe.unet.load_state_dict(unet.state_dict())
    gen.pipe.unet.to(torch.float16)
    try:
        half = sharpness(gen, lat.half(), t, cond.half(), uncond.half())
    finally:
        gen.pipe.unet = unet
    assert half == pytest.approx(ref, rel=2e-2)


def test_sail_loss_is_the_guidance_norm_one_unit_step_along_it_plus_the_gaussianity_term(tiny_generator):
    """The authors' Algorithm 2 loss: ||eps(x + d, c) - eps(x + d, empty)|| + gamma ||x||, d the unit guidance
    direction at x; recomputed here from Wen's noise difference."""
    gen = tiny_generator
    lat, t, cond, uncond = _start(gen, [3, 4])
    with torch.no_grad():
        x = gen.pipe.scheduler.scale_model_input(lat, t)
        diff = (gen.pipe.unet(x, t, encoder_hidden_states=cond).sample
                - gen.pipe.unet(x, t, encoder_hidden_states=uncond).sample).float()
        d = diff / diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        want = gen.noise_difference(lat + d, t, cond, uncond) + 0.05 * lat.flatten(1).norm(dim=1)
        got = sail_loss(gen, lat, t, cond, uncond, 0.05)
    assert got.numpy() == pytest.approx(want.numpy(), rel=1e-4)
    with torch.no_grad():  # gamma weighs ||x|| alone
        assert (sail_loss(gen, lat, t, cond, uncond, 1.0) - got).numpy() == pytest.approx(
            0.95 * lat.flatten(1).norm(dim=1).numpy(), rel=1e-4)


def test_sail_keeps_a_seed_below_its_target_and_records_what_it_reached(tiny_generator):
    """A seed already below the target is left as it is, bit for bit (its image is the baseline's); a target
    no seed can reach moves the noise, lowers the loss, and says so; the recorded final loss is the loss of the
    noise generation starts from."""
    gen = tiny_generator
    base = gen.generate(PROMPT, [4, 5], "none", FAST)
    easy = gen.generate(PROMPT, [4, 5], "sail:target=1000", FAST)
    assert [r.image.tobytes() for r in easy] == [b.image.tobytes() for b in base]
    assert all(r.extra["sail_reached"] and r.extra["sail_steps"] == 0
               and r.extra["sail_final_loss"] == pytest.approx(r.extra["sail_initial_loss"]) for r in easy)
    hard = gen.generate(PROMPT, [4, 5], "sail:target=0.0001,iters=3", FAST)
    assert not any(r.extra["sail_reached"] for r in hard)
    assert all(r.extra["sail_steps"] == 3 and r.extra["sail_target"] == pytest.approx(1e-4) for r in hard)
    assert all(r.extra["sail_final_loss"] < r.extra["sail_initial_loss"] for r in hard)
    assert all(r.image.tobytes() != b.image.tobytes() for r, b in zip(hard, base))
    lat, t, cond, uncond = _start(gen, [4, 5])
    sail = parse_strategy("sail:target=0.0001,iters=3").mitigations[0]
    out, state = sail_optimize(gen, sail, lat, t, cond, uncond)
    with torch.no_grad():
        again = sail_loss(gen, out.float(), t, cond, uncond, 0.05).numpy()
    assert [s["sail_final_loss"] for s in state] == pytest.approx(again, rel=1e-4)
    assert [s["sail_final_loss"] for s in state] == pytest.approx([r.extra["sail_final_loss"] for r in hard], rel=1e-4)
    # a target between the two seeds' losses: the seed under it is untouched, the other is optimized
    mid = float(np.mean([s["sail_initial_loss"] for s in state]))
    sail = parse_strategy(f"sail:target={mid}").mitigations[0]
    out, state = sail_optimize(gen, sail, lat, t, cond, uncond)
    for i, s in enumerate(state):
        assert s["sail_reached"] == (s["sail_final_loss"] <= mid + 1e-6)
        if s["sail_initial_loss"] <= mid:
            assert torch.equal(out[i], lat[i]) and s["sail_steps"] == 0


def test_sail_without_a_target_says_what_to_give_and_a_world_calibrates_one(tiny_generator):
    gen = tiny_generator
    assert gen.sail_target is None
    with pytest.raises(MemlabError, match="sail needs a target"):
        gen.generate(PROMPT, [4], "sail", FAST)
    prompts = ["a green star", "a red circle on a blue background"]
    cal = calibrate_sail_target(gen, prompts, [0, 1, 2], FAST, fpr=0.25)
    losses = []
    for p in prompts:
        lat, t, cond, uncond = _start(gen, [0, 1, 2], p)
        with torch.no_grad():
            losses += sail_loss(gen, lat, t, cond, uncond, 0.05).tolist()
    assert cal["sail_target"] == pytest.approx(sorted(losses)[int(np.ceil(0.75 * 6)) - 1], rel=1e-5)
    assert sum(v > cal["sail_target"] for v in losses) == 1  # 25% of 6 above it, rounded down
    gen.sail_target = cal["sail_target"]
    try:
        out = gen.generate("a green star", [0, 1, 2], "sail", FAST)
        assert all(r.extra["sail_target"] == cal["sail_target"] for r in out)
    finally:
        gen.sail_target = None


def test_the_card_reads_each_optimizing_mitigations_reach_from_the_records():
    from memlab.evaluate import optimizer_reach

    runs = pd.DataFrame({"strategy": ["sail", "wen", "none"], "states": [
        [{"sail_reached": True, "sail_final_loss": 1.0, "sail_target": 2.0},
         {"sail_reached": False, "sail_final_loss": 3.0, "sail_target": 2.0}],
        [{"wen_reached": True, "wen_final_norm": 0.5, "wen_target": 0.8}], [{}]]})
    assert optimizer_reach(runs, "sail") == {"seeds": 2, "reached_share": 0.5, "final_norm_mean": 2.0,
                                       "final_norm_max": 3.0, "target": 2.0}
    assert optimizer_reach(runs)["final_norm_mean"] == 0.5 and optimizer_reach(runs)["seeds"] == 1
