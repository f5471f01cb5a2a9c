"""End to end: `brainalign demo` wall time and peak memory, and the sweep's time per
(checkpoint x layer x subject) fit.

Runs the demo in a child process (so its peak RSS is the child's ``ru_maxrss``), then
reads the per-checkpoint task durations the sweep stored in its results.

    .venv/bin/python benchmarks/bench_demo.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the quick demo (as in the tests)")
    ap.add_argument("--out", help="output folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished demo in --out (no wall time / memory)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="brainalign-bench-demo-"))
    cmd = [sys.executable, "-m", "brainalign.cli", "demo", "-o", str(out)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "BRAINALIGN_CACHE": str(out / "cache")}  # cold caches: what a new user sees
    wall = peak_mb = float("nan")
    if not args.reuse:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from brainalign.sweep import Sweep

    os.environ["BRAINALIGN_CACHE"] = env["BRAINALIGN_CACHE"]
    res = Sweep(out / "results.zarr").results
    tasks = res.attrs["tasks"]
    task_s = sum(v["seconds"] for v in tasks.values())
    n_fits = res.sizes["checkpoint"] * res.sizes["layer"] * res.sizes["subject"]
    row = {
        "demo": "quick" if args.quick else "full",
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb, 0),
        "checkpoints": res.sizes["checkpoint"],
        "layers": res.sizes["layer"],
        "subjects": res.sizes["subject"],
        "targets": res.sizes["target"],
        "sweep_task_s": round(task_s, 1),
        "s_per_checkpoint_layer_subject_fit": round(task_s / n_fits, 2),
        "cpus": os.cpu_count(),
    }
    row.update(_one_fit_vs_himalaya(res))
    print(json.dumps(row, indent=1))


def _one_fit_vs_himalaya(res) -> dict:
    """One (checkpoint, layer, subject) of the demo fitted twice on the same design,
    responses, folds and alphas: brainalign's ridge and himalaya's RidgeCV used plainly."""
    import numpy as np
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    from brainalign.encoding import fit_ridge_cv, story_folds
    from brainalign.encoding.api import load_responses
    from brainalign.sweep.run import _dataset, make_plan

    plan = make_plan(res.attrs["config"])
    ds = _dataset(plan.config)
    ck = plan.checkpoints[-1]
    from brainalign import features

    fs = features.extract(ds, model=ck.model, revision=ck.revision, layers=plan.layers,
                          context_tokens=plan.config.features.context_tokens, progress=False)
    subj, layer = plan.subjects[0], plan.layers[-1]
    train, test = ds.train_stories_of(subj), ds.test_stories_of(subj)
    X = fs.design([ds.stories[s] for s in train], layer)
    Xt = fs.design([ds.stories[s] for s in test], layer)
    Y = load_responses(ds, subj, train, True)
    Yt = load_responses(ds, subj, test, True)
    folds = story_folds([ds.stories[s].n_trs for s in train], plan.config.encoding.n_folds)
    alphas = plan.config.encoding.alpha_values()
    t0 = time.perf_counter()
    ours = fit_ridge_cv(X, Y, alphas=alphas, cv=folds, X_test=Xt, Y_test=Yt, backend="torch", progress=False)
    t_ours = time.perf_counter() - t0
    set_backend("torch")
    t0 = time.perf_counter()
    model = RidgeCV(alphas=alphas, cv=folds).fit(X, Y)
    pred = np.asarray(model.predict(Xt))
    t_him = time.perf_counter() - t0
    set_backend("numpy")
    zp = (pred - pred.mean(0)) / pred.std(0)
    zy = (Yt - Yt.mean(0)) / Yt.std(0)
    r_him = (zp * zy).mean(0)
    ok = np.isfinite(r_him) & np.isfinite(ours.score)
    return {
        "one_fit_design": list(X.shape) + [int(Y.shape[1])],
        "one_fit_brainalign_s": round(t_ours, 2),
        "one_fit_himalaya_ridgecv_s": round(t_him, 2),
        "one_fit_speedup": round(t_him / t_ours, 2),
        "one_fit_same_alpha_fraction": float(np.mean(np.isclose(np.asarray(model.best_alphas_, dtype=float), ours.best_alphas, rtol=1e-5))),
        "one_fit_max_score_diff": float(np.max(np.abs(r_him[ok] - ours.score[ok]))),
    }


if __name__ == "__main__":
    main()
