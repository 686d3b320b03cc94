"""The world card's group table (memlab.evaluate), on hand-made probe runs."""
import pandas as pd
import pytest

from memlab.evaluate import _group_table


def test_group_table_splits_replication_into_own_and_other_items():
    # two probes of one group, 4 seeds each: probe 7 copies itself twice and item 3 once; probe 9 copies
    # item 5 once and has item 9 (its own) at top-1 once without being replicated
    runs = pd.DataFrame([
        {"prompt": "a", "group": "partial_ddf20", "item": 7, "strategy": "none",
         "replicated": [True, True, True, False], "own_top1": [True, True, False, False],
         "top_items": [7, 7, 3, 4], "replication_rate": 0.75, "original_recall": 0.5, "detection": 1.0,
         "scores": [0.9, 0.9, 0.8, 0.1]},
        {"prompt": "b", "group": "partial_ddf20", "item": 9, "strategy": "none",
         "replicated": [False, True, False, False], "own_top1": [True, False, False, False],
         "top_items": [9, 5, 4, 4], "replication_rate": 0.25, "original_recall": 0.25, "detection": 1.0,
         "scores": [0.5, 0.85, 0.1, 0.1]},
    ])
    row = _group_table(runs, 0.7, {3: "unique", 5: "full_ddf20"})["partial_ddf20"]["none"]
    assert row["replication_rate"] == pytest.approx(0.5)
    assert row["replicated_own"] == pytest.approx(2 / 8) and row["replicated_other"] == pytest.approx(2 / 8)
    assert row["replicated_own"] + row["replicated_other"] == pytest.approx(row["replication_rate"])
    assert row["replicated_other_by_group"] == {"full_ddf20": 1, "unique": 1}
    assert row["original_recall"] == pytest.approx(0.375)


def test_the_built_in_world_card_splits_replication_and_prints_it():
    import json
    from pathlib import Path

    from memlab.evaluate import format_report

    m = json.loads((Path(__file__).resolve().parents[1] / "assets" / "world" / "card.json").read_text())["measured"]
    for g, r in m["groups"].items():
        assert r["replicated_own"] + r["replicated_other"] == pytest.approx(r["replication_rate"]), g
        assert sum(r["replicated_other_by_group"].values()) == round(r["replicated_other"] * r["probes"]
                                                                      * m["seeds_per_probe"]), g
    report = format_report(m)
    assert "= own" in report and "+ other" in report and "seeds by that item's group" in report
