"""A pipeline in Stable Diffusion 2's shape (v-prediction, linear projections, a tokenizer padding with "!"), as
DCR's mitigation paper (Somepalli et al. 2023b) and Chen et al. study SD 2: memlab loads it as it loads SD v1,
runs every mitigation on it and reads the prompt's end token where SD 2 puts it."""
from __future__ import annotations

import json
import math

PROMPT = "a red ball on a table"


def test_a_stable_diffusion_2_shaped_pipeline_runs_every_mitigation_and_reads_its_end_token(tmp_path, tiny_world):
    from memlab.attention import prompt_lengths
    from memlab.cli import main
    from memlab.generate import Generator
    from memlab.pipelines import make_pipeline

    make_pipeline("tiny-v2").save_pretrained(tmp_path / "pipe")
    gen = Generator.from_pretrained(tmp_path / "pipe", device="cpu")
    tok = gen.tokenizer
    assert gen.pipe.scheduler.config.prediction_type == "v_prediction" and tok.pad_token == "!"
    # the end token is the one after the prompt (Chen et al.'s bright ending, Ren et al.'s mask), not the first
    # padding position: under SD 2's padding the two differ, under SD v1's both hold the end token's id
    n = prompt_lengths(tok, [PROMPT])[0]
    ids = tok(PROMPT, padding="max_length", max_length=77).input_ids
    assert ids[n - 1] == tok.eos_token_id and ids[n] == tok.pad_token_id != tok.eos_token_id

    strategies = ["none", "rna:k=2", "rt", "cwr", "gni", "wen:target_ratio=0.5", "ren", "jain", "jain:mode=dynamic"]
    out = tmp_path / "r.jsonl"
    args = ["run", "--model", str(tmp_path / "pipe"), "--index", str(tiny_world / "index"), "--prompt", PROMPT,
            "--seeds", "0-1", "--steps", "3", "--attribution", "--out", str(out)]
    assert main(args + [x for s in strategies for x in ("--mitigation", s)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    seeds = [r for r in recs if r["type"] == "seed"]
    assert len(seeds) == 2 * len(strategies) and {r["mitigation"]["name"] for r in seeds} == \
        {"none", "rna", "rt", "cwr", "gni", "wen", "ren", "jain"}
    for r in seeds:
        assert r["matches"] and math.isfinite(r["detection"]) and r["detection"] > 0
        assert all(math.isfinite(v) for v in r["detections"].values() if v is not None)
        be = r["bright_ending"]  # the end token's map, brightest position 1
        assert be and max(max(row) for row in be) == 1.0
    none = [r for r in seeds if r["mitigation"]["name"] == "none"]
    rna = [r for r in seeds if r["mitigation"]["name"] == "rna"]
    assert [r["effective_prompt"] for r in none] == [PROMPT] * 2 and all(r["effective_prompt"] != PROMPT for r in rna)
    summary = next(r for r in recs if r["type"] == "summary" and r["mitigation"]["name"] == "none")
    # Wen et al.'s attribution over the prompt's tokens, its start and end included, none of the padding
    assert [t["id"] for t in summary["token_attribution"]["tokens"]] == ids[:n]
