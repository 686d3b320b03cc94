"""The lesson: four steps a teacher clicks through (five on a world with template copies), each a sentence
and its evidence."""
from __future__ import annotations

import gradio as gr

from ..service import LIMITS, Lab
from .glossary import g
from .views import (bright_ending_note, compare_grid, copies, lesson_run_sentence, literal, own_image_html, own_or_other,
                    template_sentence)
from .wiring import errors, scroll_first, stoppable


LESSON_SEEDS = list(range(8))


LESSON_MITIGATION = "rna:k=4"


def _captions_sentence(distinct: int, n: int) -> str:
    """What the captions on a duplicated image's copies say (Somepalli et al. 2023: full duplication, image and
    caption repeated, is memorized; partial, the same image under varied captions, far less)."""
    if n < 2:
        return ""
    if distinct == 1:
        return (" All carry one caption: *full duplication*, the image and its caption repeated, which a model "
                "memorizes far more than the same image under varied captions (Somepalli et al. 2023).")
    return (f" They carry {distinct} different captions: *partial duplication*, which a model memorizes far less than "
            f"an image repeated with one caption (Somepalli et al. 2023).")


def lesson_tab(lab: Lab) -> None:
    """A guided lesson for a class, four steps a teacher clicks through: a heavily duplicated prompt, its
    training image and that image's copies, the same prompt with a mitigation on the same seeds, and a
    prompt seen once for contrast; a fifth on a template copy where the world plants templates. Each step is a sentence and its evidence; words link to the glossary."""
    plan = lab.lesson_prompts()
    if plan is None:
        return
    seeds, n = LESSON_SEEDS, len(LESSON_SEEDS)
    with gr.Tab("Lesson", id="lesson"):
        count = "five" if plan.get("template") else "four"  # a fifth step where the world plants templates
        gr.Markdown(f"### Does a diffusion model copy its training images? A {count}-step demonstration\n"
                    f"Click the steps in order; {_duration(lab, n)}. All steps use the same "
                    f"{n} {g('seed', 'seeds')} ({seeds[0]}-{seeds[-1]}) and the world's default settings. "
                    f"Every word in bold is in the [glossary](#glossary) below.")
        steps = [
            ("1 · A heavily duplicated prompt", f"“{literal(plan['duplicated'])}” ({literal(plan['duplicated_group'])}). The model "
             f"draws it {n} times, from {n} seeds; each picture is shown beside its closest training image, framed "
             f"red when it is a copy ({g('replicated', 'replicated')})."),
            ("2 · The training image it copies", "The training image most seeds matched, and how often it occurs "
             f"in the training set ({g('copies', 'copies in training')}): models memorize what they saw many "
             f"times."),
            ("3 · The same prompt with a mitigation", f"The same prompt on the same {n} seeds, once as is and once "
             f"with random numbers inserted into the prompt (RNA, k=4; a {g('mitigation', 'mitigation')} from "
             f"Somepalli et al. 2023)."),
            ("4 · A prompt seen once, for contrast", f"“{literal(plan['unique'])}” ({literal(plan['unique_group'])}): a prompt whose "
             f"image occurs once in training, on the same {n} seeds."),
        ]
        if plan.get("template"):  # worlds with template copies (issue 32): a fifth step
            steps.append(("5 · A template copy", f"“{literal(plan['template'])}” ({literal(plan['template_group'])}): many training "
                          f"images share one layout and this caption, with other pictures inside. The model copies "
                          f"the layout, not one whole image: a {g('template', 'template copy')}. "
                          + bright_ending_note(lab.card())))
        outs = []
        for i, (title, sentence) in enumerate(steps, 1):
            with gr.Group():
                gr.Markdown(f"#### {title}\n{sentence}")
                btn = gr.Button(f"Show step {i}", variant="primary", elem_id=f"lesson-{i}")  # in a group, a
                # secondary button takes the group's grey and reads as a heading
                md = gr.Markdown(elem_id=f"lesson-{i}-text")
                if i == 2:  # the training image's copies
                    copies_gallery = gr.Gallery(visible=False, columns=10, height="auto", elem_id="lesson-copies",
                                                label="the training image and its near-duplicates in the training set")
                html_out = gr.HTML(elem_id=f"lesson-{i}-grid")
            outs.append((btn, md, html_out))
        runs = gr.State(None)  # step 1's run, reused by steps 2 and 3
        step1, step2, step3, step4, step5 = _steps(lab, plan, seeds)
        (b1, m1, h1), (b2, m2, h2), (b3, m3, h3), (b4, m4, h4) = outs[:4]
        if len(outs) > 4:
            b5, m5, h5 = outs[4]
            b5.click(stoppable(step5), None, [m5, h5], api_name=False, show_progress_on=[m5], js=scroll_first("#lesson-5"))
        # each step brings its text, its progress and its pictures into view as it starts
        b1.click(stoppable(step1), None, [runs, m1, h1], api_name=False, show_progress_on=[m1], js=scroll_first("#lesson-1"))
        b2.click(stoppable(step2), [runs], [runs, m2, h2, copies_gallery], api_name=False, show_progress_on=[m2],
                 js=scroll_first("#lesson-2"))
        b3.click(stoppable(step3), [runs], [m3, h3], api_name=False, show_progress_on=[m3], js=scroll_first("#lesson-3"))
        b4.click(stoppable(step4), None, [m4, h4], api_name=False, show_progress_on=[m4], js=scroll_first("#lesson-4"))


def _one_row(lab: Lab, prompt: str, seeds, progress, stop=None):
    """The prompt on the lesson's seeds, no mitigation (one row of the A/B grid); None if ``stop`` ended it."""
    state = None
    for state in lab.stream_compare(prompt, seeds, [], progress=lambda d, t: progress((d, t), desc="seeds"),
                                    stop=stop, keep=True):
        pass
    return state


def _duration(lab: Lab, n: int) -> str:
    """How long a step takes here, as the page says it before any is run."""
    est = lab.estimate_seconds(n, int(lab.defaults["steps"]))
    return (("each runs the model on the seeds below" if est is None else
             f"a step runs {n} images, about {est:.0f} s on this machine (step 3 twice that, unless step 1 was "
             f"shown)") + "; a step shown once on this server is shown again at once, since the same seeds and "
            "settings give the same images (run the steps once before a class)")


def _running(lab: Lab, images: int) -> str:
    """The honest estimate a step shows while it runs (measured on this server, or at the world's build)."""
    steps = int(lab.defaults["steps"])
    est = lab.estimate_seconds(images, steps)
    return (f"⏳ running {images} images × {steps} steps" + (f": about {est:.0f} s on this machine" if est else "")
            + " …")


def _steps(lab: Lab, plan: dict, seeds: list[int]):
    """The four steps' handlers: each shows an estimate while it runs, then its evidence and a sentence made
    from what its records show (whose image each seed copies, and the copies the verdict misses). Each takes
    ``stop`` (``wiring.stoppable``: a closed page ends its run)."""
    own = {k: lab.probe_row(plan[k]) for k in ("duplicated", "unique")}
    group_of = lab.item_group

    def said(state, which: str) -> str:
        row = own[which]
        split = own_or_other(state.records, None if row is None else group_of(row), group_of)
        return lesson_run_sentence(split, None if row is None else lab.item(row)["id"])

    def evidence(state, which: str, n_rows: int) -> str:
        return (own_image_html(lab, own[which], "the prompt's own training image") +
                compare_grid(lab, state, seeds, n_rows))

    @errors
    def step1(progress=gr.Progress(), stop=None):
        yield None, _running(lab, len(seeds)), ""
        if (state := _one_row(lab, plan["duplicated"], seeds, progress, stop)) is None:
            return
        s0 = state.summaries[0]
        yield state, said(state, "duplicated") + " " + verdict_source(s0), evidence(state, "duplicated", 1)

    @errors
    def step2(state, progress=gr.Progress(), stop=None):
        if state is None:
            yield None, _running(lab, len(seeds)), "", gr.update()
            if (state := _one_row(lab, plan["duplicated"], seeds, progress, stop)) is None:
                return
        tops = [r["matches"][0] for r in state.records]
        best = max({m["row"]: m for m in tops}.values(), key=lambda m: sum(t["row"] == m["row"] for t in tops))
        hits = sum(t["row"] == best["row"] for t in tops)
        group = lab.item_group(best["row"])
        members = lab.group_members(group)
        files = [(f, f"#{i}") for r, i in zip(members["row"], members["id"]) if (f := lab.item_file(int(r)))]
        text = (f"Training image **#{literal(best['id'])}** is the top-1 match of {hits} of {len(tops)} seeds. It has "
                f"**{copies(best['duplicates'])}** ({g('copies', 'copies in training')}): the "
                f"{len(files)} images below, found by the {g('descriptor', 'descriptor')}'s duplicate cut."
                + _captions_sentence(members["caption"].nunique(), len(members)))
        yield state, text, "", gr.update(value=files[:48], visible=True)

    @errors
    def step3(first=None, progress=gr.Progress(), stop=None):
        # step 1's run (when it was shown) is this step's first row: the same prompt, seeds and settings
        done = ({"none": list(zip(first.records, first.images))} if first is not None
                and first.prompt == plan["duplicated"] and [r["seed"] for r in first.records] == list(seeds) else None)
        yield _running(lab, len(seeds) if done else 2 * len(seeds)), ""
        for state in lab.stream_compare(plan["duplicated"], seeds, [LESSON_MITIGATION], done=done, keep=True,
                                        progress=lambda d, t: progress((d, t), desc="images"), stop=stop):
            text = _running(lab, len(seeds))
            if len(state.summaries) == 2:
                text = mitigation_sentence(state, *[own_or_other(
                    [r for r in state.records if r["mitigation"]["spec"] == s["mitigation"]["spec"]],
                    None if own["duplicated"] is None else group_of(own["duplicated"]), group_of)
                    for s in state.summaries], lab.item(own["duplicated"])["id"] if own["duplicated"] is not None
                    else None)
            yield text, own_image_html(lab, own["duplicated"], "the prompt's own training image") + \
                compare_grid(lab, state, seeds, 2)

    @errors
    def step4(progress=gr.Progress(), stop=None):
        yield _running(lab, len(seeds)), ""
        if (state := _one_row(lab, plan["unique"], seeds, progress, stop)) is None:
            return
        s0 = state.summaries[0]
        yield said(state, "unique") + " " + verdict_source(s0), evidence(state, "unique", 1)

    @errors
    def step5(progress=gr.Progress(), stop=None):
        yield _running(lab, len(seeds)), ""
        if (state := _one_row(lab, plan["template"], seeds, progress, stop)) is None:
            return
        tmpl = lab.probe_template(plan["template"])
        text = template_sentence(state.records, lambda row: tmpl if lab.item_template(row) == tmpl else None)
        yield text + " " + verdict_source(state.summaries[0]), compare_grid(lab, state, seeds, 1, masks=True)

    return step1, step2, step3, step4, step5


def verdict_source(summ) -> str:
    """The verdict's descriptor and threshold, linked to the glossary."""
    return f"({summ['descriptor']['name']} > {summ['threshold']:.3f}, {g('threshold', 'threshold')})"


def mitigation_sentence(state, base: dict, mitigated: dict, own_id) -> str:
    """Step 3: the replication with and without RNA on the same seeds, with whose image each row copies, so
    that a mitigation which only changes what is copied does not read as one that stops copying."""
    a, b = state.summaries
    text = (f"Replication {a['replication_rate']:.1%} without mitigation, **{b['replication_rate']:.1%} with RNA** "
            f"on the same seeds ({g('replicated', 'replication %')}); {g('dataset-similarity', 'dataset similarity')} "
            f"{a['dataset_similarity']['p95']:.3f} → {b['dataset_similarity']['p95']:.3f}. ")
    if pc := (b.get("change_vs_none") or {}).get("paired"):
        text += (f"Seed by seed: {pc['fewer']} seed{'' if pc['fewer'] == 1 else 's'} stopped copying with RNA, "
                 f"{pc['more']} started; a mitigation that "
                 f"changed nothing would split them this unevenly with probability {pc['p_value']:.3g} "
                 f"({g('interval', 'p')}, the exact McNemar test): "
                 + ("that is evidence of a change on these seeds. " if pc["p_value"] < 0.05 else
                    f"not yet evidence on these few seeds; more seeds would tell (Compare mitigations runs up to "
                    f"{LIMITS['compare_seeds']}). "))
    text += "Without: " + lesson_run_sentence(base, own_id) + " With RNA: " + lesson_run_sentence(mitigated, own_id)
    if mitigated["replicated_other"]:
        text += (" Some RNA seeds copy another training image: the mitigation changed what is copied, not "
                 "whether.")
    return text
