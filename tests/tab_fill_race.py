"""How often a field filled as its tab first opens loses the text (the race ``browser.fill_kept`` covers; a
helper, not a test):

    python -m tests.tab_fill_race WORLD [--rounds 30]

Each round loads the app's page, runs the Match tab's refused request (as the test does), clicks the Compare tab,
fills its seed list at once and watches the field in the page for 3 s. Prints when each lost fill was made
(ms after the tab's click) and when the field was seen without the text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

WATCH = """async () => { const t1 = performance.now() - window.__t0;
  const field = () => document.querySelector('#compare-seeds textarea, #compare-seeds input');
  const start = performance.now();
  while (performance.now() - start < 3000) {
    if (!field() || field().value !== '0-99') return [t1, performance.now() - window.__t0];
    await new Promise(r => setTimeout(r, 5)); }
  return [t1, null]; }"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world")
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args(argv)
    from tests.browser import app_page

    made = []
    for i in range(a.rounds):
        with app_page(Path(a.world)) as page:
            page.get_by_role("tab", name="Match an image").click()
            page.locator("#match-btn").click()
            page.wait_for_function("(document.querySelector('#match-verdict') || {}).innerText?.includes("
                                   "'upload an image first')", timeout=30_000)
            page.evaluate("() => { window.__t0 = performance.now(); }")
            page.get_by_role("tab", name="Compare mitigations").click()
            page.locator("#compare-seeds textarea, #compare-seeds input").first.fill("0-99")
            made.append(page.evaluate(WATCH))
        if made[-1][1] is not None:
            print(f"round {i + 1}: filled {made[-1][0]:.0f} ms after the tab's click; gone at {made[-1][1]:.0f} ms",
                  flush=True)
    lost = sum(m[1] is not None for m in made)
    print(f"{a.rounds} rounds: {lost} fills lost; fills made {min(m[0] for m in made):.0f}-"
          f"{max(m[0] for m in made):.0f} ms after the tab's click")
    return 0


if __name__ == "__main__":
    sys.exit(main())
