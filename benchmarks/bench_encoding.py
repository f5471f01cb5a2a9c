"""Ridge CV benchmark: brainalign vs himalaya RidgeCV used plainly vs scikit-learn RidgeCV.

Each method runs in its own subprocess on the same seeded data (story lengths of 300
TRs, 5 story folds, 13 alphas logspace(0, 6), one test story of 300 TRs); the parent
collects wall time of the fit (data generation excluded) and peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess, which sees BLAS's
allocations too), plus the GEMM floor: the FLOPs of brainalign's algorithm (its GEMMs,
and for each eigendecomposition the 10/3 p^3 of its reduction and back-transformation)
divided by the matmul FLOP/s measured here.

    .venv/bin/python benchmarks/bench_encoding.py --n 3000 --p 1000 --t 5000
    .venv/bin/python benchmarks/bench_encoding.py --n 3000 --p 1000 --t 1000 --subjects 8 --methods subjects
    .venv/bin/python benchmarks/bench_encoding.py --n 9000 --p 3072 --t 20000 --methods brainalign,himalaya

Methods: ``data`` (generation only: the memory baseline), ``brainalign``, ``himalaya``
(``himalaya.ridge.RidgeCV`` on the same splits), ``sklearn``
(``RidgeCV(alphas, alpha_per_target=True)``: scikit-learn supports per-target alphas
only with its efficient leave-one-out, so it answers a different CV question),
``subjects`` (8 subjects sharing stimuli: together vs one at a time), ``gemm``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ALPHAS = np.logspace(0, 6, 13)


def make(n, p, t, seed=0, n_test=300):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p), dtype=np.float32)
    Xt = rng.standard_normal((n_test, p), dtype=np.float32)
    # a low-rank signal in a third of the targets, noise in all
    k = 20
    B = rng.standard_normal((p, k), dtype=np.float32) / np.sqrt(p)
    C = rng.standard_normal((k, t), dtype=np.float32) * (rng.random(t) < 0.33).astype(np.float32)
    Y = X @ B @ C
    Y += rng.standard_normal((n, t), dtype=np.float32)
    Yt = Xt @ B @ C + rng.standard_normal((n_test, t), dtype=np.float32)
    lengths = [300] * (n // 300) + ([n % 300] if n % 300 else [])
    return X, Y, Xt, Yt, lengths


def flops_brainalign(n, p, t, n_test=300, folds=5, n_alphas=13):
    """(float32 GEMM FLOPs, float64 GEMM FLOPs) of brainalign's primal route.

    Mirrors ``brainalign.encoding.ridge``: the alpha-free validation route
    (``_plan_validation``) when it is the cheaper one, else one prediction GEMM per alpha.
    """
    n_val = n / folds
    f32 = 2 * n * p * t  # per-fold X_val' Y_val blocks
    f32 += (folds + 1) * 2 * p * p * t  # rotations V' X'Y
    f64 = 2 * n * p * p  # Gram blocks
    f64 += (folds + 1) * 10 / 3 * p**3  # eigendecompositions: reduction + back-transform only (a lower bound)
    f64 += folds * 2 * n_val * p * p  # X_val V
    f32 += 2 * n_test * p * p  # X_test W
    from brainalign.encoding.ridge import _alpha_free_is_cheaper

    if _alpha_free_is_cheaper(n_val, p, n_alphas):
        f64 += folds * 2 * n_val * p * p  # G = A'A per fold
        f32 += folds * 2 * n_val * p * t  # A' Y_val
        f64 += folds * (2 * p * p * t + 3 * 2 * n_alphas * p * t)  # H z and the alpha weights
    else:
        f32 += folds * n_alphas * 2 * n_val * p * t  # one prediction per alpha
    f32 += 2 * n_test * p * t  # test predictions
    return f32, f64


def flops_himalaya(n, p, t, n_test=300, folds=5, n_alphas=13):
    n_tr, n_val = n * (folds - 1) / folds, n / folds
    f = folds * n_alphas * (2 * p * n_tr * p + 2 * n_val * p * n_tr + 2 * n_val * n_tr * t)
    f += folds * 4 * n_tr * p * p  # SVDs (rough)
    f += n_alphas * 2 * p * n * p + 2 * p * n * t  # refit
    return f


def float64_cv_curves(X, Y, lengths, alphas, folds=5):
    """Mean fold score (minus the MSE) of every alpha for the columns of ``Y``, in float64."""
    from brainalign.encoding import story_folds

    X = X.astype(np.float64)
    Y = Y.astype(np.float64)
    total = np.zeros((len(alphas), Y.shape[1]))
    cv = story_folds(lengths, folds)
    for tr, va in cv:
        lam, V = np.linalg.eigh(X[tr].T @ X[tr])
        Z = V.T @ (X[tr].T @ Y[tr])
        A = X[va] @ V
        for i, a in enumerate(alphas):
            err = Y[va] - A @ (Z / (a + np.clip(lam, 0, None))[:, None])
            total[i] -= (err**2).mean(0)
    return total / len(cv)


def gemm_rate(dtype, size=3072, reps=5):
    """Best of ``reps`` timed ``size x size`` matmuls, in FLOP/s (the machine's GEMM speed)."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def _timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def worker(args) -> dict:
    X, Y, Xt, Yt, lengths = make(args.n, args.p, args.t)
    out = {}
    saved = {}

    def brainalign_fit(Ys, **kw):
        from brainalign.encoding import fit_ridge_cv, fit_ridge_cv_many

        fit = fit_ridge_cv_many if isinstance(Ys, list) else fit_ridge_cv
        return fit(X, Ys, lengths, alphas=ALPHAS, X_test=Xt, backend=args.backend, progress=False, **kw)

    def himalaya_fit(y):
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV

        from brainalign.encoding import story_folds

        b = set_backend(args.backend)
        m = RidgeCV(alphas=ALPHAS, cv=story_folds(lengths, 5)).fit(X, y)
        return b.to_numpy(m.best_alphas_), b.to_numpy(m.predict(Xt))

    # one small fit first, so thread pools and libraries are loaded before timing
    if args.method in ("brainalign", "subjects"):
        brainalign_fit(Y[:, :50])
    if args.method in ("himalaya", "subjects"):
        himalaya_fit(Y[:, :50])
    if args.method == "data":
        pass
    elif args.method == "brainalign":
        def run():
            saved["res"] = brainalign_fit(Y, Y_test=Yt)

        out["time"] = _timed(run, args.repeats)
        out["chunk"] = saved["res"].info["chunk"]
        np.save(args.save, np.stack([saved["res"].best_alphas, saved["res"].score]))
    elif args.method == "himalaya":
        from brainalign.encoding import pearson_r

        def run():
            saved["res"] = himalaya_fit(Y)

        out["time"] = _timed(run, args.repeats)
        alphas, pred = saved["res"]
        np.save(args.save, np.stack([alphas, pearson_r(Yt, pred)]))
    elif args.method == "sklearn":
        from sklearn.linear_model import RidgeCV

        out["time"] = _timed(
            lambda: RidgeCV(alphas=ALPHAS, alpha_per_target=True, fit_intercept=False).fit(X, Y).predict(Xt),
            args.repeats)
    elif args.method == "subjects":
        rng = np.random.default_rng(1)
        Ys = [Y + rng.standard_normal(Y.shape, dtype=np.float32) for _ in range(args.subjects)]
        out["together"] = _timed(lambda: brainalign_fit(Ys), args.repeats)
        out["one_at_a_time"] = _timed(lambda: [brainalign_fit(y) for y in Ys], args.repeats)
        # the baseline without brainalign: himalaya's RidgeCV, one subject after another
        out["himalaya_one_at_a_time"] = _timed(lambda: [himalaya_fit(y) for y in Ys], 1)
    elif args.method == "gemm":
        import torch

        out["sgemm"] = gemm_rate(torch.float32)
        out["dgemm"] = gemm_rate(torch.float64)
    out["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--p", type=int, default=1000)
    ap.add_argument("--t", type=int, default=5000)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method (median reported)")
    ap.add_argument("--methods", default="data,gemm,brainalign,himalaya,sklearn")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        print(json.dumps(worker(args)))
        return
    results = {}
    for m in args.methods.split(","):
        save = f"/tmp/bench_encoding_{os.getpid()}_{m}.npy"
        cmd = [sys.executable, __file__, "--method", m, "--save", save] + [
            f"--{k}={getattr(args, k)}" for k in ("n", "p", "t", "subjects", "backend", "repeats")
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{m}: failed\n{proc.stderr[-2000:]}")
            continue
        results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
        if os.path.exists(save):
            results[m]["_arrays"] = np.load(save)
            os.remove(save)
        print(m, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[m].items() if k != "_arrays"},
              flush=True)
    if "brainalign" in results and "himalaya" in results:
        a, h = results["brainalign"]["_arrays"], results["himalaya"]["_arrays"]
        print(f"agreement: alphas identical {np.isclose(a[0], h[0], rtol=1e-5).mean() * 100:.3f}% of targets; "
              f"max |score diff| {np.nanmax(np.abs(a[1] - h[1])):.2e}")
        print(f"speed-up over himalaya: {results['himalaya']['time'] / results['brainalign']['time']:.2f}x")
        differ = np.nonzero(~np.isclose(a[0], h[0], rtol=1e-5))[0]
        if differ.size:
            # which choice is right? the exact (float64) mean fold scores of both alphas
            X, Y, _, _, lengths = make(args.n, args.p, args.t)
            curves = float64_cv_curves(X, Y[:, differ[:20]], lengths, ALPHAS)
            for j, k in enumerate(differ[:20]):
                ia, ih = (int(np.argmin(np.abs(ALPHAS - v))) for v in (a[0][k], h[0][k]))
                print(f"  target {k}: brainalign alpha {a[0][k]:.4g} (float64 score {curves[ia, j]:.12g}), "
                      f"himalaya {h[0][k]:.4g} ({curves[ih, j]:.12g}); float64 best {ALPHAS[np.argmax(curves[:, j])]:.4g}")
    if "gemm" in results:
        f32, f64 = flops_brainalign(args.n, args.p, args.t)
        g = results["gemm"]
        floor = f32 / g["sgemm"] + f64 / g["dgemm"]
        print(f"GEMM floor (brainalign algorithm): {floor:.2f} s  [{f32 / 1e12:.2f} TFLOP f32 at "
              f"{g['sgemm'] / 1e9:.0f} GFLOP/s, {f64 / 1e12:.3f} TFLOP f64 at {g['dgemm'] / 1e9:.0f} GFLOP/s]")
        print(f"himalaya algorithm FLOPs (rough): {flops_himalaya(args.n, args.p, args.t) / 1e12:.2f} TFLOP")
        if "brainalign" in results:
            print(f"brainalign / floor: {results['brainalign']['time'] / floor:.2f}x")
    if "subjects" in results:
        s = results["subjects"]
        print(f"{args.subjects} subjects: together {s['together']:.1f} s, one at a time {s['one_at_a_time']:.1f} s, "
              f"{s['one_at_a_time'] / s['together']:.2f}x; himalaya RidgeCV one at a time {s['himalaya_one_at_a_time']:.1f} s, "
              f"{s['himalaya_one_at_a_time'] / s['together']:.2f}x")


if __name__ == "__main__":
    main()
