"""Speed of phase detection against ruptures' exact dynamic programme.

Both segment the same noisy 3-segment curves (40 log-spaced checkpoints) into the same
number of pieces with a linear cost; brainalign also picks the number of segments by
BIC and fits a continuous piecewise-linear curve, ruptures only segments.

    .venv/bin/python benchmarks/bench_dynamics.py
"""

from __future__ import annotations

import time

import numpy as np


def main(n_curves: int = 30) -> None:
    import ruptures as rpt

    from brainalign.dynamics import detect_phases

    rng = np.random.default_rng(0)
    u = np.linspace(6, 10, 40)  # log10 tokens
    base = 0.6 * (u - 6) - 1.1 * np.maximum(u - 7.2, 0) + 1.2 * np.maximum(u - 8.6, 0)
    curves = [base + rng.normal(0, 0.03, u.size) for _ in range(n_curves)]

    t0 = time.perf_counter()
    ours = [detect_phases((10**u, y), n_boot=0) for y in curves]
    t_ours = (time.perf_counter() - t0) / n_curves

    design = np.column_stack([u, np.ones_like(u)])
    t0 = time.perf_counter()
    theirs = [rpt.Dynp(model="linear", min_size=3, jump=1).fit(np.column_stack([y, design])).predict(n_bkps=2) for y in curves]
    t_rpt = (time.perf_counter() - t0) / n_curves

    # what a BIC choice needs from ruptures: the best segmentation for 1..4 breakpoints
    t0 = time.perf_counter()
    for y in curves:
        algo = rpt.Dynp(model="linear", min_size=3, jump=1).fit(np.column_stack([y, design]))
        for k in range(1, 5):
            algo.predict(n_bkps=k)
    t_rpt_all = (time.perf_counter() - t0) / n_curves

    t0 = time.perf_counter()
    detect_phases((10**u, curves[0]), n_boot=200)
    t_boot = time.perf_counter() - t0

    found = np.mean([r.n_segments == 3 for r in ours])
    print(f"{n_curves} curves of 40 checkpoints, 3 true segments")
    print(f"brainalign detect_phases (BIC over 1-5 segments, continuous fit): {t_ours * 1e3:.1f} ms/curve, "
          f"3 segments found in {found:.0%}")
    print(f"ruptures Dynp(linear), 2 breakpoints given: {t_rpt * 1e3:.1f} ms/curve "
          f"({t_rpt / t_ours:.1f}x brainalign's time)")
    print(f"ruptures Dynp(linear), best segmentations for 1-4 breakpoints (what BIC needs): {t_rpt_all * 1e3:.1f} ms/curve "
          f"({t_rpt_all / t_ours:.1f}x brainalign's time)")
    print(f"brainalign with 200 bootstrap resamples: {t_boot:.2f} s/curve")
    _ = theirs


if __name__ == "__main__":
    main()
