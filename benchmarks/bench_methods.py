"""The field's detectors and mitigations side by side on one world, same prompts and seeds (issue 31):

- detectors (Wen's norm, Ren's attention entropy, Asthana's anisotropy, Chen et al.'s localized score, Jeon et
  al.'s sharpness): ROC AUC by outcome (probes whose
  unmitigated seeds replicate at least half the time vs never), and seconds per batch of 8 seeds each,
  measured alone, with Wen's as the baseline (ratio);
- mitigations: replication, dataset similarity, alignment and seconds per image with and without each one,
  the unmitigated run on the same prompts and seeds as the baseline.

    python -m benchmarks.bench_methods [--world DIR] [--groups full_ddf20,unique] [--seeds 10]
        [--mitigations rna,ren,nemo,jain,sail,...] [--device cuda]

On a GPU with a Stable Diffusion world (``--world`` of ``memlab world create``) it gives the per-method
seconds per image of SD v1.4's architecture against ``none``.
"""
import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--groups", default="full_ddf20,unique", help="probe groups of the world's probes.csv")
    ap.add_argument("--per-group", type=int, default=8, help="probes per group")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--mitigations", default=None, help="comma-separated specs (default: memlab.evaluate's list)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    import pandas as pd

    from memlab.compare import comparison, format_comparison
    from memlab.evaluate import MITIGATIONS, _probe_runs, detector_seconds
    from memlab.generate import Settings
    from memlab.match import descriptor_for_index
    from memlab.world import World

    t0 = time.perf_counter()
    world = World.load(a.world)
    gen = world.generator(device=a.device)
    index = world.index()
    desc = descriptor_for_index(index)
    settings = Settings(steps=int(world.defaults["steps"]), guidance=float(world.defaults["guidance"]))
    probes = pd.read_csv(world.file("probes"))
    groups = a.groups.split(",")
    probes = pd.concat([probes[probes["group"] == g].head(a.per_group) for g in groups])
    mits = a.mitigations.split(",") if a.mitigations else list(MITIGATIONS)
    seeds = list(range(a.seeds))
    summaries: list = []
    _probe_runs(gen, index, desc, probes, seeds, ["none", *mits], settings, aligner=world.aligner(),
                summaries=summaries)
    c = comparison(summaries)
    secs = detector_seconds(gen, probes["prompt"].iloc[0], list(range(8)), settings)
    print(f"world {world.name}; {len(probes)} probes ({', '.join(groups)}) x {a.seeds} seeds; {settings.steps} "
          f"steps, guidance {settings.guidance}; device {gen.device}")
    al = world.aligner()
    print("alignment: " + (f"{al.info()['method']} ({al.info()['model']})" if al else "none in this world"))
    print(format_comparison(c))
    print("detector seconds per batch of 8 seeds (alone; ratio to wen): " + ", ".join(
        f"{m} {s:.4f} (x{s / secs['wen']:.2f})" for m, s in secs.items()))
    for (prompt, spec, steps), (blocked, info) in getattr(gen, "_nemo_cache", {}).items():
        print(f"nemo search {prompt[:48]!r}: memorized {info['memorized']}, {info['neurons']} neurons"
              + (f" (initial {info['initial_neurons']}), SSIM blocked vs unblocked {info['refined_ssim']:.3f} "
                 f"(selection threshold {info['selection_threshold']:.3f})" if info["neurons"] else ""))
    print(f"(measured in {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
