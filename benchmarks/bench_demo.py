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
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="brainalign-bench-demo-"))
    cmd = [sys.executable, "-m", "brainalign.cli", "demo", "-o", str(out)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "BRAINALIGN_CACHE": str(out / "cache")}  # cold caches: what a new user sees
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from brainalign.sweep import Sweep

    res = Sweep(out / "results.zarr").results
    tasks = res.attrs["tasks"]
    task_s = sum(v["seconds"] for v in tasks.values())
    n_fits = res.sizes["checkpoint"] * res.sizes["layer"] * res.sizes["subject"]
    row = {
        "demo": "quick" if args.quick else "full",
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "checkpoints": res.sizes["checkpoint"],
        "layers": res.sizes["layer"],
        "subjects": res.sizes["subject"],
        "targets": res.sizes["target"],
        "sweep_task_s": round(task_s, 1),
        "s_per_checkpoint_layer_subject_fit": round(task_s / n_fits, 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
