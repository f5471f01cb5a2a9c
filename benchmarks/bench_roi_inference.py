"""Cost of the ROI block bootstrap (``encoding.fit(..., rois=...)``) beside the fit itself.

Two sizes, each timed side by side (interleaved runs, median), with and without the
bootstrap (200 replicates of 20-TR blocks):

1. ``fit``: :func:`brainalign.encoding.fit` at the demo's size: the simulated fsaverage5
   data set (20,484 targets, 1 subject), 3 layers of 64-dim word features (the demo's
   tiny model is 64 wide) with 4 delays, six training stories and four test stories
   (about 300 test TRs, 16 blocks), every target in one ROI (``whole_cortex``, the
   costliest atlas: the bootstrap runs over the targets an atlas labels); 13 alphas.
2. ``arrays``: :func:`brainalign.encoding.ridge.fit_ridge_cv` on 3,000 TRs x 1,000
   features x 5,000 targets (test: 300 TRs), then
   :func:`brainalign.encoding.bootstrap.roi_bootstrap` over 20 ROIs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_roi_inference.py [--repeats 3] [--which fit,arrays]

Times are process CPU seconds (``time.process_time``: robust to other jobs sharing the
machine; with one BLAS thread they equal the wall time of an idle machine).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _fit_case():
    from brainalign import datasets
    from brainalign.datasets.base import Dataset
    from brainalign.features import WordFeatures

    sim = datasets.load("simulated", space="fsaverage5", stories=None, n_subjects=1, features="random:16", snr=4.0)
    names = sorted(sim.stories)
    test = [s for s in names if s != sim.test_stories[0]][:4]
    train = [s for s in names if s not in test][:6]
    ds = Dataset("bench", [sim.stories[s] for s in train + test], sim.subjects, sim.space(sim.subjects[0]),
                 sim.responses_map, train, test)
    rng = np.random.default_rng(0)
    feats = {(s, layer): rng.standard_normal((sim.stories[s].n_words, 64)).astype(np.float32)
             for s in train + test for layer in range(3)}
    wf = WordFeatures("bench", "step0", [0, 1, 2], 3, feats, train + test, training={"step": 0, "tokens": 0})
    return ds, wf


def fit_side_by_side(ds, wf, repeats: int, with_options: dict) -> dict:
    """``encoding.fit`` without and with ``with_options``, interleaved; median CPU seconds."""
    from brainalign.encoding import fit

    n_test = sum(ds.stories[s].n_trs for s in ds.test_stories)
    fit(wf, ds, backend="numpy", progress=False, layers=[0])  # warm-up (responses cached, imports)
    times = {"without": [], "with": []}
    for _ in range(repeats):
        for key, kw in (("without", {}), ("with", with_options)):
            t0 = time.process_time()
            fit(wf, ds, backend="numpy", progress=False, **kw)
            times[key].append(time.process_time() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    n_targets = ds.space(ds.subjects[0]).n_targets
    return {"case": f"encoding.fit, {n_targets:,} targets, 3 layers x 256 features, 1 subject, {n_test} test TRs, "
                    f"with {with_options}",
            "seconds_without": med["without"], "seconds_with": med["with"], "ratio": med["with"] / med["without"],
            "runs": times}


def bench_fit(repeats: int) -> dict:
    return fit_side_by_side(*_fit_case(), repeats, {"rois": "whole_cortex"})


def arrays_case(n=3000, p=1000, t=5000, n_test=300):
    """A rank-20 signal in noise: training and test designs and responses, ROI labels 0-20
    per target, and 300-TR training stories."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, p), dtype=np.float32)
    Xt = rng.standard_normal((n_test, p), dtype=np.float32)
    B = rng.standard_normal((p, 20), dtype=np.float32) / np.sqrt(p)
    C = rng.standard_normal((20, t), dtype=np.float32)
    Y = X @ B @ C + rng.standard_normal((n, t), dtype=np.float32)
    Yt = Xt @ B @ C + rng.standard_normal((n_test, t), dtype=np.float32)
    return X, Y, Xt, Yt, rng.integers(0, 21, t), [300] * (n // 300)


def bench_arrays(repeats: int, n=3000, p=1000, t=5000, n_test=300) -> dict:
    from brainalign.encoding.bootstrap import roi_bootstrap
    from brainalign.encoding.ridge import fit_ridge_cv

    X, Y, Xt, Yt, labels, lengths = arrays_case(n, p, t, n_test)
    test_lengths = [n_test]
    fit_s, boot_s = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        res = fit_ridge_cv(X, Y, lengths, X_test=Xt, Y_test=Yt, backend="numpy", progress=False)
        fit_s.append(time.process_time() - t0)
        t0 = time.process_time()
        roi_bootstrap(Yt, res.predictions, test_lengths, labels, list(range(1, 21)))
        boot_s.append(time.process_time() - t0)
    f, b = float(np.median(fit_s)), float(np.median(boot_s))
    return {"case": f"fit_ridge_cv {n} TRs x {p} features x {t} targets, {n_test} test TRs; bootstrap over 20 ROIs",
            "seconds_fit": f, "seconds_bootstrap": b, "ratio": (f + b) / f, "runs": {"fit": fit_s, "bootstrap": boot_s}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--which", default="fit,arrays")
    a = ap.parse_args()
    out = []
    if "fit" in a.which:
        out.append(bench_fit(a.repeats))
    if "arrays" in a.which:
        out.append(bench_arrays(a.repeats))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
