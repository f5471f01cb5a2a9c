"""Time a 20,484-vertex fsaverage5 flatmap to PNG and a 40-frame training movie.

Baseline, run side by side: nilearn's ``plot_surf_stat_map`` on the same flat meshes
(matplotlib engine, one hemisphere per call, both hemispheres in one figure).

    .venv/bin/python benchmarks/bench_plotting.py [--repeats 5] [--frames 40]

Prints a Markdown table; times are medians of the repeats after one warm-up run (which
pays for reading the meshes and matplotlib's font cache).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()

    import matplotlib.pyplot as plt

    from brainalign.plotting import flatmap, flatmap_movie, surface_views
    from brainalign.surfaces import load_mesh, sulcal_depth

    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, 20484)
    tmp = Path(tempfile.mkdtemp())
    rows = []

    def ours():
        fig = flatmap(values, threshold=0.05, out=tmp / "ours.png")
        fig.clear()

    rows.append(("brainalign.flatmap, 20,484 vertices -> PNG (150 dpi)", _median_time(ours, args.repeats)))

    def ours_rois():
        flatmap(values, threshold=0.05, rois="language", out=tmp / "ours_rois.png").clear()

    rows.append(("brainalign.flatmap + language ROI outlines -> PNG", _median_time(ours_rois, args.repeats)))

    def views():
        surface_views(values, threshold=0.05, out=tmp / "views.png").clear()

    rows.append(("brainalign.surface_views (lateral+medial, 2 hemis) -> PNG", _median_time(views, args.repeats)))

    flat = load_mesh("fsaverage5", "flat")
    sulc = sulcal_depth()

    def nilearn_flat():
        from nilearn.plotting import plot_surf_stat_map

        fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), subplot_kw={"projection": "3d"})
        for i, hemi in enumerate(("left", "right")):
            m = flat[hemi]
            sl = slice(0, 10242) if hemi == "left" else slice(10242, 20484)
            plot_surf_stat_map(
                (np.array(m.coords), np.array(m.faces)), values[sl], bg_map=sulc[sl], hemi=hemi,
                view=(90, 270), threshold=0.05, axes=axes[i], figure=fig, colorbar=i == 1,
            )
        fig.savefig(tmp / "nilearn.png", dpi=150)
        plt.close(fig)

    rows.append(("baseline: nilearn plot_surf_stat_map, both flat hemis -> PNG", _median_time(nilearn_flat, args.repeats)))

    frames = [values * (0.5 + i / args.frames) for i in range(args.frames)]
    labels = [f"step {1000 * (i + 1)} — {2.1 * (i + 1):.1f}B tokens" for i in range(args.frames)]

    def movie():
        flatmap_movie(frames, labels, out=tmp / "movie.gif", fps=8, threshold=0.05, mp4=False)

    rows.append((f"brainalign.flatmap_movie, {args.frames} frames -> GIF (80 dpi)", _median_time(movie, max(1, args.repeats // 2))))

    print("| what | median time (s) |")
    print("| --- | --- |")
    for what, t in rows:
        print(f"| {what} | {t:.2f} |")
    print(f"\nGIF size: {(tmp / 'movie.gif').stat().st_size / 1e6:.1f} MB; PNG size: {(tmp / 'ours.png').stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
