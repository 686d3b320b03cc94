"""The app in front of a class and in a lab (issue 33): results in view after a click, on a desktop and a
phone; a lesson whose sentences say what its records show; Compare beside Generate; one match per
near-duplicate group wherever matches are listed."""
import re

import pytest

from tests.browser import app_page, chromium_path, open_tab
from tests.helpers import ROOT, synthetic_images

BUILTIN = ROOT / "assets" / "world"
needs_builtin = pytest.mark.skipif(not (BUILTIN / "world.json").is_file(), reason="the built-in world is not built")


def test_a_lessons_sentence_counts_its_records():
    """``own_or_other`` and ``lesson_run_sentence`` on hand-made records: the numbers and ids said are the
    records' own."""
    from memlab.app.views import lesson_run_sentence, own_or_other

    group = {1: 7, 2: 7, 3: 9, 4: 11}.get
    recs = [{"seed": s, "replicated": rep, "matches": [{"row": row, "id": f"x{row}"}]}
            for s, rep, row in ((0, True, 1), (1, True, 2), (2, True, 3), (3, False, 1), (4, False, 4))]
    split = own_or_other(recs, 7, group)
    assert [len(split[k]) for k in ("replicated_own", "replicated_other", "novel_own", "novel_other")] == [2, 1, 1, 1]
    text = lesson_run_sentence(split, "x1")
    # seed 1's pair shows x2, a duplicate of the own image x1: the sentence names it
    assert text.startswith("**3 of 5 seeds replicated**: 2 copy the prompt's own training image #x1 (shown as its "
                           "duplicate #x2), 1 copy another training image (#x3); 1 called novel still has #x1 as the "
                           "closest training image")
    assert lesson_run_sentence(own_or_other(recs[3:], 7, group), "x1").startswith("**0 of 2 seeds replicated**")


@needs_builtin
@pytest.mark.slow
def test_the_lessons_sentences_agree_with_its_records():
    """Each step of the lesson on the built-in world: every count and training id its sentence states is
    recomputed from the step's own records (the prompt's own image is its near-duplicate group)."""
    from memlab.app.lesson import LESSON_SEEDS, _steps
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(BUILTIN), device="cpu")
    plan = lab.lesson_prompts()
    step1, _, step3, step4, _ = _steps(lab, plan, LESSON_SEEDS)
    quiet = lambda *a, **k: None  # noqa: E731
    state, text, _ = list(step1(progress=quiet))[-1]
    own = lab.probe_row(plan["duplicated"])
    assert own is not None

    def expected(records, own_row):
        g = lab.item_group(own_row)
        tops = [(r["replicated"], lab.item_group(r["matches"][0]["row"]) == g, r["matches"][0]["id"]) for r in records]
        return (sum(r for r, _, _ in tops), sum(r and o for r, o, _ in tops),
                {str(i) for r, o, i in tops if r and not o}, sum((not r) and o for r, o, _ in tops))

    def said(sentence):
        k = int(re.search(r"(\d+) of 8 seeds replicated", sentence)[1])
        own_n = re.search(r"(\d+) copy the prompt's own", sentence)
        other = re.search(r"(\d+) copy another training image \(([^)]*)\)", sentence)
        missed = re.search(r"(\d+) called novel", sentence)
        return (k, int(own_n[1]) if own_n else 0, set(re.findall(r"#(\w+)", other[2])) if other else set(),
                int(missed[1]) if missed else 0)

    assert said(text) == expected(state.records, own)
    assert f"#{lab.item(own)['id']}" in text
    text3, _ = list(step3(state, progress=quiet))[-1]  # as the page calls it: step 1's run is its first row
    without, with_rna = text3.split("Without: ", 1)[1].split(" With RNA: ")
    none_recs = [r for r in state.records]  # step 3's first row is the same prompt and seeds as step 1
    assert said(without) == expected(none_recs, own)
    rates = re.search(r"Replication ([\d.]+)% without mitigation, \*\*([\d.]+)% with RNA", text3)
    assert float(rates[1]) == pytest.approx(100 * said(without)[0] / 8, abs=0.05)
    assert float(rates[2]) == pytest.approx(100 * said(with_rna)[0] / 8, abs=0.05)
    # seed by seed: the stopped minus the started is the change in count, and p is McNemar's exact test on them
    from math import comb

    paired = re.search(r"Seed by seed: (\d+) seeds? stopped copying with RNA, (\d+) started; .* with probability ([\d.e-]+) ", text3)
    fewer, more = int(paired[1]), int(paired[2])
    assert fewer - more == said(without)[0] - said(with_rna)[0] and fewer + more <= 8
    p = min(1.0, 2 * sum(comb(fewer + more, i) for i in range(min(fewer, more) + 1)) / 2 ** (fewer + more))
    assert float(paired[3]) == pytest.approx(p, rel=1e-2)
    assert ("that is evidence of a change on these seeds" in text3) == (p < 0.05)
    from memlab.limits import LIMITS

    assert (f"more seeds would tell (Compare mitigations runs up to {LIMITS['compare_seeds']})" in text3) == (p >= 0.05)
    text4, _ = list(step4(progress=quiet))[-1]
    assert text4.startswith(f"**{said(text4)[0]} of 8 seeds replicated**")


def test_match_lists_one_match_per_near_duplicate_group(tiny_world, tmp_path):
    """An image whose training original has copies answers with the original once, then other images (the
    app's Match and ``memlab match --json`` alike)."""
    import shutil

    import pandas as pd

    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index
    from memlab.match import match_images

    ims = synthetic_images(8, size=16)
    rows = [0] * 5 + list(range(1, 8))  # image 0 five times
    items = pd.DataFrame({"id": range(len(rows)), "caption": [f"c{i}" for i in rows],
                          "file": [f"{i}-{j}.png" for j, i in enumerate(rows)]})
    build_index(tmp_path / "idx", items, lambda j: ims[rows[j]], [create_descriptor("pixel")], calib_n=3)
    idx = TrainingIndex.load(tmp_path / "idx")
    res = match_images(idx, create_descriptor("pixel"), [ims[0]], k=4)
    ms = res["queries"][0]["matches"]
    assert len(ms) == 4 and len({m["group"] for m in ms}) == 4
    assert ms[0]["duplicates"] == 4 and ms[0]["score"] == pytest.approx(1.0, abs=1e-5)
    shutil.rmtree(tmp_path / "idx")


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")
@pytest.mark.parametrize("viewport", [(1400, 1000), (420, 900)])
def test_after_generate_the_progress_and_first_pair_are_in_view(tiny_world, viewport):
    """At 420 x 900 the prompt and Generate are on the first screen; at 1400 the controls' two columns end
    within 200 px of each other (the settings once ran 340 px below the prompt's column); after the click, the progress and then
    the first pair are inside the viewport without scrolling (desktop and phone); Compare has the examples
    and the prompt typed on Generate."""
    def inside(page, selector):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["y"] >= -1 and box["y"] < viewport[1] and box["height"] > 0, (selector, box)
        return True

    with app_page(tiny_world, viewport=viewport) as page:
        for sel in ("#prompt textarea", "#generate-btn"):
            box = page.locator(sel).bounding_box()
            assert box and box["y"] + box["height"] <= viewport[1], (sel, box)
        if viewport[0] > 1000:  # side by side, the two columns of controls end near each other (no tall empty block)
            ends = [page.evaluate(f"Math.max(...[...document.querySelectorAll('#{c} > *')].map(e => "
                                  f"e.getBoundingClientRect().bottom))") for c in ("controls-main", "controls-settings")]
            assert abs(ends[0] - ends[1]) < 200, ends
        page.locator("#prompt textarea").fill("a colour field 3")
        page.locator("#n-seeds input").fill("8")
        page.locator("#generate-btn").click()
        page.locator("#pairs .progress-text, #pairs .eta-bar, #pairs .meta-text").first.wait_for(timeout=30_000)
        assert inside(page, "#pairs")
        page.locator("#pairs img").first.wait_for(timeout=60_000)
        assert inside(page, "#pairs img")
        assert page.evaluate("window.scrollY") > 0  # the page moved to the results, not the visitor
        open_tab(page, "Compare mitigations")
        assert page.locator("#compare-prompt textarea").input_value() == "a colour field 3"
        assert page.locator("#compare-n input").input_value() == "8"


@needs_builtin
@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")
def test_a_lesson_steps_progress_and_pictures_come_into_view_on_a_phone():
    with app_page(BUILTIN, viewport=(420, 900)) as page:
        open_tab(page, "Lesson")
        page.locator("#lesson-1").click()
        page.wait_for_function("(document.querySelector('#lesson-1-text').innerText || '').length > 0",
                               timeout=30_000)
        box = page.locator("#lesson-1-text").bounding_box()
        assert 0 <= box["y"] < 900
        page.wait_for_function("(document.querySelector('#lesson-1-text').innerText || '').includes('seeds "
                               "replicated')", timeout=120_000)
        assert "own training image" in page.locator("#lesson-1-grid").inner_html()
        fig = page.locator("#lesson-1-grid figure").first.bounding_box()
        assert fig is not None and fig["y"] < 900 * 2  # the pictures start within the next screen
        open_tab(page, "Compare mitigations")
        assert page.locator("#compare-more-examples").count() == 1  # Generate's examples are here too


def test_three_verdict_levels_on_hand_made_scores():
    """The "possible copy" band: its lower edge flags 5% of a hand-made background (the threshold 1%), is never
    above the threshold, and splits scores into three levels."""
    import numpy as np

    from memlab import metrics

    bg = np.arange(1, 1001) / 1000.0  # distinct images' scores against their nearest other image
    thr = metrics.calibrate_threshold(bg, [], 0.01)["value"]
    low = metrics.possible_threshold(bg, thr)
    # at most 5% (and 1%) of the background above, one item short at most
    assert 0.049 <= (bg > low).mean() <= 0.05 and 0.009 <= (bg > thr).mean() <= 0.01
    assert metrics.possible_threshold(bg, 0.5) == 0.5  # never above the verdict's threshold: then no band
    assert [metrics.verdict(s, thr, low) for s in (thr + 0.001, (thr + low) / 2, low - 0.001)] == \
        ["replicated", "possible copy", "novel"]


def test_wens_score_after_optimization_is_shown_beside_its_target():
    """Issue 33 item 6: with Wen's mitigation the summary gives the score after the optimization beside the
    target and how many seeds reached it, from each seed's mitigation_state (hand-made records)."""
    from memlab.app.views import _optimizer_lines

    recs = [{"mitigation_state": {"wen_target": 1.12, "wen_final_norm": f, "wen_reached": f <= 1.12}}
            for f in (1.0, 1.1, 1.3)]
    line = _optimizer_lines(recs)[0]
    assert "1.133" in line and "max 1.300" in line and "1.120" in line and "2 of 3 seeds" in line
    assert _optimizer_lines([{"mitigation_state": None}, {}]) == []
    # SAIL's (Jeon et al.) the same way: the sharpness loss after the optimization, its target, the seeds reaching it
    sail = [{"mitigation_state": {"sail_target": 2.5, "sail_final_loss": f, "sail_reached": f <= 2.5}}
            for f in (2.4, 2.45, 2.9, 2.5)]
    (line,) = _optimizer_lines(sail)
    assert "SAIL" in line and "2.562" in line and "max 2.900" in line and "2.500" in line and "3 of 4 seeds" in line


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")
def test_every_tab_is_one_tap_away_on_a_phone_and_the_row_stays_off_a_desktop():
    """Issue 33 item 9: on a phone (420 px) Gradio folds most tabs into its "…" menu; the "Go to" row above
    them reaches each in one tap, and marks the tab open when it was opened from Gradio's own bar. On a desktop the
    tab bar shows them all and the row is not shown."""
    with app_page(BUILTIN, viewport=(420, 900)) as page:
        row = page.locator("#phone-tabs")
        assert row.is_visible() and row.bounding_box()["y"] < 900
        row.locator("label", has_text="Match").click()
        page.locator("#match-btn").wait_for(state="visible", timeout=10_000)
        row.locator("label", has_text="Keywords").click()
        page.locator("#kw-btn").wait_for(state="visible", timeout=10_000)
        assert page.locator("#generate-btn").is_hidden()
        open_tab(page, "Lesson")  # a tab opened from Gradio's own bar (its "…" menu) marks its place in the row
        page.locator("#lesson-1").wait_for(state="visible", timeout=10_000)
        page.wait_for_function("() => document.querySelector('#phone-tabs input:checked')?.value === 'lesson'",
                               timeout=10_000)
        row.locator("label", has_text="Match").click()  # and the row still opens what it names
        page.locator("#match-btn").wait_for(state="visible", timeout=10_000)
    with app_page(BUILTIN, viewport=(1400, 1000)) as page:
        assert page.locator("#phone-tabs").is_hidden()


def test_the_first_examples_are_the_lessons_first_prompt_group():
    """The examples in view are the group the lesson starts with (a verbatim list, or the built-in world's
    highest full duplication), not the template group: a visitor's first click shows what the lesson does."""
    import pandas as pd

    from memlab.app.views import probe_examples

    built_in = pd.DataFrame({"prompt": ["t1", "p5", "u1", "f20", "k1"],
                             "group": ["template", "full_ddf5", "unique", "full_ddf20", "keyword"]})
    names = [n for n, _ in probe_examples(built_in)]
    assert names[0].startswith("planted: full duplication x20") and "x5" in names[1] and "template" in names[2]
    assert probe_examples(built_in)[0][1] == ["f20"]
    listed = pd.DataFrame({"prompt": ["c", "t", "v", "o"], "group": ["nemo"] * 4,
                           "label": ["control", "template", "verbatim", "other"]})
    assert [ps for _, ps in probe_examples(listed)] == [["v"], ["t"], ["c"], ["o"]]


def test_a_listed_template_probe_is_shown_scored_both_ways():
    """A probe of a world made from a list (a template verbatim) shows this run's seeds counted by the global
    verdict and by the masked score against the template threshold, as the world's probe table counts them."""

    from memlab.app.views import probe_lines
    from memlab.local import both_ways
    from memlab.records import RunState

    def rec(verdict, masked, top1):
        return {"verdict": verdict, "masked_score": masked, "masked_threshold": 0.6, "score": 0.5,
                "matches": [{"id": top1, "score": 0.5}]}

    records = [rec("replicated", 0.9, 7), rec("template copy", 0.7, 7), rec("novel", 0.5, 3), rec("novel", None, 3)]
    assert both_ways(records) == {"seeds": 4, "threshold": 0.6, "replicated": 1, "masked_above": 2,
                                  "template_copy": 1}
    assert both_ways([{**r, "masked_threshold": None} for r in records]) is None
    # where the seeds record the agreement share, the masked verdict needs it past its threshold too
    shares = [(0.5, 0.2), (0.1, 0.2), (0.9, 0.2), (None, None)]
    checked = [{**r, "agreement_share": a, "agreement_threshold": t} for r, (a, t) in zip(records, shares)]
    assert both_ways(checked)["masked_above"] == 1

    class Lab:
        def probe(self, prompt):
            return {"group": "known memorized, template", "label": "template", "training_image": "indexed",
                    "training_id": "7", "list": "nemo.csv"}

    text = "\n".join(probe_lines(Lab(), RunState("p", records, [None] * 4), "pixel"))
    assert "top-1 match in 2 of 4 seeds" in text
    assert "calls 1 of 4 seeds whole copies" in text and "template threshold 0.600, with the agreement share past its own, in 2 (1 of them" in text


def test_a_lesson_row_made_once_is_shown_to_the_next_visitor_without_generating(tiny_world, monkeypatch):
    """``compare_stream(keep=True)``, as the lesson's steps run: a class clicking one step runs the model once;
    the next run of the same prompt, seeds, strategy and settings makes no image and shows the same records and
    pictures, running no model. Other seeds, another strategy or ``keep=False`` generate; at most ``KEPT_ROWS``
    rows are kept."""
    import numpy as np

    from memlab import streams
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")
    made, real, cliques, clique = [], lab.generate_chunk, [], lab.generation_clique
    monkeypatch.setattr(lab, "generate_chunk", lambda *a, **k: made.append((tuple(a[1]), a[2])) or real(*a, **k))
    monkeypatch.setattr(lab, "generation_clique", lambda *a, **k: cliques.append(1) or clique(*a, **k))

    def run(seeds, specs=(), keep=True):
        return list(lab.stream_compare("a red ball", seeds, list(specs), keep=keep))[-1]

    first = run([0, 1])
    again = run([0, 1])
    assert made == [((0, 1), "none")] and len(cliques) == 1  # no model at all: the row's clique is kept with it
    assert again.summaries == first.summaries and again.records == first.records and all(np.array_equal(np.asarray(a), np.asarray(b))
                                                  for a, b in zip(again.images, first.images))
    run([0, 1], ["rna:k=2"])  # its first row is kept; its RNA row is made
    run([0, 2])
    run([0, 1], keep=False)
    assert made[1:] == [((0, 1), "rna:k=2"), ((0, 2), "none"), ((0, 1), "none")]
    monkeypatch.setattr(streams, "KEPT_ROWS", 2)  # the latest used are kept: (0, 1) none was used before (0, 2)
    run([0, 3])
    run([0, 1])
    assert made[4:] == [((0, 3), "none"), ((0, 1), "none")]
