"""A real browser session: Debian's Chromium driven by playwright types a prompt, clicks Generate,
waits for the gallery, the table and the plot, and saves a screenshot."""
import os
from pathlib import Path

import pytest

pytest.importorskip("playwright")
from tests.browser import chromium_path, generate_in_browser, shared_app  # noqa: E402

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")]


def test_generate_in_chromium(tiny_world, tmp_path):
    shot = Path(os.environ.get("MEMLAB_SCREENSHOT_DIR", tmp_path)) / "generate.png"
    url, _ = shared_app(tiny_world)
    res = generate_in_browser(url, "a red ball on a table", 4, screenshot=shot)
    assert "Replication" in res["headline"] and "of 4 seeds" in res["headline"]
    assert res["pairs"] >= 4 and res["table_text"].count("a red ball on a table") == 4
    assert "match id" in res["table_text"] and "copies in training" in res["table_text"]  # one identifier
    assert shot.is_file() and shot.stat().st_size > 10_000
    # the charts follow the batch (a chained event): the per-seed chart is drawn, with the threshold
    assert res["first_s"] <= res["whole_s"] <= res["charts_s"]
    assert "top-1 score per seed" in res["seed_chart"] and "threshold" in res["seed_chart"]


def test_keyword_tab_in_chromium(tiny_world, tmp_path):
    from tests.browser import keyword_tab_in_browser

    url, _ = shared_app(tiny_world)
    res = keyword_tab_in_browser(url, "colour field", screenshot=tmp_path / "kw.png", related="colour")
    assert "30 captions" in res["summary"] and (tmp_path / "kw.png").is_file() and res["render_s"] < 30
    # whose works: the related keyword's line and its table column (every caption names "colour")
    assert "whose works: 0% of the “colour field” items (0 of 30)" in res["summary"], res["summary"]
    assert "100% of the “colour field” captions name “colour” themselves" in res["summary"]
    assert "name “colour”" in res["headers"], res["headers"]
    # the cluster rank follows the keyword shown: no image of this world is nearly identical to another, so its
    # caption comes from the miscellaneous images (rank 0), where the box stood at 1 and "generate" was refused
    assert res["rank"] == ("1", "0"), res["rank"]


def test_token_attribution_chart_and_descriptor_choice_in_chromium(tiny_world, tmp_path):
    """The prompt's per-token attribution appears as a bar chart; the verdict's descriptor is a choice."""
    from tests.browser import app_page

    with app_page(tiny_world, ready="#attribution-btn") as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        page.locator("#attribution-btn").click()
        page.locator("#attribution .js-plotly-plot").first.wait_for(timeout=120_000)
        ticks = page.eval_on_selector_all("#attribution .xtick text", "els => els.map(e => e.textContent)")
        assert any(t.startswith("red") for t in ticks) and any(t.startswith("ball") for t in ticks)
        assert page.locator("#descriptor input").first.input_value() == "pixel"
        page.screenshot(path=str(tmp_path / "attribution.png"), full_page=True)
    assert (tmp_path / "attribution.png").stat().st_size > 10_000


def test_a_refused_request_clears_the_results_it_invalidates_in_chromium(tiny_world, tmp_path):
    """After a good run, a bad seed list is answered with its message and the previous run's headline,
    pairs, table and selected seed's top-k are gone, so the message never stands over results of another query."""
    from tests.browser import app_page

    with app_page(tiny_world) as page:
        page.get_by_label("Prompt").first.fill("a red ball on a table")
        page.get_by_label("…or explicit seeds (at most 64)").fill("0-1")
        page.locator("#generate-btn").click()
        page.wait_for_function("document.querySelector('#headline').innerText.includes('% of 2 seeds')", timeout=60_000)
        assert page.locator("#pairs img").count() >= 2
        # a seed's top-k shows once the seed is selected (no empty box before), and goes with its run
        assert not page.locator("#topk").is_visible()
        page.locator("#pairs .thumbnail-item").first.click()
        page.locator("#topk img").first.wait_for(timeout=30_000)
        page.get_by_label("…or explicit seeds (at most 64)").fill("a-b")
        page.locator("#generate-btn").click()
        page.get_by_text("cannot read seeds").first.wait_for(timeout=30_000)
        page.locator("#topk").wait_for(state="hidden", timeout=10_000)
        page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
        headline = page.locator("#headline").inner_text()
        pairs = page.locator("#pairs img").count()
        table = page.locator("#seed-table").inner_text()
    assert "Replication" not in headline and pairs == 0 and "a red ball" not in table
