"""How well `brainalign plan` predicts a sweep: predicted vs measured wall time and
feature-cache size, side by side on this machine.

    python benchmarks/bench_plan.py                      # the mid-size CPU sweep below
    python benchmarks/bench_plan.py --config brainalign-demo/config.yaml   # e.g. the demo's sweep

For each config: the calibrated prediction (`brainalign plan`), then the sweep itself
into a fresh store with an empty feature cache; prints both and their ratio. Run it on
an idle machine: calibration and sweep must see the same load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _mid_size(folder: Path) -> dict:
    """A tiny GPT-NeoX (4 layers, 128 wide, 12 checkpoints) on simulated fsaverage5 data
    (2 subjects, 8 stories): a sweep of ~10 minutes on 2 cores."""
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    model = train_tiny(_corpus.stories_dir(), folder / "model", n_layers=4, hidden=128, heads=4, seq_len=128,
                       steps=120, batch_size=8, checkpoints=12, seed=0).out_dir
    return {
        "dataset": {"name": "simulated", "options": {"n_subjects": 2, "stories": 8, "space": "fsaverage5",
                                                     "test_story": ["thelighthousekeeper"], "seed": 0}},
        "model": {"name": str(model)},
        "layers": "all",
        "features": {"context_tokens": 128, "batch_size": 16},
        "encoding": {"alphas": {"logspace": [0, 5, 11]}, "n_folds": 5},
        "stats": {"test": "sign"},
        "rois": {"atlas": "language"},
        "output": {"store": str(folder / "results.zarr")},
    }


def _cache_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / "features").rglob("L*.npy"))


def measure(cfg: dict, folder: Path) -> dict:
    from brainalign.sweep import make_plan, run
    from brainalign.sweep.cost import calibrate, estimate, sweep_size

    cfg = {**cfg, "output": {**cfg.get("output", {}), "store": str(folder / "bench.zarr")}}
    plan = make_plan(cfg)
    size = sweep_size(plan)
    t0 = time.perf_counter()
    est = estimate(size, calibrate(plan, size))
    calib = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(cfg, progress=False)
    wall = time.perf_counter() - t0
    cache = _cache_bytes(Path(os.environ["BRAINALIGN_CACHE"]))
    return {"predicted_s": est["seconds"]["total"], "measured_s": wall, "calibration_s": calib,
            "predicted_cache": est["feature_cache_bytes"], "measured_cache": cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="a run config (YAML); default: the mid-size CPU sweep")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        folder = Path(tmp)
        os.environ["BRAINALIGN_CACHE"] = str(folder / "cache")  # an empty feature cache: nothing reused
        if args.config:
            import yaml

            cfg = yaml.safe_load(Path(args.config).read_text())
        else:
            cfg = _mid_size(folder)
        m = measure(cfg, folder)
    print(f"load: {os.getloadavg()[0]:.2f}")
    print(f"wall time: predicted {m['predicted_s']:.1f} s, measured {m['measured_s']:.1f} s, "
          f"ratio {m['predicted_s'] / m['measured_s']:.2f} (calibration {m['calibration_s']:.1f} s)")
    print(f"feature cache: predicted {m['predicted_cache'] / 1e6:.2f} MB, measured {m['measured_cache'] / 1e6:.2f} MB, "
          f"ratio {m['predicted_cache'] / max(m['measured_cache'], 1):.3f}")


if __name__ == "__main__":
    main()
