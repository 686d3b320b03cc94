"""A real browser session: Debian's Chromium driven by playwright types a prompt, clicks Generate,
waits for the gallery, the table and the plot, and saves a screenshot."""
import os
from pathlib import Path

import pytest

pytest.importorskip("playwright")
from memlab.browser import chromium_path, generate_in_browser, serve_app  # noqa: E402

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")


def test_generate_in_chromium(tiny_world, tmp_path):
    shot = Path(os.environ.get("MEMLAB_SCREENSHOT_DIR", tmp_path)) / "generate.png"
    with serve_app(tiny_world) as (url, _):
        res = generate_in_browser(url, "a red ball on a table", 4, screenshot=shot)
    assert "Replication" in res["headline"] and "of 4 seeds" in res["headline"]
    assert res["pairs"] >= 4 and res["table_text"].count("a red ball on a table") == 4
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert res["first_s"] <= res["whole_s"]


def test_keyword_tab_in_chromium(tiny_world, tmp_path):
    from memlab.browser import keyword_tab_in_browser

    with serve_app(tiny_world) as (url, _):
        res = keyword_tab_in_browser(url, "colour field", screenshot=tmp_path / "kw.png")
    assert "30 captions" in res["summary"] and (tmp_path / "kw.png").is_file() and res["render_s"] < 30
