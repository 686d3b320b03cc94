"""The built-in world's memorization figures (the world card's "measured" block), measured again:
per probe group the multi-seed replication rate with the calibrated verdict, every mitigation on the
full-duplication probes at the higher ddf, Wen et al.'s detection ROC AUC, the hidden-object share for
the planted keyword, and the time to generate and match 8 seeds.

    python -m benchmarks.bench_world [--world DIR] [--seeds 10] [--write-card]
"""
import argparse
import json
import time



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--write-card", action="store_true", help="store the figures in the world's card.json")
    a = ap.parse_args()
    from memlab.cardreport import format_report
    from memlab.evaluate import evaluate_world
    from memlab.world import World

    t0 = time.perf_counter()
    world = World.load(a.world)
    m = evaluate_world(world, n_seeds=a.seeds)
    print(format_report(m))
    print(f"(measured in {time.perf_counter() - t0:.0f}s)")
    card = world.file("card")
    if card:
        c = json.loads(card.read_text())
        print(f"world build time recorded in its card: {c.get('build_seconds_total', 0) / 60:.1f} min "
              f"({', '.join(f'{k} {v / 60:.1f}' for k, v in c.get('build_seconds', {}).items() if v is not None)})")
        if a.write_card:
            c["measured"] = m
            card.write_text(json.dumps(c, indent=2))
            print(f"wrote the figures into {card}")


if __name__ == "__main__":
    main()
