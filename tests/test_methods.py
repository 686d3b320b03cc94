"""The field's newer methods (issue 31): Ren et al.'s attention mitigation and entropy, NeMo's neurons, Jain et
al.'s guidance schedule, Asthana and Belagiannis's anisotropy, prompt alignment and the comparison table."""
import json

import numpy as np
import pytest
import torch

from memlab.attention import AttentionContext, AttentionHub, token_entropy
from memlab.generate import Settings
from memlab.mitigations import JainGuidance, parse_strategy

PROMPT = "a red circle and a blue star on a grey background"
FAST = Settings(steps=4, guidance=5.0)


def _pixels(results):
    return [np.asarray(r.image).astype(int) for r in results]


def test_each_new_mitigation_at_its_neutral_setting_gives_the_images_of_none(tiny_generator):
    from memlab.nemo import compute_stats

    gen = tiny_generator
    gen.nemo_stats = compute_stats(gen, ["a green square on a white background", "a cat", "a yellow ring"],
                                   [0, 1, 2], FAST.steps)
    base = _pixels(gen.generate(PROMPT, [0, 1], "none", FAST))
    for spec in ("ren:c1=1,mask=off", "jain:t=1000", "nemo:scale=1"):
        out = _pixels(gen.generate(PROMPT, [0, 1], spec, FAST))
        assert all((a == b).all() for a, b in zip(base, out)), spec
    changed = _pixels(gen.generate(PROMPT, [0, 1], "ren", FAST))  # and the defaults change them
    assert any((a != b).any() for a, b in zip(base, changed))
    changed = _pixels(gen.generate(PROMPT, [0, 1], "jain", FAST))
    assert any((a != b).any() for a, b in zip(base, changed))


def test_ren_explicit_attention_equals_the_unets_own_when_nothing_is_changed(tiny_generator):
    """Forcing the explicit path (a summary mask that keeps all 77 tokens) must reproduce the UNet's own
    attention; so the mitigation's effect is the logit change alone."""
    gen = tiny_generator
    hub = AttentionHub.of(gen.pipe.unet)
    lat = gen.initial_latents([0, 1], 16, 16)
    cond, uncond = gen.encode([PROMPT] * 2)
    t = torch.tensor(500)
    with torch.no_grad():
        ref = gen.pipe.unet(torch.cat([lat] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        with hub.context(AttentionContext(mask_summary=True, lengths=[77, 77])):
            out = gen.pipe.unet(torch.cat([lat] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    assert torch.allclose(ref, out, atol=1e-4)


def test_ren_adjusts_only_the_conditional_beginning_token_and_masks_after_the_end_token():
    from memlab.attention import _CrossAttention

    logits = torch.ones(4, 2, 3, 6)  # [uncond x2; cond x2], heads, pixels, tokens
    ctx = AttentionContext(bos_scale=1.25, mask_summary=True, lengths=[3, 5], cfg=True)
    out = _CrossAttention._adjust(None, logits, ctx)
    assert torch.equal(out[:2, :, :, 0], torch.ones(2, 2, 3))  # unconditional rows: untouched
    assert torch.equal(out[2:, :, :, 0], torch.full((2, 2, 3), 1.25))
    assert torch.isinf(out[0, :, :, 3:]).all() and torch.isinf(out[2, :, :, 3:]).all()  # length 3 keeps 0..2
    assert not torch.isinf(out[1, :, :, :5]).any() and torch.isinf(out[1, :, :, 5]).all()


def test_token_entropy_of_hand_made_distributions():
    assert token_entropy(np.full(77, 1 / 77)) == pytest.approx(np.log(77))
    assert token_entropy(np.eye(77)[0]) == pytest.approx(0.0, abs=1e-9)
    assert token_entropy(np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def test_jain_static_transition_and_the_dynamic_one_at_the_first_local_minimum():
    static = JainGuidance(parse_strategy("jain:t=500").mitigations[0], 7.5, 2)
    ratios = [static.ratio(t, torch.zeros(2)) for t in (900, 700, 500, 300)]
    assert torch.equal(ratios[0], torch.zeros(2)) and torch.equal(ratios[1], torch.zeros(2))  # guidance 0 before
    assert ratios[2] is None and ratios[3] is None  # t <= 500: the normal guidance
    dyn = JainGuidance(parse_strategy("jain:mode=dynamic").mitigations[0], 5.0, 2)
    norms = [(3.0, 3.0), (2.0, 2.5), (1.0, 2.0), (2.0, 1.0), (3.0, 2.0)]  # minima at steps 2 and 3
    got = [dyn.ratio(900 - 100 * i, torch.tensor(n)) for i, n in enumerate(norms)]
    assert dyn.transition_step(0) == 3 and dyn.transition_step(1) == 4
    assert torch.allclose(got[0], torch.tensor([0.2, 0.2]))  # guidance 1.0 of 5.0 before the transition
    assert torch.allclose(got[3], torch.tensor([1.0, 0.2])) and got[4] is None


def test_jain_unguided_until_the_end_is_the_unconditional_model(tiny_generator):
    """Guidance 0 at every step is the unconditional prediction: the empty prompt's image at guidance 1."""
    gen = tiny_generator
    a = _pixels(gen.generate(PROMPT, [0, 1], "jain:t=0,before=0", FAST))
    _, uncond = gen.encode([PROMPT])  # (memlab refuses an empty prompt; the pipeline takes its embedding)
    with torch.no_grad():
        b = gen.pipe(prompt_embeds=uncond.repeat(2, 1, 1), latents=gen.initial_latents([0, 1], 16, 16),
                     num_inference_steps=FAST.steps, guidance_scale=1.0, output_type="pil").images
    b = [np.asarray(im).astype(int) for im in b]
    assert max(int(np.abs(x - y).max()) for x, y in zip(a, b)) <= 2


def test_detections_are_the_prompts_under_every_mitigation_and_asthana_is_norm_plus_two_cosines(tiny_generator):
    gen = tiny_generator
    none = gen.generate(PROMPT, [0, 1], "none", FAST)
    for spec in ("gni", "ren", "jain", "sail:target=0.0001,iters=2"):
        other = gen.generate(PROMPT, [0, 1], spec, FAST)
        for a, b in zip(none, other):
            for m in ("wen", "ren", "asthana", "jeon"):
                assert a.extra["detections"][m] == pytest.approx(b.extra["detections"][m], rel=1e-4), (spec, m)
    sched = gen.pipe.scheduler
    sched.set_timesteps(FAST.steps)
    lat = gen.initial_latents([0, 1], 16, 16) * sched.init_noise_sigma
    cond, uncond = gen.encode([PROMPT] * 2)
    t = sched.timesteps[-3]
    with torch.no_grad():
        e_u = gen.pipe.unet(lat, t, encoder_hidden_states=uncond).sample
        e_c = gen.pipe.unet(lat, t, encoder_hidden_states=cond).sample
    cos = ((e_u * (e_c - e_u)).sum(1) / (e_u.norm(dim=1) * (e_c - e_u).norm(dim=1))).flatten(1).mean(1)
    for r, c in zip(none, cos.tolist()):
        d = r.extra["detections"]
        assert d["asthana_cosine"] == pytest.approx(c, abs=1e-4)
        assert d["asthana"] == pytest.approx(d["wen"] + 2 * c, abs=1e-4)
        assert 0 < d["ren"] <= np.log(77) + 1e-6


def test_nemo_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    from memlab.nemo import ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 4, 32, 32, generator=g)
    b = (a + 0.3 * torch.rand(3, 4, 32, 32, generator=g)).clamp(0, 1)
    ref = [np.mean([structural_similarity(a[i, c].numpy(), b[i, c].numpy(), gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0) for c in range(4)])
           for i in range(3)]
    assert np.allclose(ssim(a, b).numpy(), ref, atol=1e-4)
    assert torch.allclose(ssim(a, a), torch.ones(3))


def test_nemo_blocks_the_chosen_value_neurons_and_its_statistics_round_trip(tiny_generator, tmp_path):
    from memlab.nemo import NeMoStats, compute_stats, stats_current

    gen = tiny_generator
    hub = AttentionHub.of(gen.pipe.unet)
    cond, _ = gen.encode([PROMPT])
    v = hub.value_modules[0]
    with torch.no_grad():
        plain = v(cond)
        with hub.context(AttentionContext(blocked={0: [1, 3]}, block_scale=0.0)):
            off = v(cond)
    assert (off[..., [1, 3]] == 0).all() and torch.equal(off[..., 0], plain[..., 0])
    stats = compute_stats(gen, ["a cat", "a dog on a hill", "a yellow ring"], [0, 1, 2], FAST.steps, source="test")
    back = NeMoStats.load(stats.save(tmp_path / "nemo"))
    assert back.ssim_threshold == pytest.approx(stats.ssim_threshold)
    assert all(torch.equal(a, b) for a, b in zip(stats.mean + stats.std, back.mean + back.std))
    # a builder resumed at other sampling steps computes them again (the noise differences are read on the
    # schedule); a torn or missing file counts as absent
    assert stats_current(tmp_path / "nemo", FAST.steps) and not stats_current(tmp_path / "nemo", FAST.steps + 1)
    (tmp_path / "nemo" / "statistics.json").write_text("{")
    assert not stats_current(tmp_path / "nemo", FAST.steps) and not stats_current(tmp_path / "none", FAST.steps)
    acts = hub.value_activations(gen.encode(["a cat"])[0])
    assert torch.allclose(acts[0][0], v(gen.encode(["a cat"])[0]).abs().mean(1)[0].detach())


def test_nemo_on_the_builtin_world_finds_no_neuron_for_a_unique_probe_and_changes_a_memorized_one():
    import pandas as pd

    from memlab.world import World

    w = World.load()
    if w.folder("nemo") is None:
        pytest.skip("the built-in world has no NeMo statistics")
    gen = w.generator()
    probes = pd.read_csv(w.file("probes"))
    settings = Settings(steps=int(w.defaults["steps"]), guidance=float(w.defaults["guidance"]))
    nemo = parse_strategy("nemo").mitigations[0]
    lo = probes[probes["group"] == "unique"]["prompt"].iloc[0]
    blocked, info = gen.nemo_neurons(lo, nemo, settings)
    assert not info["memorized"] and blocked == {} and info["neurons"] == 0
    hi = probes[probes["group"] == "full_ddf20"]["prompt"].iloc[0]
    blocked, info = gen.nemo_neurons(hi, nemo, settings)
    assert info["memorized"] and blocked and info["neurons"] == sum(map(len, blocked.values()))
    base = _pixels(gen.generate(hi, [0], "none", settings))
    out = _pixels(gen.generate(hi, [0], "nemo", settings))
    assert (base[0] != out[0]).any()


def test_scene_prompts_parse_into_what_they_name():
    from memlab.alignment import parse_scene_prompt

    got = parse_scene_prompt("a red cross, a blue circle and a green diamond on a grey background")
    assert got == {"shapes": ["circle", "cross", "diamond"], "colours": ["blue", "green", "red"],
                   "bg_colour": "grey", "bg_kind": "plain"}
    assert parse_scene_prompt("an orange star on a teal striped background, by Velmora")["bg_kind"] == "striped"
    assert parse_scene_prompt("a photograph of a cat") is None
    assert parse_scene_prompt("a red blob on a grey background") is None


def test_builtin_world_alignment_prefers_each_training_scene_own_caption():
    """The classifier trained on fresh renders scores the world's own training scenes against their own
    captions above the next scene's caption (a wrong classifier or parser fails this)."""
    from PIL import Image

    from memlab.world import World

    w = World.load()
    aligner = w.aligner()
    if aligner is None or aligner.method != "scene-classifier":
        pytest.skip("the built-in world has no alignment classifier")
    index = w.index()
    items = index.items.reset_index().drop_duplicates("item")
    items = items[items["source"] == "procedural"].head(120)
    items = items[items["caption"].map(lambda c: " on " in c and c.endswith("background"))].head(60)
    ims = [Image.open(index.image_path(int(r))) for r in items["index"]]
    caps = items["caption"].tolist()
    own = [aligner.score([im], c)[0] for im, c in zip(ims, caps)]
    other = [aligner.score([im], c)[0] for im, c in zip(ims, caps[1:] + caps[:1])]
    assert np.mean(np.array(own) > np.array(other)) >= 0.8
    assert aligner.info()["held_out"]["renders"]["n"] == 1000


def _summary(prompt, spec, rate, det, align, secs):
    return {"type": "summary", "prompt": prompt, "mitigation": {"name": spec.split(":")[0], "spec": spec},
            "replication_rate": rate, "dataset_similarity": {"p95": rate}, "n_seeds": 10,
            "detections_mean": det, "alignment_mean": align, "timing": {"generate_s": secs}}


def test_comparison_table_from_hand_made_records():
    from memlab.compare import comparison, format_comparison

    recs = [_summary("a", "none", 1.0, {"wen": 3.0, "ren": 1.0}, 0.8, 10.0),
            _summary("b", "none", 0.6, {"wen": 2.0, "ren": 3.0}, 0.6, 10.0),
            _summary("c", "none", 0.0, {"wen": 1.0, "ren": 2.0}, 0.7, 10.0),
            _summary("d", "none", 0.1, {"wen": 9.0, "ren": 9.0}, 0.7, 10.0),  # neither side: left out
            _summary("a", parse_strategy("ren").spec(), 0.5, {}, 0.4, 12.0),
            _summary("b", parse_strategy("ren").spec(), 0.1, {}, 0.3, 12.0)]
    c = comparison(recs)
    assert c["detectors"]["wen"]["auc"] == 1.0 and c["detectors"]["ren"]["auc"] == 0.5
    assert (c["detectors"]["wen"]["positives"], c["detectors"]["wen"]["negatives"]) == (2, 1)
    assert c["detectors"]["wen"]["auc_interval"] is None  # one never-replicating prompt: nothing to resample
    assert c["detectors"]["wen"]["minus_wen"] is None and c["detectors"]["ren"]["minus_wen"] is None  # (the same)
    r = c["mitigations"]["ren"]
    assert r["replication_rate"] == pytest.approx(0.3) and r["none_replication_rate"] == pytest.approx(0.8)
    assert r["relative_cut"] == pytest.approx(1 - 0.3 / 0.8)
    assert r["alignment_ratio"] == pytest.approx(0.35 / 0.7)
    assert r["added_seconds_per_image"] == pytest.approx(0.2)
    # printed, each column lines up whatever a name's length (`bright_ending` pushed its row out of line)
    c["detectors"]["bright_ending"] = {**c["detectors"]["ren"], "auc": 0.25}
    lines = format_comparison(c).splitlines()
    detectors, strategies = lines[:4], lines[4:]
    assert sorted(ln.split()[0] for ln in detectors[1:]) == ["bright_ending", "ren", "wen"]
    import re

    for table, second in ((detectors, "AUC by outcome (95% interval)"), (strategies, "prompts")):
        # the second column (right-aligned) ends where its header ends, on every line
        ends = {re.match(r"\S+\s+\S+", ln).end() for ln in table[1:]}
        assert ends == {table[0].index(second) + len(second)}, table
    assert {ln.split()[0]: ln.split()[1] for ln in detectors[1:]} == {"wen": "1.000", "ren": "0.500",
                                                                       "bright_ending": "0.250"}


def test_memlab_run_writes_detections_alignment_and_the_comparison(tiny_world, tmp_path):
    from memlab.cli import main

    out = tmp_path / "r.jsonl"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a colour field 1\na colour field 2\n")
    assert main(["run", "--world", str(tiny_world), "--prompts", str(prompts), "--seeds", "0-1",
                 "--mitigation", "none", "--mitigation", "ren", "--mitigation", "jain:mode=dynamic",
                 "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    seeds = [r for r in recs if r["type"] == "seed"]
    assert all(set(r["detections"]) >= {"wen", "ren", "asthana", "bright_ending"} for r in seeds)
    assert all(r["detections"]["wen"] == r["detection"] for r in seeds)
    dyn = [r for r in seeds if r["mitigation"]["name"] == "jain"]
    assert dyn and all(r["mitigation"]["steps"][0]["params"]["before"] == 1.0 for r in dyn)
    assert all("jain_transition_step" in r["mitigation_state"] for r in dyn)
    cmp = json.loads((tmp_path / "r.comparison.json").read_text())
    assert set(cmp["mitigations"]) == {"none", "ren", "jain:mode=dynamic,before=1.0"}
    assert set(cmp["detectors"]) >= {"wen", "ren", "asthana", "bright_ending"}
    assert cmp["detectors"]["bright_ending"]["paper"] == "Chen et al., ICLR 2025"


def test_compare_offers_every_strategy_and_the_api_runs_the_new_ones(client):
    """Issue 31: Ren's, NeMo's and Jain's mitigations (both transitions) are Compare's choices; the API runs
    them beside none on the same seeds; a world without NeMo statistics says what it lacks."""
    from memlab.app.wiring import MITIGATION_CHOICES

    assert {"ren", "nemo", "jain", "jain:mode=dynamic"} <= set(MITIGATION_CHOICES)
    head, grid, _, table = client.predict("a red ball", 2, ["ren", "jain", "jain:mode=dynamic"], 2, 0.1,
                                          api_name="/compare")
    assert "4 of 4 strategies on the same 2 seeds" in head
    assert [r[0] for r in table["data"]] == ["none", "ren c1=1.25", "jain mode=static", "jain mode=dynamic"]
    assert table["headers"][-3:] == ["detection (wen)", "alignment", "alignment vs none"]  # the detector named
    assert "detection (wen): Wen et al. 2024" in head  # and how it is measured; alignment too where there is one
    assert ("alignment: " in head) == any(r[-2] != "-" for r in table["data"])
    with pytest.raises(Exception, match="nemo needs statistics of non-memorized prompts"):
        client.predict("a red ball", 2, ["nemo"], 2, 0.1, api_name="/compare")


def test_two_threads_asking_for_a_unets_hub_get_one(tiny_pipeline_dir):
    """A head start's two threads ask for the hub at once; one hub must come of it (two would each install
    processors, and the first's contexts would go unseen: a detection of NaN)."""
    import threading

    from memlab.generate import Generator

    gen = Generator.from_pretrained(tiny_pipeline_dir, device="cpu")
    got, start = [], threading.Barrier(4)

    def ask():
        start.wait()
        got.append(AttentionHub.of(gen.pipe.unet))
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in got}) == 1
    procs = [p for n, p in gen.pipe.unet.attn_processors.items() if n.endswith("attn2.processor")]
    assert all(p.hub is got[0] and not hasattr(p.inner, "hub") for p in procs)


def test_every_detector_and_mitigation_names_a_paper_the_about_tab_lists():
    """The About tab's papers cite every method a world's card and the app score with: each detector's paper
    (``compare.DETECTORS``: first author and venue) and each registered mitigation's. It listed six papers while
    the card reported Ren's, Asthana's and Chen's detectors and NeMo's and Jain's mitigations."""
    import re

    from memlab.app.glossary import CITATIONS
    from memlab.compare import DETECTORS
    from memlab.mitigations import MITIGATIONS

    entries = [e for e in re.split(r"\n- ", CITATIONS) if e.strip()]
    for name, d in DETECTORS.items():
        author, venue = re.match(r"(\w+)[^,]*, (.+)$", d["paper"]).groups()
        assert any(author in e and venue.replace(" ", "") in e.replace("\n", " ").replace(" ", "") for e in entries), name
    papers = {"rna": "Somepalli et al.", "rt": "Somepalli et al.", "cwr": "Somepalli et al.", "gni": "Somepalli et al.",
              "wen": "Wen, Liu", "ren": "Ren et al.", "nemo": "Hintersdorf et al.", "jain": "Jain et al.",
              "sail": "Jeon et al."}
    assert set(MITIGATIONS) - {"none"} == set(papers)  # a new mitigation names its paper here and in the tab
    assert all(p in CITATIONS for p in papers.values())
    # one list item each: no wrapped line that a Markdown renderer starts a new item with ("  2024. (nemo" did,
    # and the About tab showed a paper's year as an item of its own)
    assert not [ln for ln in CITATIONS.splitlines() if re.match(r"\s+(\d+[.)]|[-*+])\s", ln)]


def test_the_attribution_chart_says_when_its_control_leads_as_much():
    """Token attribution's chart was titled "which words drive the memorization signal" on a world whose card
    finds the distinctive words leading as often on prompts seen once (the control) as on memorized ones: the
    chart then says so, from the card's figures; where the control lags, it says nothing more."""
    import json
    from pathlib import Path

    from memlab.app.charts import attribution_chart, attribution_control

    def card(k, n=24):
        return {"measured": {"token_attribution": {"probes": 8, "distinctive_above_template": 8,
                                                   "control_unique_probes": n, "control_distinctive_above_template": k}}}
    assert "8 of 8 memorized prompts and 24 of 24 prompts seen once" in attribution_control(card(24))
    assert attribution_control(card(6)) is None and attribution_control(None) is None
    assert attribution_control({"measured": {"token_attribution": {"probes": 8}}}) is None
    toks = [{"token": t, "position": i, "attribution": float(i)} for i, t in enumerate(["<s>", "red", "ball", "</s>"])]
    assert "seen once" in attribution_chart(toks, card(24)).layout.title.text
    assert "seen once" not in attribution_chart(toks).layout.title.text
    world = json.loads((Path(__file__).resolve().parents[1] / "assets" / "world" / "card.json").read_text())
    t = world["measured"]["token_attribution"]
    said = attribution_control(world)
    assert (said is not None) == (t["control_distinctive_above_template"] / t["control_unique_probes"]
                                  >= t["distinctive_above_template"] / t["probes"])


def test_the_glossary_defines_every_detector_the_page_shows():
    """Generate's summary shows six detectors; the glossary's "detection" defined Wen et al.'s alone: each
    registered detector is named there with its paper's first author."""
    from memlab.app.glossary import GLOSSARY
    from memlab.compare import DETECTORS

    _, term, text = next(e for e in GLOSSARY if e[0] == "detection")
    for name, d in DETECTORS.items():
        assert name in term, name
        author = d["paper"].split()[0]
        assert (f"**{name}**" in text or name == "wen") and author in text, name


def test_the_comparison_sets_each_detector_beside_wens_on_the_same_prompts():
    from memlab import metrics
    from memlab.compare import outcome_auc

    rates = [1.0, 0.5, 0.0, 0.0, 0.0]
    wen, jeon = [0.9, 0.4, 0.5, 0.1, 0.2], [0.8, 0.7, 0.3, 0.2, 0.6]
    recs = [{"type": "summary", "mitigation": {"name": "none"}, "replication_rate": r,
             "detections_mean": {"wen": w, "jeon": j}} for r, w, j in zip(rates, wen, jeon)]
    out = outcome_auc(recs)
    pos = np.array(rates) >= 0.5
    d = metrics.auc_difference(jeon, wen, pos)
    assert out["jeon"]["minus_wen"] == pytest.approx([d["difference"], d["low"], d["high"]])
    assert d["difference"] == pytest.approx(metrics.roc_auc(np.array(jeon)[pos], np.array(jeon)[~pos])
                                            - metrics.roc_auc(np.array(wen)[pos], np.array(wen)[~pos]))
    assert out["wen"]["minus_wen"] is None
