"""The app as a ZeroGPU Space serves it. There CUDA may start only inside a GPU call (``@spaces.GPU``; outside
one ZeroGPU raises "CUDA must not be initialized in the main process"), so every model the app runs goes
through one (``memlab.gpu``). The stand-in ``spaces`` (tests/stand_in) enforces that rule on a machine without a
GPU: with $SPACES_GUARD, a model that runs outside a call raises ZeroGPU's error. Before, Generate (at its last
update, the generations' clique), Compare, the token attribution, Match an image and the lesson ran models in the
serving process."""
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT

STAND_IN = Path(__file__).parent / "stand_in"
BUILTIN = ROOT / "assets" / "world"


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> tuple[dict, Path]:
    """The environment of one app served as a ZeroGPU Space (both tests share it: ``shared_app``), its log."""
    log = tmp_path_factory.mktemp("zerogpu") / "spaces.jsonl"
    return {"PYTHONPATH": str(STAND_IN), "SPACES_GUARD": "1", "SPACES_LOG": str(log)}, log


def logged(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_every_endpoint_runs_its_models_inside_gpu_calls(space):
    import gradio_client
    from gradio_client import handle_file

    from tests.browser import shared_app

    from memlab.world import World

    env, log = space
    before = len(logged(log))
    training_image = World.load(BUILTIN).index().image_path(0)
    prompt = "a red cross, a blue circle and a green diamond on a grey background"
    c = gradio_client.Client(shared_app(BUILTIN, env=env)[0], verbose=False)
    out = c.predict(prompt, 2, "", [], 4, 0.1, 3, 5.0, api_name="/generate")
    assert "of 2 seeds" in out[0] and "text similarity" in json.dumps(out[3])  # and the closest captions
    head = c.predict(prompt, 2, ["rna"], 4, 0.1, api_name="/compare")[0]
    assert head.startswith("### 2 of 2 strategies on the same 2 seeds")
    bars = c.predict(prompt, 2, "", 3, 5.0, api_name="/attribution")
    assert bars is not None
    md = c.predict(handle_file(str(training_image)), 3, None, api_name="/match_image")[0]
    assert "replicated" in md
    c.predict("cross", api_name="/search_captions")
    c.predict("lighthouse", "", api_name="/keyword_clusters")
    calls = logged(log)[before:]
    assert {x["fn"] for x in calls} == {"generate_chunk", "lab_call"}
    assert all(x["took"] <= x["duration"] for x in calls)


@pytest.mark.browser
def test_the_lesson_runs_its_models_inside_gpu_calls(space):
    pytest.importorskip("playwright")
    from tests.browser import app_page, chromium_path, open_tab, wait_text

    if not chromium_path():
        pytest.skip("chromium is not installed")
    env, log = space
    before = len(logged(log))
    done = {1: "seeds replicated", 2: "copies in training", 3: "with RNA", 4: "seeds replicated",
            5: "picture of this template"}

    def show(page, steps):
        texts = []
        for i in steps:
            page.locator(f"#lesson-{i}").click()
            wait_text(page, f"#lesson-{i}-text", done[i])  # the sentence in, its progress bar gone
            texts.append(page.locator(f"#lesson-{i}-text").inner_text())
            assert done[i] in texts[-1], page.locator(".toast-body").all_inner_texts() or texts[-1]
        return texts

    with app_page(BUILTIN, env=env) as page:
        open_tab(page, "Lesson")
        first = show(page, (1, 2, 3, 4, 5))
    fns = [x["fn"] for x in logged(log)[before:]]
    assert fns.count("generate_chunk") == 4  # steps 1, 3 (RNA; its first row is step 1's), 4, 5: a call a row
    with app_page(BUILTIN, env=env) as page:  # the next visitor: the rows kept, no GPU call, the same sentences
        open_tab(page, "Lesson")
        assert show(page, (1, 3)) == [first[0], first[2]]
    assert len(logged(log)) == before + len(fns)
