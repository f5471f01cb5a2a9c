"""Significance tests of held-out scores: level on autocorrelated null data, power and
FDR on planted signal, and cost beside the fit they test.

1. **Level.** Null responses (no stimulus in them) with the autocorrelation of story
   fMRI, fitted by the real pipeline (the corpus stories' word timings, word features
   Lanczos-resampled and delayed, story-wise ridge CV) on the other stories; the
   fraction of targets at p < 0.05 / 0.01, for the default test and, side by side, the
   block permutation test it replaced (10-TR blocks, 1,000 orders). Noise: AR(1) with
   coefficient 0.9 and 0.97, and a "BOLD-like" spectrum (a slow AR(1) 0.995 drift under
   AR(1) 0.9). Held-out sets: four corpus stories (about 300 TRs), each story its own
   unit of the randomisation.
2. **Power.** The simulated fsaverage5 data set (planted regions, the demo's SNR):
   the fraction of planted targets with true r >= 0.3 that are FDR-significant at
   q = 0.05, and the false discovery proportion.
3. **Cost.** The default test's time beside the fit's at the demo's size and at
   3,000 TRs x 1,000 features x 5,000 targets.

    .venv/bin/python benchmarks/bench_stats.py [--targets 4000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import signal


def _noise(rng, n, t, kind):
    def ar1(phi):
        e = rng.standard_normal((n + 500, t))
        return signal.lfilter([1.0], [1.0, -phi], e, axis=0)[500:]

    if kind == "bold":  # a slow drift (AR(1) 0.995) under AR(1) 0.9: a BOLD-like spectrum, lag-1 about 0.95
        return ar1(0.995) / np.sqrt(1 / (1 - 0.995 ** 2)) + ar1(0.9) / np.sqrt(1 / (1 - 0.81))
    return ar1(float(kind))


def _lag1(x):
    x = x - x.mean(0)
    return float(np.mean((x[1:] * x[:-1]).sum(0) / (x * x).sum(0)))


def level(n_targets: int, kinds=("0.9", "0.97", "bold"), seed: int = 0) -> dict:
    """Fraction of null targets under p < 0.05 / 0.01, two held-out sets of four stories."""
    from brainalign.datasets import load
    from brainalign.encoding.ridge import fit_ridge_cv
    from brainalign.encoding.significance import sign_randomisation_test
    from brainalign.encoding.stats import permutation_test
    from brainalign.features import design

    ds = load("simulated", space=200, n_subjects=1, features="random:16", seed=seed)
    stories = [ds.stories[s] for s in sorted(ds.stories)]
    rng = np.random.default_rng(seed)
    emb = {s.name: rng.standard_normal((s.n_words, 16)).astype(np.float32) for s in stories}
    X = {s.name: design(lambda name: emb[name], [s]) for s in stories}
    out = {}
    for kind in kinds:
        Y = {s.name: _noise(rng, s.n_trs, n_targets, kind).astype(np.float32) for s in stories}
        Y = {k: (v - v.mean(0)) / v.std(0) for k, v in Y.items()}
        rows = []
        # held-out sets of 4 corpus stories (about 300 TRs, like ds003020's test story)
        for k in range(0, 8, 4):
            test = stories[k:k + 4]
            train = [s for s in stories if s not in test]
            res = fit_ridge_cv(np.concatenate([X[s.name] for s in train]), np.concatenate([Y[s.name] for s in train]),
                               [s.n_trs for s in train], n_folds=5, X_test=np.concatenate([X[s.name] for s in test]),
                               Y_test=np.concatenate([Y[s.name] for s in test]), progress=False)
            yt = np.concatenate([Y[s.name] for s in test])
            new = sign_randomisation_test(yt, res.predictions, [s.n_trs for s in test])
            old = permutation_test(yt, res.predictions, n_permutations=1000, block_size=10)
            rows.append({"stories": [s.name for s in test], "trs": len(yt), "lag1_y": _lag1(yt),
                         "lag1_pred": _lag1(res.predictions),
                         "new_05": float(np.mean(new < 0.05)), "new_01": float(np.mean(new < 0.01)),
                         "block10_05": float(np.mean(old < 0.05)), "block10_01": float(np.mean(old < 0.01))})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "stories"}
        out[kind] = {"per_story": rows, "mean": mean}
        print(f"noise {kind}: lag-1 y {mean['lag1_y']:.3f}, predictions {mean['lag1_pred']:.3f}; "
              f"p<.05 {mean['new_05']:.4f} (block-10 permutation {mean['block10_05']:.4f}), "
              f"p<.01 {mean['new_01']:.4f} ({mean['block10_01']:.4f})", flush=True)
    return out


def power(quick: bool = False, seed: int = 0) -> dict:
    """Planted targets with true r >= 0.3 found at FDR q = 0.05, and the FDP (fsaverage5)."""
    from brainalign.datasets import load
    from brainalign.encoding import fit
    from brainalign.encoding.stats import fdr
    from brainalign.features import WordFeatures

    ds = load("simulated", space="fsaverage5", n_subjects=1, features="random:16", snr=4.0, seed=seed)
    truth = ds.ground_truth
    rng = np.random.default_rng([1, seed])
    # the features that drove the simulation are the model's: a perfect layer and a noisy one
    from brainalign.datasets.simulated import _feature_source

    src = _feature_source("random:16")
    feats = {}
    for name, st in ds.stories.items():
        f = np.asarray(src(st), dtype=np.float32)
        feats[(name, 0)] = f
        feats[(name, 1)] = (f + rng.standard_normal(f.shape).astype(np.float32)) / np.sqrt(2)
    wf = WordFeatures("sim/model", None, [0, 1], 1, feats, list(ds.stories))
    t0 = time.perf_counter()
    res = fit(wf, ds, layers=[0, 1], stats=True, progress=False)
    seconds = time.perf_counter() - t0
    out = {"fit_with_stats_s": seconds}
    subj = ds.subjects[0]
    true_r = truth.ceiling[subj]
    for layer in (0, 1):
        pv = res["pvalue"].sel(layer=layer, subject=subj).values
        sig = fdr(pv, 0.05)[0]
        strong = truth.responsive[subj] & (true_r >= 0.3)
        found = float(sig[strong].mean())
        fdp = float((sig & ~truth.responsive[subj]).sum() / max(sig.sum(), 1))
        null = pv[~truth.responsive[subj]]
        out[f"layer{layer}_null"] = {f"p<{a}": float(np.mean(null < a)) for a in (0.05, 0.01, 0.001)}
        out[f"layer{layer}"] = {"planted_r_ge_0.3": int(strong.sum()), "found": found, "fdp": fdp,
                                "median_score_planted": float(np.nanmedian(res["score"].sel(layer=layer, subject=subj).values[strong]))}
        print(f"power, seed {seed}, layer {layer}: {found:.3f} of {int(strong.sum())} planted targets with true r >= 0.3 "
              f"FDR-significant; FDP {fdp:.4f}", flush=True)
    return out


def cost(n: int, p: int, t: int, test_trs: int) -> dict:
    """The default test's time beside the fit (same data), side by side."""
    from brainalign.encoding.ridge import fit_ridge_cv
    from brainalign.encoding.significance import sign_randomisation_test

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, t)).astype(np.float32) / np.sqrt(p)
    Y = (X @ W * 0.3 + rng.standard_normal((n, t))).astype(np.float32)
    Xt = rng.standard_normal((test_trs, p)).astype(np.float32)
    Yt = (Xt @ W * 0.3 + rng.standard_normal((test_trs, t))).astype(np.float32)
    lengths = [n // 10] * 9 + [n - 9 * (n // 10)]
    fit_ridge_cv(X[:200], Y[:200, :50], [100, 100], n_folds=2, progress=False)  # warm-up
    t0 = time.perf_counter()
    res = fit_ridge_cv(X, Y, lengths, n_folds=5, X_test=Xt, Y_test=Yt, progress=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sign_randomisation_test(Yt, res.predictions)
    stats_s = time.perf_counter() - t0
    print(f"cost at {n} x {p} x {t} ({test_trs} test TRs): fit {fit_s:.2f} s, test {stats_s:.2f} s, "
          f"fit with the test = {(fit_s + stats_s) / fit_s:.3f}x the fit", flush=True)
    return {"shape": [n, p, t, test_trs], "fit_s": fit_s, "test_s": stats_s, "ratio": (fit_s + stats_s) / fit_s}


def roi_level(seeds: int = 60, ars=(0.5, 0.9)) -> dict:
    """Level of the ROI sign test through the real fit: simulated data without signal
    (mesh-free, 2,000 targets smoothed along the index so neighbours share noise), random
    word features, 20 ROIs of 100 neighbouring targets, two held-out stories; per subject
    and for the mean of two subjects."""
    import logging

    from brainalign import datasets, encoding
    from brainalign.encoding.significance import sign_pvalues
    from brainalign.features import WordFeatures

    logging.disable(logging.WARNING)
    out = {}
    for ar in ars:
        one, two = [], []
        for seed in range(seeds):
            sim = datasets.load("simulated", space=2000, stories=None, n_subjects=2, n_rois=0, features="random:16",
                                ar=ar, smoothing=8, test_story=["thelighthousekeeper", "thewatchmaker"], seed=seed)
            rng = np.random.default_rng(seed + 100)
            feats = {(s, 0): rng.standard_normal((sim.stories[s].n_words, 32)).astype(np.float32) for s in sim.stories}
            wf = WordFeatures("null", "s", [0], 1, feats, list(sim.stories), training={"step": 0, "tokens": 0})
            res = encoding.fit(wf, sim, layers=[0], backend="numpy", progress=False, rois=1 + np.arange(2000) // 100,
                               n_boot=10)
            t = res.roi_null.values[0]  # subject, roi, term
            one += [sign_pvalues(t[0].T), sign_pvalues(t[1].T)]
            two.append(sign_pvalues(np.concatenate([t[0], t[1]], axis=1).T))
        one, two = np.concatenate(one), np.concatenate(two)
        out[f"ar{ar}"] = {"one_subject": [one.size, float(np.mean(one < 0.05)), float(np.mean(one < 0.01))],
                          "two_subjects": [two.size, float(np.mean(two < 0.05)), float(np.mean(two < 0.01))]}
        print(f"ROI test, AR(1) {ar}: one subject, {one.size} null ROIs: p < 0.05 {np.mean(one < 0.05):.3f}, "
              f"p < 0.01 {np.mean(one < 0.01):.3f}; mean of two subjects, {two.size}: {np.mean(two < 0.05):.3f}, "
              f"{np.mean(two < 0.01):.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=4000, help="null targets per noise kind")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="level,power,cost")
    ap.add_argument("--power-seeds", type=int, default=5, help="simulations in the power part")
    args = ap.parse_args()
    out = {}
    parts = args.parts.split(",")
    if "level" in parts:
        out["level"] = level(args.targets)
    if "power" in parts:
        runs = [power(args.quick, seed) for seed in range(args.power_seeds)]
        out["power"] = runs
        for layer in ("layer0", "layer1"):
            print(f"power over {len(runs)} seeds, {layer}: found {np.mean([r[layer]['found'] for r in runs]):.3f}, "
                  f"mean FDP {np.mean([r[layer]['fdp'] for r in runs]):.4f} "
                  f"(max {np.max([r[layer]['fdp'] for r in runs]):.4f})", flush=True)
    if "roi_level" in parts:
        out["roi_level"] = roi_level(10 if args.quick else 60)
    if "cost" in parts:
        out["cost"] = [cost(687, 256, 20484, 291)] + ([] if args.quick else [cost(3000, 1000, 5000, 300)])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
