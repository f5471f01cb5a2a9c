"""End to end: `brainalign demo` wall time per stage and peak memory, and the sweep's
time per (checkpoint x layer x subject) fit.

Runs the demo in a child process (so its peak RSS is the child's ``ru_maxrss``), then
reads the stage times the demo wrote (``demo_timings.json``: training, simulation,
sweep, internal states, report) and the per-checkpoint task durations the sweep stored
in its results. The load average (1 min) before and after is printed with them: on a
shared machine compare runs made back to back (``--rev``), not absolute seconds.

    .venv/bin/python benchmarks/bench_demo.py [--quick] [--out DIR] [--profile] [--rev REV] [--no-fit]

``--profile`` runs the child under cProfile and adds the cumulative seconds of the
functions where the demo spends its time (features, ridge, statistics, ceilings,
internal states, head scores, figures, movie). ``--rev REV`` runs the demo module of
git revision REV (its ``brainalign/demo.py``) on the current package, e.g. ``--rev
HEAD~3`` to time an older demo configuration back to back with the current one.
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
    ap.add_argument("--profile", action="store_true", help="run the demo under cProfile; report where the time goes")
    ap.add_argument("--rev", help="run the brainalign/demo.py of this git revision (on the current package)")
    ap.add_argument("--no-fit", action="store_true", help="skip the side-by-side brainalign / himalaya fit")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="brainalign-bench-demo-"))
    env = {**os.environ, "BRAINALIGN_CACHE": str(out / "cache"), "MPLBACKEND": "Agg"}  # cold caches: what a new user sees
    cmd = _child_command(out, args, env)
    wall = peak_mb = cpu = float("nan")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if not args.reuse:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb, cpu = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    from brainalign.sweep import Sweep

    os.environ["BRAINALIGN_CACHE"] = env["BRAINALIGN_CACHE"]
    res = Sweep(out / "results.zarr").results
    tasks = res.attrs["tasks"]
    task_s = sum(v["seconds"] for v in tasks.values())
    n_fits = res.sizes["checkpoint"] * res.sizes["layer"] * res.sizes["subject"]
    row = {
        "demo": ("quick" if args.quick else "full") + (f" at {args.rev}" if args.rev else ""),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),  # user + system of the child: less sensitive to other jobs than wall time
        "peak_rss_mb": round(peak_mb, 0),
        "load_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "checkpoints": res.sizes["checkpoint"],
        "layers": res.sizes["layer"],
        "subjects": res.sizes["subject"],
        "targets": res.sizes["target"],
        "sweep_task_s": round(task_s, 1),
        "s_per_checkpoint_layer_subject_fit": round(task_s / n_fits, 2),
        "cpus": os.cpu_count(),
    }
    timings = out / "demo_timings.json"
    if timings.is_file():  # written by the demo (older demos did not)
        t = json.loads(timings.read_text())
        row["demo_total_s"] = t.get("total_s")
        row["stages_s"] = t.get("stages_s")
        row["demo_peak_rss_mb"] = t.get("peak_rss_mb")
    row["sweep_s_per_checkpoint"] = round(task_s / res.sizes["checkpoint"], 2)
    if args.profile and (out / "demo.prof").is_file():
        row["profile_cumulative_s"] = _profile_summary(out / "demo.prof")
    if not args.no_fit:
        row.update(_one_fit_vs_himalaya(res))
    print(json.dumps(row, indent=1))


#: where the demo's time goes: label -> (file suffix, function name) in the cProfile stats
PROFILE_POINTS = {
    "train_tiny": ("training/tiny.py", "train_tiny"),
    "simulate (MiniLM features, noise)": ("datasets/simulated.py", "simulate"),
    "sweep (all checkpoints)": ("sweep/run.py", "run_checkpoint"),
    "  features.extract (sweep and internal states)": ("features/extraction.py", "extract"),
    "  ridge CV (fit_ridge_cv_many)": ("encoding/ridge.py", "fit_ridge_cv_many"),
    "  p-values (significance)": ("encoding/stats.py", "significance"),
    "  ROI bootstrap": ("encoding/bootstrap.py", "roi_bootstrap"),
    "  ROI null terms": ("encoding/significance.py", "roi_null_terms"),
    "  noise ceilings (dataset_ceiling)": ("encoding/api.py", "dataset_ceiling"),
    "internal states (representation metrics)": ("dynamics/internal.py", "internal_states"),
    "internal states (head scores)": ("dynamics/internal.py", "model_states"),
    "report (all)": ("sweep/_report.py", "report"),
    "  phase detection": ("dynamics/phases.py", "detect_phases"),
    "  training movie (flatmap_movie)": ("plotting/flatmap.py", "flatmap_movie"),
    "  figures to PNG (savefig)": ("matplotlib/figure.py", "savefig"),
    "  figures into the HTML (figure_to_data_uri)": ("brainalign/report.py", "figure_to_data_uri"),
}


def _profile_summary(path: Path) -> dict:
    """Cumulative seconds of :data:`PROFILE_POINTS` (and the call counts) in a cProfile dump."""
    import pstats

    stats = pstats.Stats(str(path)).stats
    out = {}
    for label, (suffix, name) in PROFILE_POINTS.items():
        hits = [(v[3], v[1]) for (f, _, n), v in stats.items() if n == name and f.replace(os.sep, "/").endswith(suffix)]
        if hits:
            out[label] = {"s": round(max(h[0] for h in hits), 1), "calls": int(max(h[1] for h in hits))}
    return out


def _child_command(out: Path, args, env: dict) -> list[str]:
    """The child process: ``brainalign demo`` (or the demo module of ``--rev``), under
    cProfile with ``--profile`` (its dump: ``out/demo.prof``)."""
    if args.rev:
        src = subprocess.run(["git", "show", f"{args.rev}:brainalign/demo.py"], check=True, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[1]).stdout
        mod = out.parent / f"{out.name}-demo-{args.rev.replace('/', '_').replace('~', '_')}.py"
        mod.write_text(src)
        # imported as a module of the brainalign package, so its relative imports resolve
        code = ("import importlib.util, sys, brainalign; "
                f"spec = importlib.util.spec_from_file_location('brainalign._bench_demo', {str(mod)!r}); "
                "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m); "
                f"m.run_demo({str(out)!r}, quick={bool(args.quick)})")
    else:
        code = f"from brainalign.demo import run_demo; run_demo({str(out)!r}, quick={bool(args.quick)})"
    if args.profile:
        code = f"import cProfile; cProfile.run({code!r}, {str(out / 'demo.prof')!r})"
    return [sys.executable, "-c", code]


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
