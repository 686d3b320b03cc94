"""Screenshots of every tab of the app, on a desktop (1400 px) and a phone (420 px), each after the
action a visitor takes there, for the README and the closing notes (a helper, not a test):

    python -m tests.screenshots OUT_DIR [--world DIR]

Writes OUT_DIR/{tab}-{desktop,phone}.png and prints what each shows; on the desktop also
OUT_DIR/readme-generate.png, the README's picture (docs/img/generate.png): the generate tab from its pairs
to seed 0's top-k matches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tour(page, world, out: Path, suffix: str) -> list[str]:
    """Visit each tab, act, screenshot; returns a line per screenshot."""
    import pandas as pd

    from tests.browser import fill_kept, open_tab

    probes = pd.read_csv(world.file("probes")) if world.file("probes") else pd.DataFrame({"prompt": ["a red ball"]})
    prompt = probes["prompt"].iloc[0]
    said = []

    def shot(name, what):
        f = out / f"{name}-{suffix}.png"
        page.wait_for_timeout(800)
        page.screenshot(path=str(f), full_page=True)
        said.append(f"{f.name}: {what}")

    page.get_by_label("Prompt").first.fill(prompt)
    page.locator("#n-seeds input").fill("8")
    page.locator("#generate-btn").click()
    page.wait_for_function("document.querySelector('#headline').innerText.includes('of 8 seeds') && "
                           "!document.querySelector('#headline').innerText.includes('so far')", timeout=300_000)
    page.locator("#pairs .thumbnail-item").first.click()
    page.locator("#topk img").first.wait_for(timeout=60_000)
    if suffix == "desktop":  # the README's picture: the pairs, the score per seed, the top-k
        page.wait_for_timeout(800)
        top, bottom = page.locator("#pairs").bounding_box(), page.locator("#topk").bounding_box()
        scrolled = page.evaluate("window.scrollY")  # (boxes are on the screen, a full page's clip on the page)
        page.screenshot(path=str(out / "readme-generate.png"), full_page=True,
                        clip={"x": top["x"] - 8, "y": top["y"] + scrolled - 8, "width": top["width"] + 16,
                              "height": bottom["y"] + bottom["height"] - top["y"] + 16})
        said.append("readme-generate.png: the README's picture (docs/img/generate.png)")
    shot("generate", f"8 seeds of “{prompt}”: headline with its source, pairs with verdicts, top-k of seed 0, "
                     f"score per seed, table, histogram over the background")
    open_tab(page, "Lesson")
    done = {1: "seeds replicated", 2: "copies in training", 3: "with RNA", 4: "seeds replicated"}
    for i in (1, 2, 3, 4):
        page.locator(f"#lesson-{i}").click()
        page.wait_for_function(f"(document.querySelector('#lesson-{i}-text').innerText || '').includes('{done[i]}')",
                               timeout=300_000)
    shot("lesson", "the first four steps run: copies, the copied image's duplicates, RNA on the same seeds, a unique "
                   "prompt (a world with template copies has a fifth, not run here)")
    open_tab(page, "Compare mitigations")
    fill_kept(page, page.locator("#compare-prompt textarea"), prompt)
    page.locator("#compare-seeds textarea, #compare-seeds input").first.fill("0-7")
    page.locator("#compare-btn").click()
    page.wait_for_function("document.querySelectorAll('#grid figure.ab-cell').length == 24", timeout=300_000)
    shot("compare", "A/B grid: none, rna k=4, gni λ=0.1 on seeds 0-7; charts and table")
    open_tab(page, "Match an image")
    first = world.index().image_path(0)
    if first is not None:
        page.locator("#match-image input[type=file]").set_input_files(str(first))
        page.locator("#match-image img").first.wait_for(timeout=30_000)
        page.locator("#match-btn").click()
        page.wait_for_function("(document.querySelector('#match-verdict').innerText || '').includes('Top-1')",
                               timeout=60_000)
    shot("match", "training image 0 uploaded: its nearest training images, scores, verdict")
    open_tab(page, "Training set")
    fill_kept(page, page.get_by_label("Search captions"), prompt.split()[1] if len(prompt.split()) > 1 else prompt)
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_timeout(2000)
    shot("training-set", "a caption search and the near-duplicate groups")
    open_tab(page, "Keyword clusters")
    if page.locator("#kw-btn").count():
        page.locator("#kw-btn").click()
        page.wait_for_timeout(3000)
    shot("keywords", "the first prebuilt keyword view: summary, cluster sizes, table, thumbnails")
    open_tab(page, "About this world")
    shot("about", "the world's card and the papers")
    return said


def main() -> int:
    from tests.browser import app_page

    from memlab.world import World

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = World.load(a.world)
    for suffix, viewport in (("desktop", (1400, 1000)), ("phone", (420, 900))):
        with app_page(world.path, viewport=viewport) as page:
            for line in tour(page, world, out, suffix):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
