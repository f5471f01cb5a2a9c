"""Cost of the default statistics beside the fit they test (issue 13's cost goal: at most 1.5x).

"Default statistics" are what every sweep computes: per-target p-values (spectral sign
randomisation, :mod:`brainalign.encoding.significance`) with BH-FDR, and for the ROIs the
block bootstrap (200 replicates, ``roi_boot``) and the ROI sign test's terms (``roi_null``).
Two sizes, each timed side by side (interleaved runs, median of ``--repeats``):

1. ``fit``: :func:`brainalign.encoding.fit` at the demo's size: the simulated fsaverage5
   data set (20,484 targets, 1 subject, the demo's two held-out stories, 150 TRs) with
   3 layers of 64-dim word features (the demo's model is 64 wide) and 4 delays, the
   language atlas for ROIs; with ``stats=False, rois=None`` against ``stats=True,
   rois="language"``.
2. ``arrays``: :func:`brainalign.encoding.ridge.fit_ridge_cv` on 3,000 TRs x 1,000
   features x 5,000 targets (300 test TRs), then the same statistics over 20 ROIs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stats_cost.py [--repeats 3] [--which fit,arrays]

Times are process CPU seconds (``time.process_time``: robust to other jobs on the machine;
with one BLAS thread they equal the wall time of an idle machine).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DEMO_TESTS = ["thelighthousekeeper", "thewatchmaker"]


def _fit_case():
    from brainalign import datasets
    from brainalign.features import WordFeatures

    ds = datasets.load("simulated", space="fsaverage5", stories=None, n_subjects=1, features="random:16", snr=4.0,
                       test_story=DEMO_TESTS)
    rng = np.random.default_rng(0)
    feats = {(s, layer): rng.standard_normal((ds.stories[s].n_words, 64)).astype(np.float32)
             for s in ds.stories for layer in range(3)}
    wf = WordFeatures("bench", "step0", [0, 1, 2], 3, feats, list(ds.stories), training={"step": 0, "tokens": 0})
    return ds, wf


def bench_fit(repeats: int) -> dict:
    from bench_roi_inference import fit_side_by_side

    return fit_side_by_side(*_fit_case(), repeats, {"stats": True, "rois": "language"})


def _statistics(yt, pred, lengths, labels, codes) -> dict:
    from brainalign.encoding import fdr
    from brainalign.encoding.bootstrap import roi_bootstrap
    from brainalign.encoding.significance import roi_null_terms, sign_randomisation_test

    parts = {}
    t0 = time.process_time()
    fdr(sign_randomisation_test(yt, pred, lengths))
    parts["p-values + FDR"] = time.process_time() - t0
    t0 = time.process_time()
    roi_bootstrap(yt, pred, lengths, labels, codes)
    parts["ROI bootstrap"] = time.process_time() - t0
    t0 = time.process_time()
    roi_null_terms(yt, pred, lengths, labels, codes)
    parts["ROI sign-test terms"] = time.process_time() - t0
    return parts


def bench_arrays(repeats: int, n=3000, p=1000, t=5000, n_test=300) -> dict:
    from bench_roi_inference import arrays_case

    from brainalign.encoding.ridge import fit_ridge_cv

    X, Y, Xt, Yt, labels, lengths = arrays_case(n, p, t, n_test)
    fit_s, stat_s = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        res = fit_ridge_cv(X, Y, lengths, X_test=Xt, Y_test=Yt, backend="numpy", progress=False)
        fit_s.append(time.process_time() - t0)
        stat_s.append(_statistics(Yt, res.predictions, [n_test], labels, list(range(1, 21))))
    f = float(np.median(fit_s))
    parts = {k: float(np.median([s[k] for s in stat_s])) for k in stat_s[0]}
    total = sum(parts.values())
    return {"case": f"fit_ridge_cv {n} TRs x {p} features x {t} targets, {n_test} test TRs; statistics over 20 ROIs",
            "seconds_fit": f, "seconds_statistics": total, "parts": parts, "ratio": (f + total) / f,
            "runs": {"fit": fit_s, "statistics": stat_s}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--which", default="fit,arrays")
    a = ap.parse_args()
    out = []
    if "fit" in a.which:
        out.append(bench_fit(a.repeats))
        print(json.dumps(out[-1]), flush=True)
    if "arrays" in a.which:
        out.append(bench_arrays(a.repeats))
        print(json.dumps(out[-1]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
