"""Mitigations change exactly what they should (definitions: DCR code, docs/methods.md)."""
import pytest

from memlab.errors import MemlabError
from memlab.mitigations import MITIGATIONS, create_mitigation, parse_strategy

PROMPT = "a painting of sunflowers in a blue vase"


def test_rna_inserts_k_numbers_at_word_boundaries():
    s = parse_strategy("rna:k=3,seed=7")
    out = s.effective_prompt(PROMPT, gen_seed=11)
    words = out.split(" ")
    nums = [w for w in words if w.isdigit()]
    assert len(nums) == 3 and all(0 <= int(n) <= 99999 for n in nums)
    assert [w for w in words if not w.isdigit()] == PROMPT.split(" ")  # original words, original order
    assert s.effective_prompt(PROMPT, 11) == out                          # same seeds, same prompt
    assert s.effective_prompt(PROMPT, 12) != out                          # another generation seed
    assert parse_strategy("rna:k=3,seed=8").effective_prompt(PROMPT, 11) != out


def test_rna_boundaries_include_start_and_end():
    s = parse_strategy("rna:k=1")
    positions = set()
    for g in range(300):
        words = s.effective_prompt("a b", g).split(" ")
        positions.add(next(i for i, w in enumerate(words) if w.isdigit()))
    assert positions == {0, 1, 2}


def test_cwr_repeats_words_of_the_prompt():
    out = parse_strategy("cwr:k=4").effective_prompt(PROMPT, 0).split(" ")
    assert len(out) == len(PROMPT.split(" ")) + 4 and set(out) <= set(PROMPT.split(" "))


def test_rt_inserts_k_clip_tokens():
    out = parse_strategy("rt:k=2,seed=1").effective_prompt(PROMPT, 3)
    extra = out.split(" ")
    assert len(extra) >= len(PROMPT.split(" ")) + 2 and out != PROMPT
    assert parse_strategy("rt:k=2,seed=1").effective_prompt(PROMPT, 3) == out


def test_gni_noise_on_embeddings():
    import torch

    c, u = torch.zeros(1, 77, 8), torch.zeros(1, 77, 8)
    c0, u0 = parse_strategy("gni:lam=0").apply_embeddings(c, u, 0)
    assert torch.equal(c0, c) and torch.equal(u0, u)
    cb, ub = parse_strategy("gni:lam=0.1").apply_embeddings(c, u, 0)
    assert 0.05 < float(cb.std()) < 0.15 and not torch.equal(ub, u)  # DCR: both halves
    cc, uc = parse_strategy("gni:lam=0.1,halves=cond").apply_embeddings(c, u, 0)
    assert torch.equal(uc, u) and torch.equal(cc, cb)
    c2, _ = parse_strategy("gni:lam=0.1").apply_embeddings(c, u, 0)
    assert torch.equal(c2, cb)  # seeded


def test_strategy_composition_and_records():
    s = parse_strategy("rna:k=2,seed=3+gni:lam=0.2")
    assert s.name == "rna+gni" and not s.is_baseline
    d = s.to_dict()
    assert d["steps"][0] == {"name": "rna", "params": {"k": 2, "seed": 3}}
    assert d["steps"][1]["params"]["lam"] == 0.2
    assert parse_strategy(d["spec"]).to_dict() == d  # the record reproduces the strategy
    assert parse_strategy("none").is_baseline


@pytest.mark.parametrize("spec, msg", [
    ("bogus", "unknown mitigation"), ("rna:q=1", "unknown parameter"), ("rna:k=-1", "out of range"),
    ("rna:k=x", "is not an integer"), ("gni:lam=x", "is not a number"), ("gni:halves=some", "must be one of"),
    ("gni:lam=100", "out of range"), ("gni:lam=nan", "not a finite number"), ("jain:before=nan", "not a finite"),
    ("wen:lr=nan", "not a finite number"),
    ("", "empty"), ("rna:k", "key=value"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(MemlabError, match=msg):
        parse_strategy(spec)


def test_registry_names():
    assert set(MITIGATIONS) == {"none", "rna", "rt", "cwr", "gni", "wen", "ren", "nemo", "jain", "sail"}
    assert create_mitigation("rna").params["k"] == 4  # DCR's mitigation script


def test_unambiguous_parameter_spellings_are_accepted():
    from memlab.mitigations import parse_strategy

    assert parse_strategy("gni:lambda=0.2").mitigations[0].params["lam"] == 0.2
    assert parse_strategy("gni:lam=0.2").spec() == parse_strategy("gni:lambda=0.2").spec()
