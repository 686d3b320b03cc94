"""The app as an educator and a researcher use it (issue 14), in real Chromium: the headline's source,
the Compare A/B grid (every row on the page, streamed, exported), seed counts out of range, tables that
read whole, export during a run, Match an image, verdicts at a phone's 420 px, and the guided lesson with its glossary.
Screenshots go to MEMLAB_SCREENSHOT_DIR when it is set."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright")
from tests.browser import app_page, chromium_path, fill_kept, fonts_drawn, open_tab, wait_text  # noqa: E402

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")]
ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "assets" / "world"


def _shot(tmp_path, name: str) -> Path:
    return Path(os.environ.get("MEMLAB_SCREENSHOT_DIR", tmp_path)) / name


def _toast(page, text: str, timeout: int = 30_000):
    page.wait_for_function("t => Array.from(document.querySelectorAll('.toast-body')).some(e => e.innerText.includes(t))",
                           arg=text, timeout=timeout)


def test_headline_names_its_source_and_seed_counts_out_of_range_get_a_message(tiny_world, tmp_path):
    with app_page(tiny_world) as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        for bad in ("0", "100000"):  # never silently changed to 1 or 64
            page.locator("#n-seeds input").fill(bad)
            page.locator("#n-seeds input").press("Tab")
            assert page.locator("#n-seeds input").input_value() == bad
            page.locator("#generate-btn").click()
            # a message where the results go (not a red badge over them)
            wait_text(page, "#headline", f"the number of seeds must be between 1 and 64 (got {int(bad):,})")
            assert "Replication" not in page.locator("#headline").inner_text()
        page.locator("#n-seeds input").fill("2")
        page.locator("label:has-text('rna') input").first.check()
        page.locator("#generate-btn").click()
        wait_text(page, "#headline", "% of 2 seeds")  # the whole run (its first pair comes first)
        head = page.locator("#headline").inner_text()
    assert "mitigation rna:k=4,seed=0 · 3 steps, guidance 5 · pixel > " in head and "threshold" in head


# Each header cell of a table: its text, how many lines its words take, and whether it ends inside the
# table's visible box (not scrolled out of view to the right).
_HEADERS = """s => { const t = document.querySelector(s), box = t.getBoundingClientRect();
  return Array.from(t.querySelectorAll('th')).map(th => {
    const w = document.createTreeWalker(th, NodeFilter.SHOW_TEXT), lines = []; let n;
    while ((n = w.nextNode())) { if (!n.textContent.trim()) continue;
      const r = document.createRange(); r.selectNodeContents(n); lines.push(r.getClientRects().length); }
    return {text: th.innerText.trim(), lines: Math.max(0, ...lines), in_view: th.getBoundingClientRect().right <= box.right + 1};
  }); }"""


def test_tables_name_their_columns_before_a_run_and_read_whole_after_it(tiny_world, tmp_path):
    """Empty tables show their own column names (not Gradio's "1 2 3"); after a run no header breaks
    inside a word ("se ed"), the verdict and score are in view without scrolling the table sideways,
    and scores have the pairs' 3 decimals."""
    from memlab.app.views import ID_COLUMNS, SEED_COLUMNS

    with app_page(tiny_world) as page:
        def headers(sel):  # each table is waited for: on a loaded machine it renders after the page is ready
            page.locator(f"{sel} th").first.wait_for(timeout=30_000)
            return [h["text"] for h in page.evaluate(_HEADERS, sel)]
        before = {s: headers(s) for s in ("#seed-table", "#closest")}
        open_tab(page, "Training set")
        before.update({s: headers(s) for s in ("#search-table", "#group-table")})
        open_tab(page, "Generate & match")
        page.get_by_label("Prompt").first.fill("a red ball on a long wooden table beside a tall window, "
                                               "in a quiet room at the end of a long and rainy day")
        page.locator("#n-seeds input").fill("4")
        page.locator("#generate-btn").click()
        wait_text(page, "#headline", "% of 4 seeds")
        col = SEED_COLUMNS.index("score")
        page.wait_for_function(f"document.querySelectorAll('#seed-table [role=gridcell][data-col=\"{col}\"]').length >= 4",
                               timeout=30_000)
        after = page.evaluate(_HEADERS, "#seed-table")
        scores = page.eval_on_selector_all(f'#seed-table [role=gridcell][data-col="{col}"]',
                                           "cells => cells.map(c => c.innerText.trim())")
        page.locator("#seed-table").screenshot(path=str(_shot(tmp_path, "seed-table.png")))
    assert before == {"#seed-table": SEED_COLUMNS, "#closest": ID_COLUMNS + ["text similarity"],
                      "#search-table": ID_COLUMNS, "#group-table": ID_COLUMNS}
    assert [h["text"] for h in after] == SEED_COLUMNS and all(h["lines"] == 1 for h in after), after
    assert all(h["in_view"] for h in after if h["text"] in ("seed", "verdict", "score", "match id")), after
    assert len(scores) == 4 and all(len(x) == 5 and x[1] == "." for x in scores), scores


def test_compare_is_an_ab_grid_every_row_on_the_page_streamed_and_exported(tiny_world, tmp_path):
    """4 strategies x 8 seeds: the first row shows while the others are still pending (so before the last
    strategy starts), all 32 pairs end on the page with no scrolling box around them, and the export holds
    the whole comparison in `memlab run`'s JSONL format."""
    with app_page(tiny_world, viewport=(1400, 1000)) as page:
        open_tab(page, "Compare mitigations")
        fill_kept(page, page.locator("#compare-prompt textarea"), "a red ball on a table")
        page.locator("#compare-seeds textarea, #compare-seeds input").first.fill("0-7")
        page.get_by_text("Sampling").nth(1).click()  # (the tiny world is fast: more steps, so rows take a while)
        page.locator("#compare-steps input[type=number]").fill("60")
        page.locator("#compare-steps input[type=number]").press("Tab")
        page.evaluate("""() => { window.firstRowPending = null;
            new MutationObserver(() => {
              const done = document.querySelectorAll('#grid .ab-row:not(.ab-head):not(.ab-pending)').length;
              if (done && window.firstRowPending === null)
                window.firstRowPending = document.querySelectorAll('#grid .ab-pending').length;
            }).observe(document.body, {subtree: true, childList: true}); }""")
        page.locator("#compare-btn").locator("xpath=ancestor::div[contains(@class,'column')][1]") \
            .locator("label:has-text('cwr') input").check()
        page.locator("#compare-btn").click()
        page.wait_for_function("document.querySelectorAll('#grid figure.ab-cell').length == 32", timeout=180_000)
        wait_text(page, "#compare-headline", "4 of 4 strategies on the same 8 seeds")
        pending_at_first_row = page.evaluate("window.firstRowPending")
        rows = page.locator("#grid .ab-row:not(.ab-head) .ab-label b").all_inner_texts()
        boxed = page.evaluate("""() => Array.from(document.querySelectorAll('#grid figure.ab-cell img')).filter(img => {
            for (let e = img.parentElement; e && e !== document.body; e = e.parentElement) {
              const o = getComputedStyle(e).overflowY;
              if ((o === 'auto' || o === 'scroll') && e.scrollHeight > e.clientHeight + 2) return true; }
            return img.getBoundingClientRect().width < 60; }).length""")
        titles = page.eval_on_selector_all("#grid .ab-label[title]", "els => els.map(e => e.title)")
        # the table's headers wrap between words, never inside one ("detectio n" did): each header's longest word,
        # set in the header's font, fits the header's width
        page.locator("#compare-table table").first.wait_for(timeout=30_000)
        broken = page.evaluate("""() => Array.from(document.querySelectorAll('#compare-table thead th')).filter(th => {
            const text = (th.innerText || '').trim(); if (!text) return false;
            const probe = document.createElement('span');
            const cs = getComputedStyle(th.querySelector('span') || th);
            probe.style.cssText = 'position:absolute;visibility:hidden;white-space:nowrap';
            probe.style.font = cs.font; probe.style.letterSpacing = cs.letterSpacing;
            document.body.appendChild(probe);
            const longest = Math.max(...text.split(/\\s+/).map(w => { probe.textContent = w; return probe.getBoundingClientRect().width; }));
            probe.remove();
            const box = (th.querySelector('span') || th).getBoundingClientRect().width;
            return longest > box + 0.5; }).map(th => th.innerText.trim())""")
        # every column is in view on a 1400 px desktop: the table ends inside its frame (a column added with the
        # spec's old width pushed the last one out of view)
        overflow = page.evaluate("""() => { const t = document.querySelector('#compare-table table');
            return t.getBoundingClientRect().right - document.querySelector('#compare-table').getBoundingClientRect().right; }""")
        page.screenshot(path=str(_shot(tmp_path, "compare-desktop.png")), full_page=True)
        page.locator("#compare-export").click()
        link = page.locator("#compare-export-file a[download='comparison.zip']")
        link.wait_for(timeout=60_000)
        with page.expect_download() as dl:
            link.click()
        path = tmp_path / "comparison.zip"
        dl.value.save_as(path)
    assert pending_at_first_row == 3, pending_at_first_row
    assert rows == ["none", "rna k=4", "gni λ=0.1", "cwr k=4"] and boxed == 0
    assert broken == [], broken
    assert overflow <= 0, overflow
    assert titles[1:] == ["rna:k=4,seed=0", "gni:lam=0.1,halves=both,seed=0", "cwr:k=4,seed=0"]  # full spec on hover
    with zipfile.ZipFile(path) as z:
        lines = [json.loads(x) for x in z.read("results.jsonl").splitlines()]
    assert [x["type"] for x in lines].count("seed") == 32 and [x["type"] for x in lines].count("summary") == 4


def test_an_export_during_a_run_is_labelled_partial(tiny_world, tmp_path):
    with app_page(tiny_world) as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        page.locator("#n-seeds input").fill("64")
        page.get_by_text("Sampling").first.click()
        steps = page.get_by_label("number input for Steps")
        steps.fill("200")  # 5x the steps that a warm shared server once finished before Stop came
        steps.press("Tab")
        page.locator("#generate-btn").click()
        page.locator("#pairs img").first.wait_for(timeout=120_000)
        wait_text(page, "#headline", "of 64 seeds so far (running")
        page.get_by_role("button", name="Export run (JSONL + images)").click()
        page.locator("a[download='run-partial.zip']").wait_for(timeout=60_000)  # labelled partial
        page.locator("#stop-btn").click()
        wait_text(page, "#headline", "of 64 seeds · replication")  # "Stopped after n of 64 seeds": partial
        head = page.locator("#headline").inner_text()
    assert head.startswith("Stopped after ") and "partial" in head, head


def test_an_uploaded_image_finds_its_training_original_at_top1(tiny_world, tmp_path):
    import io

    from PIL import Image

    from memlab.app.pictures import FADED
    from tests.helpers import synthetic_images

    img = tmp_path / "upload.png"
    synthetic_images(30, size=16)[7].save(img)  # training item 7 of the tiny world
    with app_page(tiny_world) as page:
        open_tab(page, "Match an image")
        page.locator("#match-image input[type=file]").set_input_files(str(img))
        page.locator("#match-image img").first.wait_for(timeout=30_000)
        page.locator("#match-btn").click()
        wait_text(page, "#match-verdict", "top-1 training image #7", timeout=60_000)
        text = page.locator("#match-verdict").inner_text()
        # issue 32: the upload beside its match, the windows where their detail agrees marked
        first = page.locator("#match-gallery img").first
        first.wait_for(timeout=30_000)
        pair = np.asarray(Image.open(io.BytesIO(page.request.get(first.get_attribute("src")).body())).convert("RGB"),
                          np.int16)
    from memlab.index import agreement_of
    from memlab.world import World

    with Image.open(World.load(tiny_world).index().image_path(7)) as train:  # recomputed: what the page says
        want = agreement_of(Image.open(img), train)
    assert "replicated" in text and "Where it agrees with #7" in text and f"{want['share']:.0%} of the image" in text
    assert "template-copy threshold" not in text  # a whole copy: the template check is not what called it
    h, w, _ = pair.shape
    assert w > 1.8 * h  # the upload and its match side by side
    upload = np.asarray(Image.open(img).convert("RGB").resize((64, 64)).resize((h - 8, h - 8), Image.NEAREST), np.int16)
    mask = np.kron(np.asarray(want["mask"], bool), np.ones(((h - 8) // 8, (h - 8) // 8), bool))
    shown, faded = pair[4:h - 4, 4:h - 4], np.array(FADED, np.int16)
    # the tiny world's pictures are smooth colour fields (upsampled 4 x 4 noise): little or no detail to agree
    # in, so an exact copy may light few windows; those it lights keep the upload's colours (but for their
    # outline), the rest fade
    from memlab.app.pictures import _eroded

    if mask.any():
        core = _eroded(mask, 4)
        assert not core.any() or np.abs(shown[core] - upload[core]).mean() < 12
    if (~mask).any():
        assert np.abs(shown[~mask] - faded).mean() < np.abs(upload[~mask] - faded).mean() - 20


def test_pairs_and_verdicts_are_legible_at_420px(tiny_world, tmp_path):
    """A phone: each pair spans the width and its caption (seed, verdict, score, training image) wraps
    instead of being cut, in the grid and when the pair is tapped open; the per-seed chart takes the width;
    the Compare grid wraps to two pairs a line."""
    with app_page(tiny_world, viewport=(420, 900)) as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        page.locator("#n-seeds input").fill("4")
        page.locator("#generate-btn").click()
        page.wait_for_function("document.querySelectorAll('#pairs .caption-label').length >= 4", timeout=120_000)
        page.wait_for_timeout(500)
        caps = page.evaluate("""() => Array.from(document.querySelectorAll('#pairs .caption-label')).map(e => ({
            text: e.innerText, cut: e.scrollWidth > e.clientWidth + 1, size: parseFloat(getComputedStyle(e).fontSize),
            visible: e.getBoundingClientRect().height > 0}))""")
        widths = page.eval_on_selector_all("#pairs .thumbnail-item img", "els => els.map(e => e.getBoundingClientRect().width)")
        page.locator("#seed-plot .js-plotly-plot").first.wait_for(timeout=30_000)
        plot_w = page.locator("#seed-plot").bounding_box()["width"]
        page.locator("#seed-plot .gtitle").first.wait_for(timeout=30_000)
        # the page's label for the chart (top-left) and the chart's centred title: apart, not one over the other
        apart = page.evaluate("""() => { const b = document.querySelector('#seed-plot');
            const l = b.querySelector('[data-testid="block-label"], .block-label').getBoundingClientRect();
            const t = b.querySelector('.gtitle').getBoundingClientRect();
            return [l.bottom <= t.top || t.right <= l.left || l.right <= t.left, l.bottom, t.top, l.right, t.left]; }""")
        shot = _shot(tmp_path, "generate-phone.png")
        page.screenshot(path=str(shot), full_page=True)
        page.locator("#pairs .thumbnail-item").nth(1).click()  # a tapped pair opens alone, its caption whole
        page.locator("#pairs .preview .caption").wait_for(timeout=10_000)
        page.wait_for_timeout(300)
        opened = page.evaluate("""() => { const p = document.querySelector('#pairs .preview'), c = p.querySelector('.caption');
            const box = c.getBoundingClientRect(), pairs = document.querySelector('#pairs').getBoundingClientRect();
            return {text: c.innerText, size: parseFloat(getComputedStyle(c).fontSize),
                    cut: c.scrollWidth > c.clientWidth + 1 || box.left < pairs.left - 1 || box.right > pairs.right + 1,
                    img: p.querySelector('.media-button img').getBoundingClientRect().width,
                    grid: document.querySelector('#pairs .grid-wrap')?.getBoundingClientRect().height || 0}; }""")
        page.screenshot(path=str(_shot(tmp_path, "generate-phone-pair.png")))
        open_tab(page, "Compare mitigations")
        fill_kept(page, page.locator("#compare-prompt textarea"), "a red ball on a table")
        page.locator("#compare-n input").fill("4")
        page.locator("#compare-btn").click()
        page.wait_for_function("document.querySelectorAll('#grid figure.ab-cell').length == 12", timeout=120_000)
        cell_w = page.eval_on_selector_all("#grid figure.ab-cell", "els => els.map(e => e.getBoundingClientRect().width)")
        page.screenshot(path=str(_shot(tmp_path, "compare-phone.png")), full_page=True)
    assert len(caps) == 4 and all(any(w in c["text"] for w in ("REPLICATED", "POSSIBLE COPY", "novel"))
                                  and "seed" in c["text"]
                                  for c in caps)
    assert not any(c["cut"] for c in caps) and min(c["size"] for c in caps) >= 12 and all(c["visible"] for c in caps)
    assert min(widths) >= 300  # a pair spans the phone's width
    assert plot_w >= 300  # the per-seed chart on a line of its own, not squeezed beside k
    assert apart[0], apart  # its title below the page's label for it, where a phone's width puts them in line
    assert opened["text"].startswith("seed 1 ·") and not opened["cut"] and opened["size"] >= 12, opened
    assert opened["img"] >= 300 and opened["grid"] == 0, opened  # alone, not over the stacked grid
    assert min(cell_w) >= 150  # two grid cells a line, not 4 thumbnails
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(not (BUILTIN / "world.json").is_file(), reason="the built-in world is not built")
def test_a_gallery_of_training_images_wraps_to_a_phones_width(tmp_path):
    """At 420 px a caption search's 8-column gallery shows 3 thumbnails a line, none scrolled out of view
    sideways (the built-in world: the tiny test world has no thumbnails)."""
    with app_page(BUILTIN, viewport=(420, 900)) as page:
        open_tab(page, "Training set")
        fill_kept(page, page.get_by_label("Search captions"), "red")
        page.get_by_role("button", name="Search").click()
        page.wait_for_function("Array.from(document.querySelectorAll('.grid-container')).some(g => g.offsetParent && "
                               "g.querySelectorAll('.thumbnail-item').length >= 8)", timeout=60_000)
        import re

        import pandas as pd

        caps = pd.read_parquet(BUILTIN / "index" / "items.parquet", columns=["caption"])["caption"].str.lower()
        holding = int(caps.map(lambda c: bool(re.search(r"\bred\b", c))).sum())  # the label counts them all
        page.get_by_text(f"{holding:,} training captions hold every word").first.wait_for(timeout=30_000)
        grids = page.evaluate("""() => Array.from(document.querySelectorAll('.grid-container')).filter(g => g.offsetParent)
            .map(g => ({items: g.querySelectorAll('.thumbnail-item').length, over: g.scrollWidth - g.clientWidth,
                        width: g.querySelector('.thumbnail-item').getBoundingClientRect().width}))""")
        page.screenshot(path=str(_shot(tmp_path, "training-set-phone.png")))
    assert grids and all(g["over"] <= 1 and g["width"] >= 90 for g in grids), grids


@pytest.mark.skipif(not (BUILTIN / "world.json").is_file(), reason="the built-in world is not built")
def test_the_guided_lesson_and_its_glossary(tmp_path):
    """The five steps on the built-in world: its most duplicated probe copies its training image, that
    image's copies are shown, RNA lowers the replication on the same seeds, a prompt seen once is not
    copied, and the template probe's seeds copy pictures of its template (the step once read no row's template
    and said "0 of 8" beside 8 pairs framed as template copies); a word's glossary link lands on its definition;
    headings and bold words are drawn in one font each."""
    with app_page(BUILTIN, viewport=(1400, 1000)) as page:
        mask_info = page.locator("#show-mask").inner_text()  # Generate's "Show the copied region"
        open_tab(page, "Lesson")
        # each step's button stands out from the grey group it sits in (a secondary one took the group's colour)
        colours = page.evaluate("""() => { const b = document.querySelector('#lesson-1');
            const g = b.closest('.gr-group, .group, .styler') || b.parentElement;
            return [getComputedStyle(b).backgroundColor, getComputedStyle(g).backgroundColor]; }""")
        texts = []
        done = {1: "seeds replicated", 2: "copies in training", 3: "with RNA", 4: "seeds replicated",
                5: "picture of this template"}
        for i in (1, 2, 3, 4, 5):  # (while a step runs, its text box shows the progress bar's text)
            page.locator(f"#lesson-{i}").click()
            wait_text(page, f"#lesson-{i}-text", done[i])
            texts.append(page.locator(f"#lesson-{i}-text").inner_text())
        tint = page.locator("p", has_text="Outlined in yellow, the rest faded: the bright-ending map").inner_text()  # the step's own
        copies_shown = page.locator("#lesson-copies img").count()
        blank = page.evaluate("""() => { const g = document.querySelector('#lesson-copies');
            return g.getBoundingClientRect().bottom - g.querySelector('.grid-container').getBoundingClientRect().bottom; }""")
        page.screenshot(path=str(_shot(tmp_path, "lesson-desktop.png")), full_page=True)
        # headings and bold words in one font each (Gradio's own 600-weight files hold a few glyphs, so a bold
        # line once drew its "A" and "B" in Source Sans and the rest in the machine's sans serif)
        bold = [b for b in fonts_drawn(page, "h1, h3, h4, strong") if b[1]]  # (drawn: not on a hidden tab)
        page.locator("#lesson-1-text a", has_text="threshold").click()
        page.wait_for_timeout(500)
        hash_, top = page.evaluate("location.hash"), page.locator("#g-threshold").bounding_box()["y"]
        definition = page.locator("#glossary-text li", has_text="The score above which").inner_text()
    import re

    k1 = int(re.match(r"(\d+) of 8 seeds replicated", texts[0])[1])
    m2 = re.search(r"top-1 match of (\d+) of 8 seeds. It has (\d+) copies in training", texts[1])
    none_rate, rna_rate = map(float, re.search(r"Replication ([\d.]+)% without mitigation, ([\d.]+)% with RNA",
                                                texts[2]).groups())
    assert k1 >= 1 and int(m2[1]) >= 6 and int(m2[2]) >= 10 and copies_shown == int(m2[2])
    assert "All carry one caption: full duplication" in texts[1], texts[1]  # the lesson's probe: full ddf 20
    assert blank <= 40  # the copies' gallery ends under its last row, no blank band
    assert rna_rate < none_rate
    assert texts[3].startswith("0 of 8 seeds replicated")
    m5 = re.match(r"(\d+) of 8 seeds have a picture of this template.* Of those, (\d+) (?:are|is) called a "
                  r"template copy \(framed purple\) and (\d+) replicated as a whole", texts[4])
    assert m5 and int(m5[1]) >= 1 and int(m5[2]) + int(m5[3]) <= int(m5[1]), texts[4]
    ratio = json.loads((BUILTIN / "card.json").read_text())["measured"]["bright_ending_coverage"][
        "median_inside_over_outside"]  # what the step says of the tint is the world's own measure of it
    assert f"{ratio:.2f}x as bright on the copied objects" in tint
    assert f"{ratio:.2f}x as bright on the copied objects" in mask_info  # and beside the box that shows it
    assert ("does not single the copied part out" in tint) == (ratio <= 1)
    assert hash_ == "#g-threshold" and 0 <= top < 1000 and definition.startswith("threshold")
    assert colours[0] != colours[1], colours
    assert len(bold) >= 8 and all(len(fonts) == 1 for _, fonts in bold), [b for b in bold if len(b[1]) != 1]


def test_a_closed_page_stops_its_run_within_a_step():
    """A visitor who closes the page mid-run frees the server for the next: the run ends at its next denoising
    step (``wiring.stop_session``, on Gradio's unload), where Gradio alone let the chunk in flight (up to 8 seeds;
    here 7 seeds at 200 steps on the built-in world) run on for nobody. The same for a step of the lesson (on a
    server of its own: the lesson's rows that another test ran are kept, and would be shown without a run)."""
    from tests.browser import busy_seconds, shared_app

    own = {"MEMLAB_TEST_SERVER": "a closed page"}  # (any variable: shared_app keys a server by its environment)
    with app_page(BUILTIN, env=own) as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        page.locator("#n-seeds input").fill("64")
        page.get_by_text("Sampling").first.click()
        steps = page.get_by_label("number input for Steps")
        steps.fill("200")
        steps.press("Tab")
        page.locator("#generate-btn").click()
        page.locator("#pairs img").first.wait_for(timeout=120_000)  # the head start's seed: the rest is running
    server = shared_app(BUILTIN, env=own)[1]
    shares = busy_seconds(server)  # the page is closed
    with app_page(BUILTIN, env=own) as page:  # the lesson's third step: 16 images, about 5 s
        open_tab(page, "Lesson")
        page.locator("#lesson-3").click()
        page.wait_for_function("() => (document.querySelector('#lesson-3-text') || {}).innerText?.includes("
                               "'running 16 images')", timeout=60_000)  # (its progress bar in front of it)
    lesson = busy_seconds(server)
    assert min(shares) < 0.2 and len(shares) <= 3, f"the server kept working for a closed page ({shares})"
    # (a row, 8 images, takes 2.5 s on the 2-core machine: a lesson that ran its row on would be busy 2 windows)
    assert min(lesson) < 0.2 and len(lesson) <= 2, f"the server kept working for a closed lesson ({lesson})"


def test_the_copied_region_is_marked_on_the_pairs_when_asked(tiny_world, tmp_path):
    """Issue 32 item 4: ticking "Show the copied region" draws every pair again with its seed's bright-ending
    map marked on the generation and its match (other pictures), and unticking gives the plain pairs back."""
    import io

    from PIL import Image

    with app_page(tiny_world) as page:
        page.get_by_label("Prompt").first.fill("a colour field 3")
        page.locator("#n-seeds input").fill("2")
        page.locator("#generate-btn").click()
        wait_text(page, "#headline", "% of 2 seeds")
        page.wait_for_function("document.querySelectorAll('#pairs img').length >= 2", timeout=60_000)
        srcs = "() => Array.from(document.querySelectorAll('#pairs img')).map(i => i.src)"
        changed = "b => { const s = Array.from(document.querySelectorAll('#pairs img')).map(i => i.src); " \
                  "return s.length >= 2 && s[0] !== b[0] && s[1] !== b[1]; }"
        plain = page.evaluate(srcs)
        page.locator("#show-mask input").check()
        page.wait_for_function(changed, arg=plain, timeout=30_000)
        tinted = page.evaluate(srcs)
        page.locator("#pairs").screenshot(path=str(_shot(tmp_path, "pairs-copied-region.png")))
        a, b = (np.asarray(Image.open(io.BytesIO(page.request.get(u).body())).convert("RGB"), np.int16)
                for u in (plain[0], tinted[0]))
        page.locator("#show-mask input").uncheck()
        page.wait_for_function(changed, arg=tinted, timeout=30_000)
        again = page.evaluate(srcs)
    assert a.shape == b.shape and np.abs(a - b).max() > 20  # the mark is visible
    assert again[:2] == plain[:2]  # the plain pairs, the same pictures


def test_a_batch_uploaded_on_the_page_reads_its_replication_rate_and_a_row_per_image(tiny_world, tmp_path):
    """Match a batch in Chromium: pressed with nothing chosen, a message and no file; three files chosen at once
    (two training items and a file that is no image) give "2 of 2 images replicated", a row per image naming its
    top-1 training item, the bad file named as left out, no error toast, and the result offered as JSON."""
    from tests.helpers import synthetic_images

    ims = synthetic_images(30, size=16)
    files = [tmp_path / "seven.png", tmp_path / "twelve.png", tmp_path / "notes.png"]
    ims[7].save(files[0]), ims[12].save(files[1])
    files[2].write_text("not an image")
    with app_page(tiny_world) as page:
        open_tab(page, "Match an image")
        page.locator("#batch").get_by_text("Match a batch").first.click()
        page.locator("#batch-btn").click()  # nothing chosen yet: a message where the results go, no file offered
        wait_text(page, "#batch-summary", "upload some images first", timeout=30_000)
        page.wait_for_timeout(500)
        offered_empty = page.locator("#batch-file").is_visible()
        page.locator("#batch-files input[type=file]").set_input_files([str(f) for f in files])
        page.locator("#batch-files").get_by_text("twelve").first.wait_for(timeout=30_000)  # (name and ".png" apart)
        page.locator("#batch-btn").click()
        wait_text(page, "#batch-summary", "of 2 images", timeout=60_000)
        summary = page.locator("#batch-summary").inner_text()
        wait_text(page, "#batch-table", "twelve.png", timeout=30_000)
        table = page.locator("#batch-table").inner_text()
        toasts = page.locator(".toast-body").count()
        page.locator("#batch-file").get_by_text("batch").first.wait_for(timeout=30_000)  # its JSON offered
    assert "2 of 2 images replicated: 100.0%" in " ".join(summary.split()) and "notes.png" in summary
    assert "left out" in summary and toasts == 0 and not offered_empty
    cells = [c.strip() for c in table.splitlines() if c.strip()]  # (one cell a line)
    rows = {c: cells[i:i + 6] for i, c in enumerate(cells) if c.endswith(".png")}
    assert set(rows) == {"seven.png", "twelve.png"}, table  # the bad file has no row
    assert rows["seven.png"][1] == rows["twelve.png"][1] == "replicated", rows
    assert rows["seven.png"][3] == "7" and rows["twelve.png"][3] == "12", rows  # each one's own training item


def test_bad_input_on_match_compare_and_keywords_is_a_message_where_the_results_go(tiny_world, tmp_path):
    """Issue 33 item 8: a refused request on Match, Compare and Keyword clusters reads as a message in place
    of its results, with no error toast or red badge (the API still answers with an error: test_bad_inputs)."""
    with app_page(tiny_world) as page:
        open_tab(page, "Match an image")
        page.locator("#match-btn").click()
        wait_text(page, "#match-verdict", "upload an image first", timeout=30_000)
        open_tab(page, "Compare mitigations")
        fill_kept(page, page.locator("#compare-seeds textarea, #compare-seeds input").first, "0-99")
        page.locator("#compare-btn").click()
        wait_text(page, "#compare-headline", "seeds", timeout=30_000)
        compare_text = page.locator("#compare-headline").inner_text()
        page.wait_for_timeout(500)
        toasts = page.locator(".toast-body").count()
        page.screenshot(path=str(_shot(tmp_path, "bad-input-message.png")))
    assert "⚠️" in compare_text and "at most 16" in compare_text
    assert toasts == 0


def test_the_worlds_card_reads_whole_without_scrolling_sideways():
    """About this world's measured-memorization block ran off the right edge (the detectors' AUC against each
    group, the recalls): on a desktop it wraps, the whole report on the page; on a phone, where its table
    wrapped would read as a jumble, the block scrolls inside itself and the page does not. The card's checks
    stand above it as a table, each met or not beside the figure it is decided on and its bound, and the table
    wraps its long check names on a phone rather than widen the page; the recall on each kind of copy is drawn
    below it, and the page still does not scroll sideways."""
    from memlab.cardchecks import card_checks
    from memlab.cardreport import format_report

    measured = json.loads((BUILTIN / "card.json").read_text())["measured"]
    report, checks = format_report(measured, checks=False), card_checks(measured)
    for width in (1400, 420):
        with app_page(BUILTIN, viewport=(width, 900)) as page:
            open_tab(page, "About this world")
            pre = page.locator("#about-card pre").first
            pre.wait_for(timeout=30_000)
            scroll, client, page_scroll = page.evaluate("""() => { const p = document.querySelector('#about-card pre');
                return [p.scrollWidth, p.clientWidth, document.documentElement.scrollWidth]; }""")
            shown = pre.inner_text()
            rows = page.evaluate("""() => [...document.querySelectorAll('#about-card table')].find(
                t => t.innerText.includes('bound')).querySelectorAll('tbody tr').length""")
            cells = [page.locator("#about-card tr", has_text=c.key).first.inner_text() for c in checks]
            links = page.locator("#about-card tr", has_text="worst_kind").first.locator("a").count()  # img2img@0.5
            page.locator("#about-recall .js-plotly-plot").first.wait_for(timeout=30_000)  # the recall by kind, drawn
            bars = page.locator("#about-recall g.point").count()
            page_scroll = max(page_scroll, page.evaluate("() => document.documentElement.scrollWidth"))
        assert (scroll <= client + 1) == (width > 700), (width, scroll, client)
        assert page_scroll <= width, (width, page_scroll)
        assert " ".join(shown.split()) == " ".join(report.split()), width  # the whole report, word for word
        assert rows == len(checks) and "checks, each on" not in shown  # the checks once, in the table
        assert bars == 16, (width, bars)  # 8 kinds of copy, by 2 models
        assert links == 0, width  # a kind's "@" is text (``literal``), never read as an e-mail address
        for c, text in zip(checks, cells):
            assert ("yes" if c.met else "NO") in text and c.figure.split()[-1] in text, (width, c.key, text)


def test_a_keyword_view_without_clusters_still_sends_a_caption_to_generate():
    """The Keyword tab opens on the planted "lighthouse", whose 40 images are nearly identical to no other: no
    cluster, all miscellaneous. The rank box opens on 0 (the miscellaneous images), and "generate from this
    cluster's caption" opens Generate & match with the view's first image's caption. The thumbnails' gallery
    ends under its one row (Gradio's fixed height left a blank band of 150 px), and a view of many clusters
    ("star", 40 thumbnails) scrolls inside a box instead of making the page five rows longer."""
    from memlab.service import Lab
    from memlab.world import World

    lab = Lab(World.load(BUILTIN))
    view = lab.views[lab.keyword_names[0]]
    want = lab.item_caption(next(c for c in view["clusters"] if c["miscellaneous"])["representatives"][0])
    gallery = """() => { const g = document.querySelector('#kw-gallery'), w = g.querySelector('.grid-wrap');
        return {n: g.querySelectorAll('.thumbnail-item').length, height: g.getBoundingClientRect().height,
                blank: g.getBoundingClientRect().bottom - g.querySelector('.grid-container').getBoundingClientRect().bottom,
                hidden: w.scrollHeight - w.clientHeight}; }"""
    with app_page(BUILTIN, viewport=(1400, 900)) as page:
        open_tab(page, "Keyword clusters")
        rank = page.locator("#kw-rank input").first.input_value()
        one_row = page.evaluate(gallery)
        page.locator("#kw-gen").click()
        page.wait_for_function("t => (document.querySelector('#prompt textarea') || {}).value === t", arg=want,
                               timeout=30_000)
        open_tab(page, "Keyword clusters")
        box = page.locator("#kw-pick input").first
        fill_kept(page, box, "star")
        box.press("Enter")
        page.locator("#kw-btn").click()
        page.wait_for_function("() => document.querySelectorAll('#kw-gallery .thumbnail-item').length > 20",
                               timeout=60_000)
        many = page.evaluate(gallery)
    assert not any(not c["miscellaneous"] for c in view["clusters"]) and rank == "0" and "lighthouse" in want
    assert one_row["n"] == 4 and one_row["blank"] <= 40, one_row
    assert many["height"] <= 500 and many["hidden"] > 100, many  # the rest scrolled to, inside the box


def test_a_clusters_prompt_variants_are_filled_run_and_read_in_chromium(tmp_path):
    """Memory Triggers' study in the Keyword tab: pick a keyword with a cluster ("Velmora"), Fill (the cluster's
    caption and the paper's five kinds from templates), empty two to skip them, run on 2 seeds: the table lists
    the variants run and nothing else, the gallery holds 2 images a variant, and the chart names its whiskers; on
    a desktop the table's long prompts wrap inside its frame (unwrapped it ran 1,150 px past it)."""
    from memlab.service import Lab
    from memlab.variants import VARIANTS, cluster_caption, default_variants
    from memlab.world import World

    lab = Lab(World.load(BUILTIN))
    want = default_variants("Velmora", cluster_caption(lab.views["Velmora"], 1, lab.item_caption))
    for viewport in ((1400, 1000),):  # (a phone's width was looked at in screenshots: the table scrolls in its frame)
        with app_page(BUILTIN, viewport=viewport) as page:
            open_tab(page, "Keyword clusters")
            box = page.locator("#kw-pick input").first
            fill_kept(page, box, "Velmora")
            box.press("Enter")
            page.locator("#kw-rank input").first.fill("1")
            page.locator("#kw-variants").get_by_text("Prompt variants of this cluster").click()
            page.locator("#kw-var-fill").click()
            page.wait_for_function("t => (document.querySelector('#kw-var-caption textarea') || {}).value === t",
                                   arg=want["caption"], timeout=30_000)
            got = {k: page.locator(f"#kw-var-{k} textarea").input_value() for k in VARIANTS}
            assert got == want
            for k in ("keywords", "irrelevant"):
                page.locator(f"#kw-var-{k} textarea").fill("")
            page.locator("#kw-var-seeds input").first.fill("2")
            page.locator("#kw-var-run").click()
            wait_text(page, "#kw-var-table", "without", timeout=180_000)
            text = page.locator("#kw-var-table").inner_text()
            rows = [ln.split()[0] for ln in text.splitlines() if ln.split() and ln.split()[0] in VARIANTS]
            assert rows == ["caption", "short", "long", "without"]
            assert page.locator("#kw-var-gallery .thumbnail-item").count() == 8
            title = page.locator("#kw-var-plot .gtitle").first.text_content()
            assert "Velmora" in title and "95% interval" in title
            if viewport[0] > 1000:  # the long prompts wrap: the table ends inside its frame on a desktop
                frame = page.locator("#kw-var-table").bounding_box()
                table = page.locator("#kw-var-table table").first.bounding_box()
                assert table["x"] + table["width"] <= frame["x"] + frame["width"] + 1
            page.screenshot(path=str(_shot(tmp_path, f"variants-{viewport[0]}.png")), full_page=True)


def test_text_from_a_world_is_shown_as_written_and_never_fetches_a_remote_image(tiny_world, tmp_path):
    """A world's name and its training set's description come from its world.json, as captions and probes come
    from its data: markdown or HTML in them naming an image elsewhere (``![..](http://..)``, ``<img src=..>``)
    had the viewer's browser fetch it (a tracker, or a picture nobody chose put in front of a class). Now it is
    shown as written, and the page's policy lets images come from the app alone."""
    import http.server
    import shutil
    import threading
    import urllib.request

    from memlab.world import seal_world

    hits = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    remote = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    there = f"http://127.0.0.1:{remote.server_address[1]}"
    w = tmp_path / "world"
    shutil.copytree(tiny_world, w)
    m = json.loads((w / "world.json").read_text())
    m["name"] = f"tiny ![t]({there}/markdown.png)"
    m["trained_on"] = f"fields <img src='{there}/html.png'> **and** more"
    (w / "world.json").write_text(json.dumps(m))
    seal_world(w)
    try:
        with app_page(w) as page:
            open_tab(page, "About this world")
            page.locator("#about-card").get_by_text("more", exact=False).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            assert hits == [], hits  # (before: /markdown.png and /html.png)
            about = page.locator("#about-card").inner_text()
            assert f"![t]({there}/markdown.png)" in about and f"<img src='{there}/html.png'> **and** more" in about
            url = page.url
        with urllib.request.urlopen(url, timeout=10) as r:
            assert "img-src 'self' data: blob:" in r.headers.get("content-security-policy", "")
    finally:
        remote.shutdown()
