"""What a paper-sized sweep costs: Pythia-6.9B, 154 revisions x 32 layers x 8 LeBel subjects.

The size comes from the model's published shape and the LeBel 2023 files
(`../shared/reference`: 84 stories, 28,088 trimmed TRs for UTS01-03; 26-27 stories for
UTS04-08; ~81k-109k voxels per subject); the rates from `brainalign.sweep.cost.GPUS`
(data-sheet peaks and the stated efficiencies). Prints the split into download,
features and ridge, and the scenarios that bring it under 24 GPU-hours.

    python benchmarks/paper_scale.py [--gpu h100] [--bandwidth 1000]
"""

from __future__ import annotations

import argparse
import dataclasses

from brainalign.sweep.cost import SweepSize, estimate, gpu_rates

#: LeBel 2023: UTS01-03 heard the same 84 stories (one design for the three), UTS04-08
#: the same 26-27 (another); wheretheressmoke (~291 TRs) is held out; ~95k voxels each
LEBEL_GROUPS = [
    {"n_train": 27_800, "n_test": 291, "targets": 3 * 95_000, "subjects": 3},
    {"n_train": 8_900, "n_test": 291, "targets": 5 * 90_000, "subjects": 5},
]
#: ~15.6 h of speech at ~2.4 words/s; Pythia's BPE gives ~1.3 tokens per word, and
#: strided windows with half left context read each token twice
WORDS = 135_000
TOKENS_PROCESSED = int(WORDS * 1.3 * 2)

PYTHIA_6_9B = SweepSize(
    checkpoints=154, layers=32, subjects=8, hidden=4096, params=6.86e9, model_layers=32, words=WORDS,
    tokens_processed=TOKENS_PROCESSED, context_tokens=512, weight_bytes=13.8e9, feature_value_bytes=4, delays=4,
    n_folds=5, n_alphas=13, groups=LEBEL_GROUPS, stats="sign", download=True,
)


def scenarios(base: SweepSize) -> dict[str, SweepSize]:
    """The paper-scale sweep and cheaper variants of it."""
    r = dataclasses.replace
    return {
        "as specified (32 layers, 4096 features x 4 delays)": base,
        "8 layers by relative depth": r(base, layers=8),
        "features reduced to 1024 before the delays (not in brainalign yet)": r(base, fit_dims=1024),
        "8 layers + 1024 features + cache in 16-bit": r(base, layers=8, fit_dims=1024, feature_value_bytes=2),
        "8 layers + 1024 features + 16-bit cache + 40 of 154 checkpoints": r(base, layers=8, fit_dims=1024,
                                                                             feature_value_bytes=2, checkpoints=40),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--bandwidth", type=float, default=1000.0, help="download MB/s")
    args = ap.parse_args()
    rates = gpu_rates(args.gpu, bandwidth=args.bandwidth * 1e6)
    print(f"rates: {rates.where}; {rates.notes[0]}; download {args.bandwidth:g} MB/s")
    print("| scenario | download | features | ridge | total | GPU-hours | feature cache |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, size in scenarios(PYTHIA_6_9B).items():
        est = estimate(size, rates)
        s = {k: v / 3600 for k, v in est["seconds"].items()}
        print(f"| {name} | {s['download']:.2f} h | {s['features']:.2f} h | {s['ridge']:.1f} h | {s['total']:.1f} h | "
              f"{s['total'] - s['download']:.1f} | {est['feature_cache_bytes'] / 1e9:.0f} GB |")


if __name__ == "__main__":
    main()
